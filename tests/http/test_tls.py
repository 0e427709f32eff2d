"""The controller's CA, its server certificate, and pinning."""

import stat
from pathlib import Path

import pytest

from hutch.http import tls
from hutch.model.errors import Unauthenticated


def test_the_ca_is_made_once_and_its_key_is_private(tmp_path: Path) -> None:
    ca = tls.ensure_ca(tmp_path)
    pem = ca.read_bytes()
    assert tls.ensure_ca(tmp_path).read_bytes() == pem
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    pin = tls.pin_of(pem)
    tls.check_pin(pem, pin.upper())  # hex in either case
    with pytest.raises(Unauthenticated, match="does not match the join token's pin"):
        tls.check_pin(pem, "0" * 64)


def test_the_server_certificate_is_renewed_for_new_names_and_before_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls.server_cert(tmp_path, ["127.0.0.1", "ctl.example"])
    first = cert.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert tls.server_cert(tmp_path, ["ctl.example", "127.0.0.1"])[0].read_bytes() == first
    renamed = tls.server_cert(tmp_path, ["127.0.0.1"])[0].read_bytes()
    assert renamed != first
    monkeypatch.setattr(tls, "CERT_DAYS", tls.RENEW_DAYS - 1)  # one that expires soon
    short = tls.server_cert(tmp_path, ["10.0.0.1"])[0].read_bytes()
    assert tls.server_cert(tmp_path, ["10.0.0.1"])[0].read_bytes() != short  # renewed
