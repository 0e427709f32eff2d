"""Pulling into the store from a real registry: formats, indexes, resume, corruption, mirrors."""

import asyncio
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.images.layout import DOCKER_MANIFEST, OCI_MANIFEST
from hutch.images.pull import PullProgress, pull
from hutch.images.registry import Manifest, RegistryClient, RegistryConfig
from hutch.images.rootfs import prepare_image
from hutch.images.store import ImageStore
from hutch.model.errors import Invalid, NotFound, Unavailable, Unsupported
from hutch.model.image import ImageRef
from tests.helpers import free_port
from tests.images.ocibuild import blob_path, write_oci_layout
from tests.images.registry_server import CountingProxy, Registry, ScriptedServer

PROJECT = "proj"


def tar_bytes(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """An uncompressed layer: (kind, name, data) with kind "dir", "file", "link" (hard link
    to data), "symlink" (to data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "file":
                body = data.encode() if isinstance(data, str) else data
                info.size, info.mode = len(body), 0o644
                tar.addfile(info, io.BytesIO(body))
            else:
                info.type = tarfile.LNKTYPE if kind == "link" else tarfile.SYMTYPE
                info.linkname = str(data)
                tar.addfile(info)
    return buf.getvalue()


def file_layer(name: str, data: bytes) -> bytes:
    return tar_bytes([("file", name, data)])


@dataclass(frozen=True)
class Pushed:
    """What the module's registry holds (repository:tag -> digests)."""

    app: str  # app:1, OCI, two layers
    app_layers: tuple[str, ...]
    docker: str  # docker:1, the same image pushed with Docker media types
    multi_index: str  # multi:1, an index: linux/arm64 decoy and linux/amd64
    multi: str  # its linux/amd64 manifest
    decoy_config: str
    arm_index: str  # arm:1, an index with only linux/arm64
    tree: str  # tree:1, whiteouts, hard links and symlinks across two layers


def _layers(layout: Path, digest: str) -> tuple[str, ...]:
    manifest = json.loads(blob_path(layout, digest).read_bytes())
    return tuple(layer["digest"] for layer in manifest["layers"])


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    root = tmp_path_factory.mktemp("layouts")
    base = file_layer("etc/base", b"base layer\n")
    top = file_layer("etc/motd", b"hello from the registry\n")
    app = write_oci_layout(root / "app", [base, top], {"Cmd": ["cat", "/etc/motd"]}, ref="a")
    registry.push(root / "app", "a", "app:1")
    registry.push(root / "app", "a", "docker:1", format="v2s2")
    docker = _manifest_digest(registry, "docker", "1")

    multi = write_oci_layout(
        root / "multi", [top], {"Cmd": ["multi"]}, ref="m", index_of_index=True
    )
    registry.push(root / "multi", "m", "multi:1", all_images=True)
    index = json.loads((root / "multi" / "index.json").read_text())["manifests"][0]["digest"]
    decoy = json.loads(blob_path(root / "multi", index).read_bytes())["manifests"][0]["digest"]
    decoy_config = json.loads(blob_path(root / "multi", decoy).read_bytes())["config"]["digest"]

    write_oci_layout(
        root / "arm",
        [top],
        {"Cmd": ["arm"]},
        ref="r",
        index_of_index=True,
        platform=("linux", "arm64"),
    )
    registry.push(root / "arm", "r", "arm:1", all_images=True)
    arm_index = json.loads((root / "arm" / "index.json").read_text())["manifests"][0]["digest"]

    lower = tar_bytes(
        [
            ("dir", "etc", ""),
            ("file", "etc/gone", "deleted by the upper layer\n"),
            ("file", "etc/keep", "kept\n"),
            ("dir", "data", ""),
            ("file", "data/old", "hidden by the opaque whiteout\n"),
            ("dir", "bin", ""),
            ("file", "bin/tool", "#!/bin/sh\necho tool\n"),
            ("link", "bin/tool-hard", "bin/tool"),
            ("dir", "lib", ""),
            ("file", "lib/target", "symlink target\n"),
        ]
    )
    upper = tar_bytes(
        [
            ("file", "etc/.wh.gone", ""),
            ("dir", "data", ""),
            ("file", "data/.wh..wh..opq", ""),
            ("file", "data/new", "new data\n"),
            ("symlink", "lib/link", "target"),
        ]
    )
    tree = write_oci_layout(root / "tree", [lower, upper], {"Cmd": ["/bin/tool"]}, ref="t")
    registry.push(root / "tree", "t", "tree:1")
    return Pushed(
        app=app,
        app_layers=_layers(root / "app", app),
        docker=docker,
        multi_index=index,
        multi=multi,
        decoy_config=decoy_config,
        arm_index=arm_index,
        tree=tree,
    )


def _manifest_digest(registry: Registry, repo: str, tag: str) -> str:
    async def get() -> Manifest:
        async with _client(registry.host) as client:
            return await client.manifest(ImageRef(registry.host, repo, tag))

    return asyncio.run(get()).digest


def _client(*hosts: str) -> RegistryClient:
    """A client for these plain-HTTP test registries."""
    return RegistryClient({host: RegistryConfig(insecure=True) for host in hosts})


def check_progress(events: list[PullProgress]) -> None:
    """`done` never decreases and ends at `total`; each layer ends "done" or "exists"."""
    assert events, "no progress events"
    dones = [e.done for e in events]
    assert dones == sorted(dones)
    assert events[-1].done == events[-1].total
    assert all(e.total == events[0].total for e in events)
    last = {e.layer: e for e in events}
    assert all(e.status in ("done", "exists") for e in last.values())
    assert all(e.layer_done == e.layer_total for e in last.values())
    assert events[0].total == sum(e.layer_total for e in last.values())


# -- formats and references ---------------------------------------------------------------------


async def test_pull_by_tag_stores_a_verified_image(
    registry: Registry, pushed: Pushed, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store")
    events: list[PullProgress] = []
    async with _client(registry.host) as client:
        image = await pull(
            f"{registry.host}/app:1", store, client, project=PROJECT, progress=events.append
        )
    assert image.digest == pushed.app
    assert image.names == (f"{registry.host}/app:1",)
    assert image.layers == 2 and image.config.cmd == ("cat", "/etc/motd")
    assert all(store.has_blob(d) for d in pushed.app_layers)
    assert list((store.root / "partial").iterdir()) == []
    assert store.resolve(f"{registry.host}/app:1", PROJECT).digest == pushed.app
    assert store.image(pushed.app).layers[1].digest == pushed.app_layers[1]
    check_progress(events)
    assert {e.layer for e in events} == set(pushed.app_layers)
    assert [e.status for e in events if e.status != "downloading"] == ["done", "done"]


async def test_pull_by_digest_records_the_pin(
    registry: Registry, pushed: Pushed, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store")
    ref = f"{registry.host}/app@{pushed.app}"
    async with _client(registry.host) as client:
        image = await pull(ref, store, client, project=PROJECT, public=True)
    assert image.digest == pushed.app and image.names == (ref,) and image.public
    assert store.resolve(ref, "another-project").digest == pushed.app


async def test_pull_docker_v2_manifest(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    async with _client(registry.host) as client:
        image = await pull(f"{registry.host}/docker:1", store, client, project=PROJECT)
    assert image.digest == pushed.docker != pushed.app  # same content, other media types
    manifest = json.loads(store.blob_path(image.digest).read_bytes())
    assert manifest["mediaType"] == DOCKER_MANIFEST
    layers = store.image(image.digest).layers
    assert [layer.digest for layer in layers] == list(pushed.app_layers)
    assert {layer.media_type for layer in layers} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }


async def test_multi_arch_index_resolves_to_linux_amd64(
    registry: Registry, pushed: Pushed, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store")
    async with _client(registry.host) as client:
        top = await client.manifest(ImageRef(registry.host, "multi", "1"))
        by_tag = await pull(f"{registry.host}/multi:1", store, client, project=PROJECT)
        pinned = f"{registry.host}/multi@{pushed.multi_index}"
        by_index = await pull(pinned, store, client, project=PROJECT)
    assert top.digest == pushed.multi_index and "index" in top.media_type
    assert by_tag.digest == by_index.digest == pushed.multi
    assert json.loads(store.blob_path(pushed.multi).read_bytes())["mediaType"] == OCI_MANIFEST
    assert not store.has_blob(pushed.decoy_config)  # the arm64 image was never fetched
    assert not store.has_blob(pushed.multi_index)  # only the platform manifest is stored
    assert set(by_index.names) == {f"{registry.host}/multi:1", pinned}
    assert store.resolve(pinned, PROJECT).digest == pushed.multi


async def test_index_without_linux_amd64_is_unsupported(
    registry: Registry, pushed: Pushed, tmp_path: Path, make_proxy: Callable[..., CountingProxy]
) -> None:
    proxy = make_proxy(registry)
    store = ImageStore(tmp_path / "store")
    async with _client(proxy.host) as client:
        with pytest.raises(Unsupported, match=r"no linux/amd64 image, only linux/arm64"):
            await pull(f"{proxy.host}/arm:1", store, client, project=PROJECT)
    assert proxy.blob_requests() == []
    assert [r.path for r in proxy.requests] == ["/v2/arm/manifests/1"]


async def test_pulled_layers_unpack_with_whiteouts_and_links(
    registry: Registry, pushed: Pushed, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "store")
    async with _client(registry.host) as client:
        image = await pull(f"{registry.host}/tree:1", store, client, project=PROJECT)
    root = prepare_image(store.layout(), store.image(image.digest), tmp_path / "cache", disk=False)
    tree = root.rootfs
    assert root.key == pushed.tree and root.config.cmd == ("/bin/tool",)
    assert not (tree / "etc" / "gone").exists() and (tree / "etc" / "keep").read_text() == "kept\n"
    assert sorted(p.name for p in (tree / "data").iterdir()) == ["new"]
    assert os.stat(tree / "bin" / "tool").st_ino == os.stat(tree / "bin" / "tool-hard").st_ino
    assert os.readlink(tree / "lib" / "link") == "target"
    assert (tree / "lib" / "link").read_text() == "symlink target\n"
    assert not any(p.name.startswith(".wh.") for p in tree.rglob("*"))


@pytest.mark.parametrize(
    "ref", ["", " app", "127.0.0.1:1/app:bad tag", "127.0.0.1:1/app@sha256:1234", "App", "a//b"]
)
async def test_bad_references_are_refused_before_any_network(ref: str, tmp_path: Path) -> None:
    class NoNetwork(RegistryClient):
        async def manifest(self, ref: ImageRef, digest: str | None = None) -> Manifest:
            raise AssertionError("pull went to the network")

    store = ImageStore(tmp_path / "store")
    with pytest.raises(Invalid):
        await pull(ref, store, NoNetwork(), project=PROJECT)


async def test_missing_image_is_not_found(registry: Registry, tmp_path: Path) -> None:
    async with _client(registry.host) as client:
        with pytest.raises(NotFound, match=f"image {registry.host}/nothing:1 not found in"):
            await pull(
                f"{registry.host}/nothing:1", ImageStore(tmp_path / "s"), client, project="p"
            )


# -- warm pulls, sharing ------------------------------------------------------------------------


async def test_second_pull_fetches_only_the_manifest(
    registry: Registry, pushed: Pushed, tmp_path: Path, make_proxy: Callable[..., CountingProxy]
) -> None:
    proxy = make_proxy(registry)
    store = ImageStore(tmp_path / "store")
    ref = f"{proxy.host}/app:1"
    async with _client(proxy.host) as client:
        await pull(ref, store, client, project=PROJECT)
        assert len(proxy.blob_requests()) == 3  # config and two layers
        proxy.clear()
        events: list[PullProgress] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        image = await pull(ref, store, client, project="other", progress=events.append)
        elapsed = loop.time() - started
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", "/v2/app/manifests/1")]
    assert image.digest == pushed.app and image.names == (ref,)
    assert [e.status for e in events] == ["exists", "exists"]
    check_progress(events)
    assert elapsed < 2


async def test_concurrent_pulls_fetch_a_shared_layer_once(
    registry: Registry, tmp_path: Path, make_proxy: Callable[..., CountingProxy]
) -> None:
    shared = file_layer("big", os.urandom(2 << 20))
    layouts = tmp_path / "layouts"
    digests = []
    for name in ("one", "two"):
        own = file_layer("name", name.encode())
        digests.append(write_oci_layout(layouts / name, [shared, own], {"Cmd": [name]}, ref="x"))
        registry.push(layouts / name, "x", f"shared-{name}:1")
    shared_digest = _layers(layouts / "one", digests[0])[0]
    proxy = make_proxy(registry)
    store = ImageStore(tmp_path / "store")
    async with _client(proxy.host) as a, _client(proxy.host) as b:
        one, two = await asyncio.gather(
            pull(f"{proxy.host}/shared-one:1", store, a, project=PROJECT),
            pull(f"{proxy.host}/shared-two:1", store, b, project=PROJECT),
        )
    assert (one.digest, two.digest) == tuple(digests)
    fetched = [r.path.rsplit("/", 1)[1] for r in proxy.blob_requests()]
    assert fetched.count(shared_digest) == 1
    assert len(fetched) == 5  # the shared layer once; two configs, two own layers
    assert store.has_blob(shared_digest)


# -- interruptions and corruption ---------------------------------------------------------------


async def test_interrupted_pull_resumes_where_it_stopped(
    make_registry: Callable[..., Registry],
    make_proxy: Callable[..., CountingProxy],
    tmp_path: Path,
) -> None:
    registry = make_registry()
    small = [file_layer(f"small{i}", f"layer {i}\n".encode()) for i in range(2)]
    big = file_layer("big", os.urandom(4 << 20))
    digest = write_oci_layout(tmp_path / "layout", [*small, big], {"Cmd": ["x"]}, ref="b")
    registry.push(tmp_path / "layout", "b", "big:1")
    small1, small2, big_digest = _layers(tmp_path / "layout", digest)
    big_size = blob_path(tmp_path / "layout", big_digest).stat().st_size
    proxy = make_proxy(registry)
    proxy.cut_after(f"/blobs/{big_digest}", 1 << 20, registry.kill)
    store = ImageStore(tmp_path / "store")
    ref = f"{proxy.host}/big:1"

    async with _client(proxy.host) as client:
        with pytest.raises(Unavailable, match="pull again to resume") as failure:
            await pull(ref, store, client, project=PROJECT, concurrency=1)
    assert proxy.host in failure.value.message and big_digest in failure.value.message
    assert store.has_blob(small1) and store.has_blob(small2)  # finished layers are kept
    assert not store.has_blob(big_digest)
    kept = store.partial_path(big_digest).stat().st_size
    assert 0 < kept < big_size
    assert store.images(PROJECT) == []

    registry.start()  # same port, same storage
    proxy.clear()
    events: list[PullProgress] = []
    async with _client(proxy.host) as client:
        image = await pull(ref, store, client, project=PROJECT, progress=events.append)
    blobs = proxy.blob_requests()
    assert [(r.path, r.range) for r in blobs] == [(f"/v2/big/blobs/{big_digest}", f"bytes={kept}-")]
    assert image.digest == digest and image.layers == 3
    data = store.blob_path(big_digest).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == big_digest
    assert not store.partial_path(big_digest).exists()
    check_progress(events)
    assert [e.status for e in events if e.status != "downloading"] == [
        "exists",
        "exists",
        "resuming",
        "done",
    ]
    resuming = next(e for e in events if e.status == "resuming")
    small_sizes = events[0].layer_total + events[1].layer_total
    assert resuming.layer_done == kept and resuming.done == small_sizes + kept


async def test_corrupt_layer_is_refused_and_not_kept(
    make_registry: Callable[..., Registry], tmp_path: Path
) -> None:
    registry = make_registry()
    layer = file_layer("data", os.urandom(64 << 10))
    digest = write_oci_layout(tmp_path / "layout", [layer], {"Cmd": ["x"]}, ref="c")
    registry.push(tmp_path / "layout", "c", "corrupt:1")
    (layer_digest,) = _layers(tmp_path / "layout", digest)
    stored = registry.blob_file(layer_digest)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    stored.write_bytes(bytes(data))

    store = ImageStore(tmp_path / "store")
    async with _client(registry.host) as client:
        with pytest.raises(Invalid, match="does not match its digest"):
            await pull(f"{registry.host}/corrupt:1", store, client, project=PROJECT)
    assert not store.has_blob(layer_digest)
    assert not store.partial_path(layer_digest).exists()
    assert store.images(PROJECT) == []


async def test_registry_ignoring_ranges_restarts_the_layer(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    big = file_layer("big", os.urandom(1 << 20))
    digest = write_oci_layout(tmp_path / "layout", [big], {"Cmd": ["x"]}, ref="r")
    (layer,) = _layers(tmp_path / "layout", digest)
    scripted.serve_layout(tmp_path / "layout", "app", "1", digest)  # always 200, whole blobs
    store = ImageStore(tmp_path / "store")
    blob = blob_path(tmp_path / "layout", layer).read_bytes()
    store.partial_path(layer).write_bytes(blob[:400_000])  # an earlier, interrupted pull
    events: list[PullProgress] = []
    async with _client(scripted.host) as client:
        image = await pull(
            f"{scripted.host}/app:1", store, client, project=PROJECT, progress=events.append
        )
    assert image.digest == digest and store.blob_path(layer).read_bytes() == blob
    assert [h.get("range") for p, h in scripted.requests if p.endswith(layer)] == ["bytes=400000-"]
    assert events[0].status == "resuming" and events[0].done == 400_000
    check_progress(events)  # monotonic although the file started over from 0


# -- mirrors ------------------------------------------------------------------------------------


async def test_mirror_is_used_before_the_registry(
    registry: Registry,
    pushed: Pushed,
    make_registry: Callable[..., Registry],
    make_proxy: Callable[..., CountingProxy],
    tmp_path: Path,
) -> None:
    mirror = make_registry()
    layer = file_layer("mirrored", b"only the mirror has this\n")
    digest = write_oci_layout(tmp_path / "layout", [layer], {"Cmd": ["m"]}, ref="m")
    mirror.push(tmp_path / "layout", "m", "mirrored:1")
    mirror.push(tmp_path / "layout", "m", "app:1")  # the origin's tag, other content
    origin = make_proxy(registry)
    config = RegistryConfig(insecure=True, mirrors=(mirror.url,))
    store = ImageStore(tmp_path / "store")
    async with RegistryClient({origin.host: config}) as client:
        only_mirrored = await pull(f"{origin.host}/mirrored:1", store, client, project=PROJECT)
        app = await pull(f"{origin.host}/app:1", store, client, project=PROJECT)
    assert only_mirrored.digest == app.digest == digest  # both came from the mirror
    assert origin.requests == []


async def test_failing_mirrors_fall_back_to_the_registry(
    registry: Registry,
    pushed: Pushed,
    make_registry: Callable[..., Registry],
    make_proxy: Callable[..., CountingProxy],
    tmp_path: Path,
) -> None:
    empty = make_proxy(make_registry())
    down = f"http://127.0.0.1:{free_port()}"
    config = RegistryConfig(insecure=True, mirrors=(down, f"http://{empty.host}"))
    store = ImageStore(tmp_path / "store")
    async with RegistryClient({registry.host: config}) as client:
        image = await pull(f"{registry.host}/app:1", store, client, project=PROJECT)
    assert image.digest == pushed.app and image.names == (f"{registry.host}/app:1",)
    # The empty mirror was asked for everything first, and answered 404 each time.
    config = json.loads(store.blob_path(pushed.app).read_bytes())["config"]["digest"]
    blobs = [f"/v2/app/blobs/{d}" for d in (config, *pushed.app_layers)]
    assert sorted(r.path for r in empty.requests) == sorted(["/v2/app/manifests/1", *blobs])
