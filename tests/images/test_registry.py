"""The registry client against a real docker-registry (auth, TLS, ranges) and a scripted server
for what a well-behaved registry never does (schema 1, wrong digests, ignored ranges, ...)."""

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hutch.images.layout import DOCKER_MANIFEST, OCI_MANIFEST
from hutch.images.pull import pull
from hutch.images.registry import (
    DOCKER_HUB_URL,
    RegistryClient,
    RegistryConfig,
    _challenges,
    base_url,
)
from hutch.images.store import ImageStore
from hutch.model.errors import Invalid, NotFound, Unavailable, Unsupported
from hutch.model.image import ImageRef, parse_ref
from tests.helpers import free_port
from tests.images.ocibuild import blob_path, write_oci_layout
from tests.images.registry_server import (
    CountingProxy,
    Registry,
    ScriptedServer,
    TokenServer,
)

USER, PASSWORD = "bob", "s3cret"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _image(layout: Path, size: int = 256 << 10, layers: int = 1) -> tuple[str, list[str]]:
    """An image of random layers in `layout` (ref "i"): its manifest and layer digests."""
    dirs: list[bytes | Path] = []
    for i in range(layers):
        (layout.parent / f"layer{i}").mkdir()
        (layout.parent / f"layer{i}" / "data").write_bytes(os.urandom(size))
        dirs.append(layout.parent / f"layer{i}")
    digest = write_oci_layout(layout, dirs, {"Cmd": ["x"]}, ref="i")
    manifest = json.loads(blob_path(layout, digest).read_bytes())
    return digest, [layer["digest"] for layer in manifest["layers"]]


# -- a real registry ----------------------------------------------------------------------------


async def test_manifests_by_tag_and_by_digest(registry: Registry, tmp_path: Path) -> None:
    digest, _ = _image(tmp_path / "layout")
    registry.push(tmp_path / "layout", "i", "plain:1")
    registry.push(tmp_path / "layout", "i", "plain:v2s2", format="v2s2")
    async with RegistryClient({registry.host: RegistryConfig(insecure=True)}) as client:
        by_tag = await client.manifest(ImageRef(registry.host, "plain", "1"))
        by_digest = await client.manifest(ImageRef(registry.host, "plain", "1"), digest)
        docker = await client.manifest(ImageRef(registry.host, "plain", "v2s2"))
        with pytest.raises(NotFound, match=f"image {registry.host}/plain:2 not found in registry"):
            await client.manifest(ImageRef(registry.host, "plain", "2"))
        other = _digest(b"no such manifest")
        with pytest.raises(NotFound, match=f"manifest {other} of image .* not found"):
            await client.manifest(ImageRef(registry.host, "plain", "1"), other)
    assert by_tag == by_digest
    assert by_tag.digest == digest and by_tag.media_type == OCI_MANIFEST
    assert by_tag.data == blob_path(tmp_path / "layout", digest).read_bytes()
    assert docker.media_type == DOCKER_MANIFEST and docker.digest == _digest(docker.data)


async def test_fetch_blob_resumes_with_a_range_request(
    registry: Registry, make_proxy: Callable[..., CountingProxy], tmp_path: Path
) -> None:
    _, (layer,) = _image(tmp_path / "layout", size=1 << 20)
    registry.push(tmp_path / "layout", "i", "resume:1")
    blob = blob_path(tmp_path / "layout", layer).read_bytes()
    dest = tmp_path / "partial"
    dest.write_bytes(blob[:300_000])
    proxy = make_proxy(registry)
    seen: list[int] = []
    async with RegistryClient({proxy.host: RegistryConfig(insecure=True)}) as client:
        await client.fetch_blob(
            ImageRef(proxy.host, "resume", "1"), layer, len(blob), dest, seen.append
        )
        # A file already complete needs no request at all.
        await client.fetch_blob(ImageRef(proxy.host, "resume", "1"), layer, len(blob), dest)
    assert dest.read_bytes() == blob
    assert [(r.path, r.range) for r in proxy.requests] == [
        (f"/v2/resume/blobs/{layer}", "bytes=300000-")
    ]
    assert seen == sorted(seen) and seen[0] > 300_000 and seen[-1] == len(blob)


async def test_unreachable_registry_is_unavailable(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    ref = ImageRef(host, "app", "1")
    async with RegistryClient({host: RegistryConfig(insecure=True)}) as client:
        with pytest.raises(Unavailable, match=f"cannot reach registry {host}"):
            await client.manifest(ref)
        with pytest.raises(Unavailable, match="pull again to resume"):
            await client.fetch_blob(ref, _digest(b"x"), 1, tmp_path / "blob")


async def test_htpasswd_credentials(make_registry: Callable[..., Registry], tmp_path: Path) -> None:
    registry = make_registry(htpasswd={USER: PASSWORD})
    digest, _ = _image(tmp_path / "layout", size=1024)
    registry.push(tmp_path / "layout", "i", "private:1")
    ref = f"{registry.host}/private:1"

    def client(username: str = "", password: str = "") -> RegistryClient:
        config = RegistryConfig(insecure=True, username=username, password=password)
        return RegistryClient({registry.host: config})

    async with client(username=USER, password=PASSWORD) as good:
        image = await pull(ref, ImageStore(tmp_path / "store"), good, project="p")
    assert image.digest == digest
    async with client(username=USER, password="wrong") as bad:
        with pytest.raises(Invalid) as refused:
            await bad.manifest(parse_ref(ref))
    assert refused.value.message == (
        f"registry {registry.host} refused the credentials for user '{USER}'"
    )
    async with client() as anonymous:
        with pytest.raises(Invalid) as needs:
            await pull(ref, ImageStore(tmp_path / "other"), anonymous, project="p")
    assert needs.value.message == (
        f'registry {registry.host} needs credentials: set registries."{registry.host}"'
        ".username/password"
    )


async def test_bearer_token_is_fetched_once_and_reused(
    make_registry: Callable[..., Registry],
    make_token_server: Callable[..., TokenServer],
    make_proxy: Callable[..., CountingProxy],
    tmp_path: Path,
) -> None:
    tokens = make_token_server({USER: PASSWORD})
    registry = make_registry(token=tokens)
    digest, _ = _image(tmp_path / "layout", size=64 << 10, layers=3)
    registry.push(tmp_path / "layout", "i", "team/app:1")
    tokens.requests.clear()
    proxy = make_proxy(registry)  # the token server stays on its own port
    config = RegistryConfig(insecure=True, username=USER, password=PASSWORD)
    async with RegistryClient({proxy.host: config, **_token_server(tokens)}) as client:
        image = await pull(
            f"{proxy.host}/team/app:1", ImageStore(tmp_path / "store"), client, project="p"
        )
    assert image.digest == digest
    assert len(proxy.blob_requests()) == 4  # config and three layers, concurrently
    assert [(r.user, r.scopes, r.status) for r in tokens.requests] == [
        (USER, ("repository:team/app:pull",), 200)
    ]
    # One 401 for the manifest; everything after it carried the cached token.
    assert len(proxy.requests) == 1 + 1 + 4


async def test_concurrent_requests_share_one_token(
    make_registry: Callable[..., Registry],
    make_token_server: Callable[..., TokenServer],
    tmp_path: Path,
) -> None:
    tokens = make_token_server({USER: PASSWORD}, field_name="access_token")
    registry = make_registry(token=tokens)
    _, layers = _image(tmp_path / "layout", size=1024, layers=3)
    registry.push(tmp_path / "layout", "i", "app:1")
    tokens.requests.clear()
    config = RegistryConfig(insecure=True, username=USER, password=PASSWORD)
    ref = ImageRef(registry.host, "app", "1")
    async with RegistryClient({registry.host: config, **_token_server(tokens)}) as client:
        await asyncio.gather(
            *(
                client.fetch_blob(
                    ref, d, blob_path(tmp_path / "layout", d).stat().st_size, tmp_path / d
                )
                for d in layers
            )
        )
    assert len(tokens.requests) == 1
    assert all(
        (tmp_path / d).read_bytes() == blob_path(tmp_path / "layout", d).read_bytes()
        for d in layers
    )


async def test_bearer_token_refusals(
    make_registry: Callable[..., Registry],
    make_token_server: Callable[..., TokenServer],
    tmp_path: Path,
) -> None:
    tokens = make_token_server({USER: PASSWORD})
    registry = make_registry(token=tokens)
    _image(tmp_path / "layout", size=1024)
    registry.push(tmp_path / "layout", "i", "app:1")
    ref = ImageRef(registry.host, "app", "1")
    tokens.requests.clear()
    wrong = RegistryConfig(insecure=True, username=USER, password="wrong")
    async with RegistryClient({registry.host: wrong, **_token_server(tokens)}) as client:
        with pytest.raises(Invalid) as refused:
            await client.manifest(ref)
    assert refused.value.message == (
        f"registry {registry.host} refused the credentials for user '{USER}'"
    )
    assert [r.status for r in tokens.requests] == [401]  # asked once, no retry loop
    plain = {registry.host: RegistryConfig(insecure=True), **_token_server(tokens)}
    async with RegistryClient(plain) as client:
        with pytest.raises(Invalid, match=f"registry {registry.host} needs credentials: set"):
            await client.manifest(ref)


async def test_anonymous_bearer_token(
    make_registry: Callable[..., Registry],
    make_token_server: Callable[..., TokenServer],
    tmp_path: Path,
) -> None:
    tokens = make_token_server({USER: PASSWORD}, anonymous_pull=True, field_name="access_token")
    registry = make_registry(token=tokens)
    digest, _ = _image(tmp_path / "layout", size=1024)
    registry.push(tmp_path / "layout", "i", "public:1")
    tokens.requests.clear()
    plain = {registry.host: RegistryConfig(insecure=True), **_token_server(tokens)}
    async with RegistryClient(plain) as client:
        image = await pull(
            f"{registry.host}/public:1", ImageStore(tmp_path / "s"), client, project="p"
        )
    assert image.digest == digest
    assert [(r.user, r.status) for r in tokens.requests] == [("", 200)]


async def test_tls_with_a_private_ca(
    make_registry: Callable[..., Registry], tmp_path: Path
) -> None:
    registry = make_registry(tls=True)
    digest, _ = _image(tmp_path / "layout", size=1024)
    registry.push(tmp_path / "layout", "i", "tls:1")
    ref = ImageRef(registry.host, "tls", "1")
    async with RegistryClient({registry.host: RegistryConfig(ca_file=registry.ca_file)}) as client:
        assert (await client.manifest(ref)).digest == digest
    async with RegistryClient({registry.host: RegistryConfig()}) as client:
        with pytest.raises(Unavailable, match=r'set registries\."127.0.0.1:\d+"\.ca_file'):
            await client.manifest(ref)
    with pytest.raises(Invalid, match="cannot use CA file"):
        RegistryClient({registry.host: RegistryConfig(ca_file=tmp_path / "missing.pem")})._client(
            registry.host
        )


def _token_server(tokens: TokenServer) -> dict[str, RegistryConfig]:
    """The token server, on loopback too, configured so that the client connects to it."""
    return {f"127.0.0.1:{tokens.port}": RegistryConfig(insecure=True)}


def test_docker_hub_and_schemes() -> None:
    assert (
        base_url("docker.io", RegistryConfig()) == DOCKER_HUB_URL == "https://registry-1.docker.io"
    )
    assert base_url("registry.example:5000", RegistryConfig()) == "https://registry.example:5000"
    assert base_url("127.0.0.1:5000", RegistryConfig(insecure=True)) == "http://127.0.0.1:5000"
    assert parse_ref("busybox").registry == "docker.io"
    with pytest.raises(Invalid, match="not a base URL"):
        RegistryClient({"r.example": RegistryConfig(mirrors=("mirror.example",))})


def test_challenges_are_parsed() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull",error="insufficient_scope"'
    )
    (bearer,) = _challenges([header])
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull",
        "error": "insufficient_scope",
    }
    basic, other = _challenges(['Basic realm="x y", Bearer realm=https://t/token'])
    assert (basic.scheme, basic.params) == ("basic", {"realm": "x y"})
    assert (other.scheme, other.params) == ("bearer", {"realm": "https://t/token"})


# -- a scripted server --------------------------------------------------------------------------


def _plain(host: str) -> RegistryClient:
    return RegistryClient({host: RegistryConfig(insecure=True)})


async def test_schema1_manifests_are_refused(scripted: ScriptedServer) -> None:
    doc = json.dumps({"schemaVersion": 1, "name": "old", "fsLayers": []}).encode()
    ctype = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    scripted.routes["/v2/old/manifests/1"] = lambda h: (200, {"Content-Type": ctype}, doc)
    async with _plain(scripted.host) as client:
        with pytest.raises(Unsupported, match="Docker schema 1"):
            await client.manifest(ImageRef(scripted.host, "old", "1"))
    assert scripted.requests[0][1]["accept"].split(", ") == [
        "application/vnd.oci.image.index.v1+json",
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        DOCKER_MANIFEST,
    ]


async def test_manifest_must_match_the_digest_asked_for(scripted: ScriptedServer) -> None:
    doc = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    wanted = _digest(b"something else")
    scripted.routes[f"/v2/app/manifests/{wanted}"] = lambda h: (200, {}, doc)
    scripted.routes["/v2/app/manifests/big"] = lambda h: (200, {}, b" " * ((4 << 20) + 1))
    async with _plain(scripted.host) as client:
        with pytest.raises(Invalid, match=f"sent a manifest for {wanted} whose digest is"):
            await client.manifest(ImageRef(scripted.host, "app", "1"), wanted)
        with pytest.raises(Invalid, match="the limit is 4194304"):
            await client.manifest(ImageRef(scripted.host, "app", "big"))


async def test_registry_errors_carry_its_message(scripted: ScriptedServer) -> None:
    error = {"errors": [{"code": "UNKNOWN", "message": "storage backend on fire"}]}
    scripted.routes["/v2/app/manifests/1"] = lambda h: (500, {}, json.dumps(error).encode())
    scripted.routes["/v2/app/manifests/2"] = lambda h: (
        403,
        {},
        json.dumps({"errors": [{"code": "DENIED", "message": "no pulls on sundays"}]}).encode(),
    )
    async with _plain(scripted.host) as client:
        with pytest.raises(Unavailable, match=r"HTTP 500 .*UNKNOWN: storage backend on fire"):
            await client.manifest(ImageRef(scripted.host, "app", "1"))
        with pytest.raises(Invalid, match="denied access to app: DENIED: no pulls on sundays"):
            await client.manifest(ImageRef(scripted.host, "app", "2"))


async def test_ignored_range_starts_over(scripted: ScriptedServer, tmp_path: Path) -> None:
    blob = os.urandom(100_000)
    digest = _digest(blob)
    scripted.routes[f"/v2/app/blobs/{digest}"] = lambda h: (200, {}, blob)
    dest = tmp_path / "partial"
    dest.write_bytes(b"x" * 5000)  # not even a prefix: only the digest check could tell
    seen: list[int] = []
    async with _plain(scripted.host) as client:
        await client.fetch_blob(
            ImageRef(scripted.host, "app", "1"), digest, len(blob), dest, seen.append
        )
    assert dest.read_bytes() == blob
    assert scripted.requests[0][1]["range"] == "bytes=5000-"
    assert seen[-1] == len(blob)


async def test_blob_longer_than_its_descriptor_is_refused(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    blob = os.urandom(10_000)
    digest = _digest(blob)
    scripted.routes[f"/v2/app/blobs/{digest}"] = lambda h: (200, {}, blob + b"trailing garbage")
    dest = tmp_path / "partial"
    async with _plain(scripted.host) as client:
        with pytest.raises(Invalid, match=r"sends 10016 bytes .* descriptor says 10000"):
            await client.fetch_blob(ImageRef(scripted.host, "app", "1"), digest, len(blob), dest)
    assert dest.stat().st_size <= len(blob)


async def test_blob_redirects_to_storage_without_credentials(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    storage = ScriptedServer()
    try:
        blob = os.urandom(50_000)
        digest = _digest(blob)
        scripted.routes["/v2/app/blobs/" + digest] = lambda h: (
            (307, {"Location": f"http://{storage.host}/data?sig=1"}, b"")
            if h.get("authorization") == "Basic Ym9iOnMzY3JldA=="
            else (401, {"WWW-Authenticate": 'Basic realm="test"'}, b"")
        )
        storage.routes["/data"] = lambda h: (
            206,
            {"Content-Range": f"bytes 20000-{len(blob) - 1}/{len(blob)}"},
            blob[20000:],
        )
        dest = tmp_path / "partial"
        dest.write_bytes(blob[:20000])
        config = RegistryConfig(insecure=True, username=USER, password=PASSWORD)
        # The storage is on loopback too: configured, as an operator would for a private one.
        configs = {scripted.host: config, storage.host: RegistryConfig(insecure=True)}
        async with RegistryClient(configs) as client:
            await client.fetch_blob(ImageRef(scripted.host, "app", "1"), digest, len(blob), dest)
        assert dest.read_bytes() == blob
        ((_, headers),) = storage.requests
        assert "authorization" not in headers and headers["range"] == "bytes=20000-"
    finally:
        storage.stop()
