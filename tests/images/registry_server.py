"""A real registry for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1.

- `Registry`: the registry process on a free port with its storage in a directory; anonymous,
  htpasswd (bcrypt) or token auth; plain HTTP or TLS with a certificate made here. `push()`
  copies an OCI layout image into it with skopeo.
- `TokenServer`: the token endpoint of the distribution token spec, issuing RS256 JWTs whose
  `x5c` header holds its self-signed certificate (given to the registry as its
  `rootcertbundle`). It checks Basic credentials itself and counts requests.
- `ScriptedServer`: a plain HTTP server answering from a table of routes, for what a
  well-behaved registry never does (schema 1, wrong digests, ignored ranges, ...).
- `CountingProxy`: a TCP proxy in front of a registry that logs each request line and its Range
  header, and can run an action (kill the registry) after N response bytes for a path passed.

Everything listens on 127.0.0.1 only, on ports the kernel picks.
"""

import base64
import contextlib
import datetime
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.helpers import free_port

REGISTRY_BINARY = "docker-registry"
_START_TIMEOUT = 15.0


def self_signed(
    directory: Path, name: str, *, ip: str | None = None
) -> tuple[Path, Path, rsa.RSAPrivateKey, x509.Certificate]:
    """A fresh RSA key and self-signed certificate, written as name.key / name.pem."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(ip))]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, key, cert


# -- token server -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRequest:
    user: str  # "" when anonymous
    scopes: tuple[str, ...]
    status: int  # what the token server answered


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away: fine
            super().handle_error(request, client_address)


class TokenServer:
    """Issues registry tokens: `users` get every action they ask for, anonymous requests get
    pull access only with `anonymous_pull`, wrong passwords get 401."""

    SERVICE = "hutch-test-registry"
    ISSUER = "hutch-test-issuer"

    def __init__(
        self,
        directory: Path,
        users: Mapping[str, str],
        *,
        anonymous_pull: bool = False,
        field_name: str = "token",
        expires_in: int = 300,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        _, self.cert_path, self._key, cert = self_signed(directory, "token-issuer")
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.users = dict(users)
        self.anonymous_pull = anonymous_pull
        self.field_name = field_name  # "token" or "access_token"
        self.expires_in = expires_in
        self.requests: list[TokenRequest] = []
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def start(self) -> "TokenServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def token(self, subject: str, access: list[dict[str, object]]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        now = int(time.time())
        claims = {
            "iss": self.ISSUER,
            "sub": subject,
            "aud": self.SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header))}.{_b64url(json.dumps(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                scopes = tuple(s for value in query.get("scope", []) for s in value.split())
                user, status = server._authenticate(self.headers.get("Authorization"))
                server.requests.append(TokenRequest(user, scopes, status))
                if url.path != "/token" or query.get("service") != [server.SERVICE]:
                    self._reply(400, {"details": "unknown service"})
                elif status != 200:
                    self._reply(401, {"details": "invalid credentials"})
                else:
                    access = [a for s in scopes if (a := server._grant(user, s)) is not None]
                    token = server.token(user, access)
                    self._reply(200, {server.field_name: token, "expires_in": server.expires_in})

            def _reply(self, status: int, doc: dict[str, object]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def _authenticate(self, header: str | None) -> tuple[str, int]:
        if header is None:
            return "", 200
        scheme, _, value = header.partition(" ")
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return "", 401
        if scheme.lower() != "basic" or self.users.get(user) != password:
            return user, 401
        return user, 200

    def _grant(self, user: str, scope: str) -> dict[str, object] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        wanted = actions.split(",")
        granted = wanted if user else (["pull"] if self.anonymous_pull and "pull" in wanted else [])
        return {"type": kind, "name": name, "actions": granted}


def _b64url(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- the registry -------------------------------------------------------------------------------


class Registry:
    """docker-registry serving `root/storage` on 127.0.0.1:`port` (a free one by default).

    `htpasswd` (user -> password) turns on Basic auth, `token` bearer-token auth, `tls` HTTPS
    with a certificate for 127.0.0.1 (`ca_file` is its PEM). Restarting keeps port and storage.
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        htpasswd: Mapping[str, str] | None = None,
        token: TokenServer | None = None,
        tls: bool = False,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.storage = root / "storage"
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.log_path = root / "registry.log"
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.creds: str | None = None  # "user:password" skopeo pushes with
        auth = ""
        if htpasswd:
            lines = [
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
                for user, pw in htpasswd.items()
            ]
            (root / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: hutch-test\n    path: {root / 'htpasswd'}\n"
            self.creds = ":".join(next(iter(htpasswd.items())))
        elif token is not None:
            auth = (
                "auth:\n  token:\n"
                f"    realm: {token.realm}\n"
                f"    service: {TokenServer.SERVICE}\n"
                f"    issuer: {TokenServer.ISSUER}\n"
                f"    rootcertbundle: {token.cert_path}\n"
            )
            if token.users:
                self.creds = ":".join(next(iter(token.users.items())))
        tls_config = ""
        if tls:
            key, cert, _, _ = self_signed(root, "registry-tls", ip="127.0.0.1")
            self.ca_file = cert
            tls_config = f"  tls:\n    certificate: {cert}\n    key: {key}\n"
        self.config_path = root / "config.yml"
        self.config_path.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            f"  secret: {uuid.uuid4().hex}\n"
            f"{tls_config}"
            f"{auth}"
        )

    def start(self) -> "Registry":
        """Start the process and wait until GET /v2/ answers (200, or 401 with auth)."""
        assert self._proc is None, "already running"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"docker-registry exited at start:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=context):
                    return self
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not answer at {self.url}:\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as clients can tell."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def push(
        self,
        layout: Path,
        ref: str,
        dest: str,
        *,
        all_images: bool = False,
        format: str | None = None,
    ) -> None:
        """skopeo copy oci:`layout`:`ref` to `dest` ("repo:tag") in this registry."""
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if all_images:
            argv.append("--all")
        if format is not None:
            argv += ["--format", format]  # "v2s2" for Docker media types
        if self.creds is not None:
            argv += ["--dest-creds", self.creds]
        argv += [f"oci:{layout}:{ref}", f"docker://{self.host}/{dest}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr}\n{self.log()}")

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps blob `digest` (to tamper with it)."""
        hexpart = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


# -- the proxy ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    method: str
    path: str
    range: str | None  # the Range header, if any


@dataclass
class _Cut:
    path: str  # a substring of the request path
    after: int  # response bytes (headers included) to let through
    action: Callable[[], None]


@dataclass
class _Conn:
    path: str = ""  # of the request whose response is flowing
    sent: int = 0  # response bytes for it so far
    sockets: list[socket.socket] = field(default_factory=list)


class CountingProxy:
    """Forwards 127.0.0.1:`port` to the registry on `upstream_port`, watching HTTP/1.1 traffic.

    `requests` logs every request (method, path, Range). `cut_after(path, n, action)` lets n
    bytes of the response to a request whose path contains `path` through (status line and
    headers count), then runs `action` once (e.g. `registry.kill`) and drops the connection.
    Request bodies are skipped by Content-Length; use it for pulls, push directly.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self.requests: list[ProxiedRequest] = []
        self._cut: _Cut | None = None
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, path: str, after: int, action: Callable[[], None]) -> None:
        with self._lock:
            self._cut = _Cut(path, after, action)

    def blob_requests(self) -> list[ProxiedRequest]:
        return [r for r in self.requests if "/blobs/" in r.path]

    def clear(self) -> None:
        self.requests.clear()

    def stop(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                _close_all(conn.sockets)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()  # the registry is down: the client sees the connection drop
            return
        upstream.settimeout(None)
        conn = _Conn(sockets=[client, upstream])
        with self._lock:
            self._conns.append(conn)
        threading.Thread(target=self._requests, args=(client, upstream, conn), daemon=True).start()
        self._responses(upstream, client, conn)

    def _requests(self, src: socket.socket, dst: socket.socket, conn: _Conn) -> None:
        buffer, skip = b"", 0
        try:
            while data := src.recv(1 << 16):
                buffer += data
                while True:
                    if skip:  # a request body
                        n = min(skip, len(buffer))
                        buffer, skip = buffer[n:], skip - n
                        if skip:
                            break
                    head, sep, rest = buffer.partition(b"\r\n\r\n")
                    if not sep:
                        break
                    lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = [*lines[0].split(" "), "", ""][:3]
                    headers = {
                        k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines[1:])
                    }
                    self.requests.append(ProxiedRequest(method, path, headers.get("range")))
                    conn.path, conn.sent = path, 0
                    skip = int(headers.get("content-length", "0") or 0)
                    buffer = rest
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close_all(conn.sockets)

    def _responses(self, src: socket.socket, dst: socket.socket, conn: _Conn) -> None:
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    cut = self._cut if self._cut and self._cut.path in conn.path else None
                    if cut is not None and conn.sent + len(data) >= cut.after:
                        self._cut = None
                    else:
                        cut = None
                if cut is not None:
                    dst.sendall(data[: cut.after - conn.sent])
                    conn.sent = cut.after
                    cut.action()
                    return
                conn.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close_all(conn.sockets)


def _close_all(sockets: list[socket.socket]) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


# -- a scripted server --------------------------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]  # status, headers, body


class ScriptedServer:
    """An HTTP/1.1 server on 127.0.0.1 answering GETs with `routes[path](request headers)`
    (404 elsewhere; the query string is ignored). `requests` logs (path, lowercased headers)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[dict[str, str]], Reply]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                scripted.requests.append((self.path, headers))
                route = scripted.routes.get(self.path.split("?")[0])
                status, extra, body = route(headers) if route else (404, {}, b"{}")
                extra = dict(extra)
                self.send_response(status)
                extra.setdefault("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                # The client may hang up first (it refuses oversized bodies): that is fine.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def serve_layout(self, layout: Path, repository: str, tag: str, digest: str) -> None:
        """Serve every blob of an OCI layout as repository's blobs and manifests (whole, with
        200, whatever Range asks), and `digest` as its manifest `tag`."""
        for path in (layout / "blobs" / "sha256").iterdir():
            data, name = path.read_bytes(), f"sha256:{path.name}"
            media_type = json.loads(data).get("mediaType", "") if data[:1] == b"{" else ""
            reply = _constant(
                (200, {"Content-Type": media_type or "application/octet-stream"}, data)
            )
            self.routes[f"/v2/{repository}/blobs/{name}"] = reply
            self.routes[f"/v2/{repository}/manifests/{name}"] = reply
            if name == digest:
                self.routes[f"/v2/{repository}/manifests/{tag}"] = reply

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _constant(reply: Reply) -> Callable[[dict[str, str]], Reply]:
    return lambda _headers: reply
