"""TLS for the controller's API: a CA the controller generates, a server certificate it signs,
and pinning by hash (as kubeadm does) so that a joining agent trusts that CA and no other.

The pin is the SHA-256 of the CA certificate's public key (its DER SubjectPublicKeyInfo): it
travels inside join tokens. An agent fetches the CA from the controller over an unverified
connection, keeps it only if its hash is the pin, then talks to the controller verifying the
server certificate against it; a man in the middle can offer neither that CA nor a certificate
it signed.
"""

import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hutch.files import write_private
from hutch.model.errors import Invalid, Unauthenticated

CA_YEARS = 10
CERT_DAYS = 365
RENEW_DAYS = 30


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca(directory: Path) -> Path:
    """The CA certificate in `directory` (ca.pem, its key in ca.key), made on first use."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hutch controller CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def server_cert(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A server certificate for `names` (host names or IP addresses) signed by the CA in
    `directory`: (certificate, key). Made again when the names change, and a month before it
    expires (checked at every start)."""
    ca_path = ensure_ca(directory)
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    wanted = sorted(set(names))
    if cert_path.exists() and key_path.exists() and _current(cert_path, wanted):
        return cert_path, key_path
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in wanted:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _current(cert_path: Path, names: list[str]) -> bool:
    """The certificate is for exactly `names`, and good for another RENEW_DAYS at least."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=RENEW_DAYS)
    if cert.not_valid_after_utc < soon:
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return sorted(str(name.value) for name in sans) == names


def pin_of(ca_pem: bytes) -> str:
    """The CA's pin: sha256 of its public key, 64 hex digits."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise Invalid("not a PEM certificate") from None
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def check_pin(ca_pem: bytes, pin: str) -> None:
    if pin_of(ca_pem) != pin.lower():
        raise Unauthenticated(
            "the controller's CA does not match the join token's pin: "
            "this is not the controller the token was made by"
        )


def client_context(ca_path: Path) -> ssl.SSLContext:
    """Verify servers against this CA only."""
    return ssl.create_default_context(cafile=str(ca_path))
