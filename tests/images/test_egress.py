"""Where a node may connect for images: the address checker, the name allow-list, and the
registry client refusing (before connecting) what they refuse, redirects and token servers
included. The attack through the API is in tests/client/test_egress.py."""

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hutch.config import PUBLIC_REGISTRIES, load
from hutch.images.egress import (
    RegistryNames,
    forbidden_reason,
    own_addresses,
    trusted_destinations,
)
from hutch.images.registry import RegistryClient, RegistryConfig
from hutch.model.errors import Forbidden, Invalid, Unavailable
from hutch.model.image import ImageRef
from tests.images.registry_server import ScriptedServer, TokenServer

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.3.4.5", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a link-local address"),  # the clouds' metadata service
        ("fe80::1", "a link-local address"),
        ("::ffff:169.254.169.254", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("255.255.255.255", "a reserved address"),
        ("240.0.0.1", "a reserved address"),
    ],
)
def test_addresses_nodes_do_not_connect_to(address: str, reason: str) -> None:
    assert forbidden_reason(ip(address)) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "10.1.2.3", "192.168.1.1", "2001:db8::1"])
def test_other_addresses_are_fine(address: str) -> None:
    assert forbidden_reason(ip(address)) is None


def test_the_nodes_own_addresses_are_refused() -> None:
    assert ip("127.0.0.1") in own_addresses()
    mine = ip("192.0.2.7")
    assert forbidden_reason(mine) is None
    assert forbidden_reason(mine, {mine}) == "an address of this node"
    assert forbidden_reason(ip("::ffff:192.0.2.7"), {mine}) == "an address of this node"


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")
def test_own_addresses_are_every_interface_address() -> None:
    listing = json.loads(
        subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True).stdout
    )
    expected = {ip(a["local"]) for link in listing for a in link.get("addr_info", [])}
    assert expected and expected <= own_addresses()


def test_registry_names() -> None:
    names = RegistryNames.of(["docker.io"], {"127.0.0.1:5000": ["http://10.0.0.9:5001"]})
    for name in ("docker.io", "DOCKER.io", "127.0.0.1:5000", "10.0.0.9:5001"):
        assert names.allowed(name)
    for name in ("docker.io:443", "127.0.0.1:5001", "127.0.0.1", "localhost:5000", "evil.io"):
        assert not names.allowed(name)
    with pytest.raises(Forbidden, match=r"registry evil\.io is not allowed"):
        names.check("evil.io")
    assert trusted_destinations(["https://r.example", "http://[::1]:5000", "http://a.b"]) == {
        ("r.example", 443),
        ("::1", 5000),
        ("a.b", 80),
    }


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load()
    assert tuple(settings.registry_allow) == PUBLIC_REGISTRIES
    assert settings.registry_names().allowed("ghcr.io")
    assert not settings.registry_names().allowed("127.0.0.1:7878")
    monkeypatch.setenv("HUTCH_REGISTRY_ALLOW", '["registry.example:5000"]')
    monkeypatch.setenv(
        "HUTCH_REGISTRIES", '{"127.0.0.1:5000": {"mirrors": ["http://127.0.0.1:5001"]}}'
    )
    names = load().registry_names()
    assert {"registry.example:5000", "127.0.0.1:5000", "127.0.0.1:5001"} == names.names
    monkeypatch.setenv("HUTCH_REGISTRY_ALLOW", '["https://registry.example"]')
    with pytest.raises(Invalid, match=r"registry_allow: .* is not a registry host"):
        load()


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    return s


def _connections(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


async def test_an_unlisted_registry_is_refused_before_connecting() -> None:
    with _listener() as s:
        host = f"127.0.0.1:{s.getsockname()[1]}"
        async with RegistryClient(allow=PUBLIC_REGISTRIES) as client:
            with pytest.raises(Forbidden, match=f"registry {host} is not allowed"):
                await client.manifest(ImageRef(host, "x", "y"))
        assert _connections(s) == 0


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_an_allowed_name_on_loopback_is_not_connected_to(name: str) -> None:
    with _listener() as s:
        host = f"{name}:{s.getsockname()[1]}"
        async with RegistryClient({}, allow=[host]) as client:
            with pytest.raises(Forbidden, match="is a loopback address"):
                await client.manifest(ImageRef(host, "x", "y"))
        assert _connections(s) == 0
        configured = {host: RegistryConfig(insecure=True)}
        async with RegistryClient(configured, timeout=0.5) as client:
            with pytest.raises(Unavailable):  # configured: connected to (nothing answers)
                await client.manifest(ImageRef(host, "x", "y"))
        assert _connections(s) == 1


async def test_redirects_to_loopback_are_refused_unless_configured(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    """A registry (configured here, as it is on loopback) redirects a blob to storage on
    loopback: refused unless the storage is configured too."""
    storage = ScriptedServer()
    try:
        blob = os.urandom(1000)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        scripted.routes["/v2/app/blobs/" + digest] = lambda h: (
            307,
            {"Location": f"http://{storage.host}/data"},
            b"",
        )
        storage.routes["/data"] = lambda h: (200, {}, blob)
        ref = ImageRef(scripted.host, "app", "1")
        only = {scripted.host: RegistryConfig(insecure=True)}
        async with RegistryClient(only) as client:
            with pytest.raises(Forbidden, match=f"{storage.host} is a loopback address"):
                await client.fetch_blob(ref, digest, len(blob), tmp_path / "refused")
        assert storage.requests == []
        both = {**only, storage.host: RegistryConfig(insecure=True)}
        async with RegistryClient(both) as client:
            await client.fetch_blob(ref, digest, len(blob), tmp_path / "fetched")
        assert (tmp_path / "fetched").read_bytes() == blob
    finally:
        storage.stop()


async def test_a_token_server_on_loopback_is_refused_unless_configured(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    tokens = TokenServer(tmp_path / "tokens", {}, anonymous_pull=True).start()
    try:
        scripted.routes["/v2/app/manifests/1"] = lambda h: (
            401,
            {"WWW-Authenticate": f'Bearer realm="{tokens.realm}",service="{tokens.SERVICE}"'},
            b"",
        )
        ref = ImageRef(scripted.host, "app", "1")
        async with RegistryClient({scripted.host: RegistryConfig(insecure=True)}) as client:
            with pytest.raises(Forbidden, match=f"127.0.0.1:{tokens.port} is a loopback"):
                await client.manifest(ref)
        assert tokens.requests == []
    finally:
        tokens.stop()
