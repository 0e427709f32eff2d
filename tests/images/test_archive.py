import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from hutch.images import archive
from hutch.images.archive import export_archive, import_archive
from hutch.images.layout import MAX_JSON_BYTES, OCI_CONFIG, OCI_MANIFEST, REF_NAME
from hutch.images.store import ImageStore
from hutch.model.errors import Invalid, NotFound, Unsupported
from tests.images.ocibuild import blob_path, tar_directory, write_oci_layout

CONTAINERD_NAME = "io.containerd.image.name"
LIMIT = 16 << 20  # max_bytes for the hostile archives
Member = tuple[tarfile.TarInfo, bytes]


# -- building archives --------------------------------------------------------------------------


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, data


def tar_of(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def members_of(data: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        out = []
        for info in tar.getmembers():
            f = tar.extractfile(info)
            out.append((info, f.read() if f else b""))
        return out


SPARSE = {  # GNU sparse format 1.0, as GNU tar writes it in pax headers
    "GNU.sparse.major": "1",
    "GNU.sparse.minor": "0",
    "GNU.sparse.name": "sparse",
    "GNU.sparse.realsize": "4",
}


def member_with_pax(name: str, data: bytes, pax: dict[str, str]) -> Member:
    info, data = member(name, data)
    info.pax_headers = pax
    return info, data


def files_layer(files: dict[str, bytes]) -> bytes:
    return tar_of(*(member(name, data) for name, data in files.items()))


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def docker_save(
    layers: list[bytes],
    config: dict[str, Any],
    repo_tags: list[str] | None,
    *,
    diff_ids: list[str] | None = None,
    layer_paths: list[str] | None = None,
    architecture: str = "amd64",
) -> bytes:
    """What `docker save` (Docker 1.10 to 24) writes: uncompressed layers in <id>/layer.tar
    with v1 metadata beside them, the config as <digest>.json, manifest.json last."""
    config_doc = {
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids
            if diff_ids is not None
            else [sha256(gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b) for b in layers],
        },
        "history": [{"created_by": "test"}],
    }
    config_data = json.dumps(config_doc).encode()
    config_name = f"{sha256(config_data)[7:]}.json"
    members = [member(config_name, config_data)]
    paths = []
    for i, data in enumerate(layers):
        layer_id = hashlib.sha256(b"v1 id %d" % i).hexdigest()
        members += [
            member(layer_id, kind=tarfile.DIRTYPE),
            member(f"{layer_id}/VERSION", b"1.0"),
            member(f"{layer_id}/json", json.dumps({"id": layer_id}).encode()),
            member(f"{layer_id}/layer.tar", data),
        ]
        paths.append(f"{layer_id}/layer.tar")
    manifest = [
        {"Config": config_name, "RepoTags": repo_tags, "Layers": layer_paths or paths},
    ]
    members.append(member("manifest.json", json.dumps(manifest).encode()))
    repositories = {"app": {"1": paths[-1].split("/")[0]}} if paths else {}
    members.append(member("repositories", json.dumps(repositories).encode()))
    return tar_of(*members)


def blobs(store: ImageStore) -> set[str]:
    return {p.name for p in (store.root / "blobs" / "sha256").iterdir()}


def layout_blobs(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


def set_annotations(layout: Path, annotations: dict[str, str], position: int = 0) -> None:
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"][position]["annotations"] = annotations
    index_path.write_text(json.dumps(index))


@contextmanager
def pipe_of(data: bytes) -> Iterator[BinaryIO]:
    """The read end of a pipe a thread writes `data` into: a stream that cannot seek."""
    r, w = os.pipe()

    def write() -> None:
        try:
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BrokenPipeError:
            pass  # the reader gave up early: a refused archive

    writer = threading.Thread(target=write)
    writer.start()
    f = os.fdopen(r, "rb")
    try:
        yield f
    finally:
        f.close()  # before joining: a writer blocked on a full pipe then fails instead
        writer.join()


def export_through_pipe(store: ImageStore, digest: str, name: str | None = None) -> bytes:
    r, w = os.pipe()
    chunks: list[bytes] = []

    def read() -> None:
        with os.fdopen(r, "rb") as f:
            while chunk := f.read(1 << 16):
                chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    with os.fdopen(w, "wb") as f:
        assert not f.seekable()
        export_archive(store, digest, f, name=name)
    reader.join()
    return b"".join(chunks)


@dataclass(frozen=True)
class Node:
    store: ImageStore
    outside: Path  # a sentinel beside the store: nothing may ever appear in it


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    (tmp_path / "node" / "outside").mkdir(parents=True)
    # A member written under its own (relative) name would land in the sentinel.
    monkeypatch.chdir(tmp_path / "node" / "outside")
    return Node(ImageStore(tmp_path / "node" / "store"), tmp_path / "node" / "outside")


def assert_nothing_recorded(node: Node) -> None:
    store = node.store
    assert store.images("p") == []
    assert json.loads((store.root / "index.json").read_text())["manifests"] == []
    assert sorted(os.listdir(store.root.parent)) == ["outside", "store"]
    assert os.listdir(node.outside) == []
    assert os.listdir(store.root / "partial") == []  # no half-written blob left behind
    for blob in (store.root / "blobs" / "sha256").iterdir():  # what stays is verified
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert set(os.listdir(store.root)) <= {
        *("blobs", "partial", "locks", "oci-layout", "index.json"),
        *("store.db", "store.db-wal", "store.db-shm"),
    }


@pytest.fixture
def motd(tmp_path: Path) -> Path:
    extra = tmp_path / "extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "motd").write_text("second image\n")
    return extra


# -- OCI archives -------------------------------------------------------------------------------


def test_oci_archives_import_from_a_file_and_from_a_pipe_sharing_blobs(
    tmp_path: Path, node: Node, busybox_rootfs: Path, motd: Path
) -> None:
    store = node.store
    base_dir, app_dir = tmp_path / "base", tmp_path / "app"
    base = write_oci_layout(
        base_dir, [busybox_rootfs], {"Cmd": ["/bin/sh"]}, ref="registry.test/base:1"
    )
    app = write_oci_layout(
        app_dir,
        [busybox_rootfs, motd],
        {"Cmd": ["cat", "/etc/motd"], "Env": ["A=1"], "WorkingDir": "/etc"},
        ref="registry.test/app:1",
    )
    (tmp_path / "base.tar").write_bytes(tar_directory(base_dir))
    with (tmp_path / "base.tar").open("rb") as f:
        [imported] = import_archive(f, store, project="p")
    assert (imported.digest, imported.names, imported.layers) == (
        base,
        ("registry.test/base:1",),
        1,
    )
    assert blobs(store) == layout_blobs(base_dir)

    with pipe_of(tar_directory(app_dir)) as f:
        assert not f.seekable()
        [imported] = import_archive(f, store, project="p", public=True)
    assert (imported.digest, imported.names, imported.layers) == (app, ("registry.test/app:1",), 2)
    assert imported.config.cmd == ("cat", "/etc/motd")
    assert (imported.config.env, imported.config.working_dir) == (("A=1",), "/etc")
    assert imported.public
    # The busybox layer is stored once: the union of both layouts' blobs, no more.
    assert blobs(store) == layout_blobs(base_dir) | layout_blobs(app_dir)
    assert len(blobs(store)) == 3 + 3
    assert {i.digest for i in store.images("p")} == {base, app}
    assert store.resolve("registry.test/app:1", "other").digest == app  # public
    # What is stored is the image: its top layer unpacks to the file the image was built from.
    image = store.image(app)
    with (
        store.layout().open_layer(image.layers[1], image.diff_ids[1]) as layer,
        tarfile.open(fileobj=layer, mode="r|") as tar,
    ):
        contents = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    assert contents == {"etc/motd": b"second image\n"}


@pytest.mark.parametrize(
    ("annotations", "names"),
    [
        ({REF_NAME: "latest"}, ()),  # a bare tag: no repository, pinned by digest
        ({REF_NAME: "registry.test/app:2"}, ("registry.test/app:2",)),  # skopeo writes these
        ({REF_NAME: "busybox:1.36"}, ("docker.io/library/busybox:1.36",)),
        ({REF_NAME: "3", CONTAINERD_NAME: "registry.test/app:3"}, ("registry.test/app:3",)),
        ({}, ()),
    ],
)
def test_oci_names_come_from_the_annotations(
    tmp_path: Path, node: Node, annotations: dict[str, str], names: tuple[str, ...]
) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [files_layer({"f": b"x"})], {"Cmd": ["/f"]})
    set_annotations(layout, annotations)
    [imported] = import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    assert (imported.digest, imported.names) == (digest, names)
    assert node.store.resolve(digest, "p").digest == digest
    assert [i.digest for i in node.store.images("p")] == [digest]


def test_names_given_replace_the_archives_own(tmp_path: Path, node: Node) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [files_layer({"f": b"x"})], {}, ref="latest")
    [imported] = import_archive(
        io.BytesIO(tar_directory(layout)),
        node.store,
        project="p",
        names=["registry.test/mine:7", "other:1"],
    )
    assert imported.digest == digest
    assert imported.names == ("docker.io/library/other:1", "registry.test/mine:7")


def test_an_index_resolves_to_its_linux_amd64_manifest(tmp_path: Path, node: Node) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(
        layout,
        [files_layer({"f": b"x"})],
        {"Cmd": ["/f"]},
        index_of_index=True,
        docker_media_types=True,
        ref="registry.test/multi:1",
    )
    index = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    [imported] = import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    assert imported.digest == digest != index  # the platform manifest, not the index
    assert imported.names == ("registry.test/multi:1",)
    assert imported.config.cmd == ("/f",)


def test_several_images_in_one_archive(tmp_path: Path, node: Node) -> None:
    layout = tmp_path / "layout"
    a = write_oci_layout(layout, [files_layer({"a": b"a"})], {"Cmd": ["a"]}, ref="r.test/a:1")
    b = write_oci_layout(layout, [files_layer({"b": b"b"})], {"Cmd": ["b"]}, ref="r.test/b:1")
    # The same manifest listed twice under two names is one image with both names.
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({**index["manifests"][0], "annotations": {REF_NAME: "r.test/a:2"}})
    (layout / "index.json").write_text(json.dumps(index))
    data = tar_directory(layout)

    with pytest.raises(Invalid, match="holds 2 images; names can only be given"):
        import_archive(io.BytesIO(data), node.store, project="p", names=["r.test/x:1"])
    assert_nothing_recorded(node)

    imported = import_archive(io.BytesIO(data), node.store, project="p")
    assert [(i.digest, i.names) for i in imported] == [
        (a, ("r.test/a:1", "r.test/a:2")),
        (b, ("r.test/b:1",)),
    ]


def test_other_platforms_are_skipped_or_refused(tmp_path: Path, node: Node) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [], {"Cmd": ["arm"]}, platform=("linux", "arm64"), ref="r.test/a:1")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["platform"] = {"os": "linux", "architecture": "arm64"}
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(Unsupported, match="no linux/amd64 image, only linux/arm64"):
        import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    assert_nothing_recorded(node)

    amd64 = write_oci_layout(layout, [], {"Cmd": ["amd64"]}, ref="r.test/b:1")
    [imported] = import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    assert (imported.digest, imported.names) == (amd64, ("r.test/b:1",))


# -- docker save --------------------------------------------------------------------------------


def test_docker_save_archives_import_with_their_repo_tags(node: Node, busybox_rootfs: Path) -> None:
    base = tar_directory(busybox_rootfs)
    top = files_layer({"etc/motd": b"from docker\n"})
    config = {"Cmd": ["cat", "/etc/motd"], "Env": ["PATH=/bin"], "User": "app", "WorkingDir": "/"}
    data = docker_save([base, top], config, ["app:1", "registry.test/team/app:2"])
    [imported] = import_archive(io.BytesIO(data), node.store, project="p")
    assert imported.names == ("docker.io/library/app:1", "registry.test/team/app:2")
    assert imported.config.cmd == ("cat", "/etc/motd")
    assert (imported.config.env, imported.config.user) == (("PATH=/bin",), "app")
    assert imported.layers == 2

    manifest = json.loads(node.store.blob_path(imported.digest).read_bytes())
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert [(d["mediaType"], d["digest"], d["size"]) for d in manifest["layers"]] == [
        ("application/vnd.oci.image.layer.v1.tar", sha256(base), len(base)),
        ("application/vnd.oci.image.layer.v1.tar", sha256(top), len(top)),
    ]
    image = node.store.image(imported.digest)
    assert image.diff_ids == (sha256(base), sha256(top))
    # The v1 metadata beside the layers is not stored: manifest, config and two layers.
    assert len(blobs(node.store)) == 4
    # The manifest hutch writes is deterministic: the same archive is the same image.
    [again] = import_archive(io.BytesIO(data), node.store, project="q")
    assert again.digest == imported.digest


def test_docker_save_gzip_layers_are_labelled_gzip(node: Node) -> None:
    raw = files_layer({"f": b"x"})
    data = docker_save([gzip.compress(raw, mtime=0)], {}, ["app:1"])
    [imported] = import_archive(io.BytesIO(data), node.store, project="p")
    layer = node.store.image(imported.digest).layers[0]
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert node.store.image(imported.digest).diff_ids == (sha256(raw),)


def test_docker_save_layers_must_match_their_diff_ids(node: Node) -> None:
    layer = files_layer({"f": b"original"})
    tampered = files_layer({"f": b"tampered"})
    data = docker_save([tampered], {}, ["app:1"], diff_ids=[sha256(layer)])
    with pytest.raises(Invalid, match=r"does not match the diff_id .* the archive is corrupt"):
        import_archive(io.BytesIO(data), node.store, project="p")
    assert_nothing_recorded(node)


def test_docker_25_archives_are_read_as_oci(tmp_path: Path, node: Node) -> None:
    """Docker 25+ writes an OCI layout and manifest.json; index.json names tagged images the
    way containerd does (full name, tag as ref.name)."""
    layout = tmp_path / "layout"
    raw = files_layer({"f": b"x"})
    digest = write_oci_layout(layout, [raw], {"Cmd": ["/f"]}, compression="none")
    set_annotations(layout, {CONTAINERD_NAME: "docker.io/library/app:1", REF_NAME: "1"})
    manifest = json.loads(blob_path(layout, digest).read_bytes())
    legacy: list[dict[str, Any]] = [
        {
            "Config": f"blobs/sha256/{manifest['config']['digest'][7:]}",
            "RepoTags": ["app:1"],
            "Layers": [f"blobs/sha256/{sha256(raw)[7:]}"],
        }
    ]
    (layout / "manifest.json").write_text(json.dumps(legacy))
    (layout / "repositories").write_text(json.dumps({"app": {"1": "x"}}))
    [imported] = import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    assert (imported.digest, imported.names) == (digest, ("docker.io/library/app:1",))

    # Saved by image ID, Docker 25 lists nothing in index.json: manifest.json has the image.
    index = json.loads((layout / "index.json").read_text())
    (layout / "index.json").write_text(json.dumps({**index, "manifests": []}))
    legacy[0]["RepoTags"] = None
    (layout / "manifest.json").write_text(json.dumps(legacy))
    [by_id] = import_archive(io.BytesIO(tar_directory(layout)), node.store, project="q")
    assert by_id.names == ()
    assert node.store.image(by_id.digest).layers[0].digest == sha256(raw)


# -- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compress",
    [lambda d: gzip.compress(d, mtime=0), bz2.compress, lzma.compress],
    ids=["gzip", "bzip2", "xz"],
)
def test_compressed_archives_import(
    tmp_path: Path, node: Node, compress: Callable[[bytes], bytes]
) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [files_layer({"f": b"x"})], {}, ref="r.test/z:1")
    with pipe_of(compress(tar_directory(layout))) as f:
        [imported] = import_archive(f, node.store, project="p")
    assert (imported.digest, imported.names) == (digest, ("r.test/z:1",))


def test_zstd_archives_are_unsupported(node: Node) -> None:
    with pytest.raises(Unsupported, match=r"zstd-compressed: decompress it first"):
        import_archive(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 100), node.store, project="p")
    assert_nothing_recorded(node)


# -- export -------------------------------------------------------------------------------------


def test_export_reimports_to_the_same_image_and_is_reproducible(
    tmp_path: Path, node: Node, busybox_rootfs: Path, motd: Path
) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [busybox_rootfs, motd], {"Cmd": ["cat", "/etc/motd"]})
    import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")

    first = io.BytesIO()
    export_archive(node.store, digest, first, name="registry.test/app:1")
    exported = first.getvalue()
    assert export_through_pipe(node.store, digest, "registry.test/app:1") == exported
    members = members_of(exported)
    names = [i.name for i, _ in members]
    assert names[:2] == ["blobs", "blobs/sha256"] and names[-2:] == ["index.json", "oci-layout"]
    assert names[2:-2] == sorted(f"blobs/sha256/{b}" for b in layout_blobs(layout))
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i, _ in members} == {(0, 0, 0, "", "")}
    index = json.loads(dict((i.name, d) for i, d in members)["index.json"])
    [descriptor] = index["manifests"]
    assert descriptor["digest"] == digest
    assert descriptor["platform"] == {"architecture": "amd64", "os": "linux"}
    assert descriptor["annotations"] == {
        CONTAINERD_NAME: "registry.test/app:1",
        REF_NAME: "1",
    }

    elsewhere = ImageStore(tmp_path / "elsewhere")
    with pipe_of(exported) as f:
        [imported] = import_archive(f, elsewhere, project="p")
    assert (imported.digest, imported.names) == (digest, ("registry.test/app:1",))
    assert blobs(elsewhere) == layout_blobs(layout)


def test_export_with_a_tag_or_without_a_name(tmp_path: Path, node: Node) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [files_layer({"f": b"x"})], {})
    import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    for name, annotations in (("v1", {REF_NAME: "v1"}), (None, None)):
        out = io.BytesIO()
        export_archive(node.store, digest, out, name=name)
        index = json.loads(dict((i.name, d) for i, d in members_of(out.getvalue()))["index.json"])
        assert index["manifests"][0].get("annotations") == annotations
    with pytest.raises(Invalid, match="repository 'Name' in 'Bad/Name:x' is invalid"):
        export_archive(node.store, digest, io.BytesIO(), name="Bad/Name:x")


def test_export_of_an_unknown_image_is_not_found(node: Node) -> None:
    out = io.BytesIO()
    with pytest.raises(NotFound, match="no image sha256:0000"):
        export_archive(node.store, "sha256:" + "0" * 64, out)
    assert out.getvalue() == b""


def test_export_refuses_a_blob_that_rotted_in_the_store(tmp_path: Path, node: Node) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [files_layer({"f": b"x" * 100})], {})
    [imported] = import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    layer = node.store.image(imported.digest).layers[0]
    path = node.store.blob_path(layer.digest)
    path.write_bytes(bytes(len(path.read_bytes())))  # same size, other content
    with pytest.raises(Invalid, match=f"blob {layer.digest} in the store does not match"):
        export_archive(node.store, digest, io.BytesIO())


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
def test_skopeo_and_umoci_read_exports(
    tmp_path: Path, node: Node, busybox_rootfs: Path, motd: Path
) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [busybox_rootfs, motd], {"Cmd": ["cat", "/etc/motd"]})
    import_archive(io.BytesIO(tar_directory(layout)), node.store, project="p")
    path = tmp_path / "app.tar"
    with path.open("wb") as f:
        export_archive(node.store, digest, f, name="registry.test/app:1")

    for transport in (f"oci-archive:{path}", f"oci-archive:{path}:1"):
        result = subprocess.run(
            ["skopeo", "inspect", transport], capture_output=True, text=True, check=True
        )
        inspected = json.loads(result.stdout)
        assert inspected["Digest"] == digest
        assert inspected["Layers"] == [d.digest for d in node.store.image(digest).layers]
        assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")

    # And what skopeo writes imports: a copy of the export under another name.
    copy = tmp_path / "copy.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci-archive:{path}", f"oci-archive:{copy}:registry.test/copy:2"],
        capture_output=True,
        check=True,
    )
    elsewhere = ImageStore(tmp_path / "elsewhere")
    with copy.open("rb") as f:
        [imported] = import_archive(f, elsewhere, project="p")
    assert (imported.digest, imported.names) == (digest, ("registry.test/copy:2",))

    if shutil.which("umoci") is None:
        return
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    with tarfile.open(path) as tar:
        tar.extractall(extracted, filter="data")
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    subprocess.run(
        ["umoci", "unpack", *rootless, "--image", f"{extracted}:1", str(tmp_path / "bundle")],
        capture_output=True,
        check=True,
    )
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "etc" / "motd").read_text() == "second image\n"
    assert (rootfs / "bin" / "busybox").read_bytes() == (
        busybox_rootfs / "bin/busybox"
    ).read_bytes()


# -- hostile archives ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    """A small valid OCI archive, taken apart so that cases can break one thing in it."""

    members: list[Member]
    manifest: str
    config: str
    layer: str

    def without(self, digest: str) -> list[Member]:
        return [(i, d) for i, d in self.members if i.name != f"blobs/sha256/{digest[7:]}"]

    def replacing(self, name: str, data: bytes) -> list[Member]:
        return [member(name, data) if i.name == name else (i, d) for i, d in self.members]

    def index(self) -> dict[str, Any]:
        return json.loads(dict((i.name, d) for i, d in self.members)["index.json"])  # type: ignore[no-any-return]


@pytest.fixture
def good(tmp_path: Path) -> Good:
    layout = tmp_path / "good"
    digest = write_oci_layout(layout, [files_layer({"f": b"x" * 4000})], {}, ref="r.test/g:1")
    manifest = json.loads(blob_path(layout, digest).read_bytes())
    members = members_of(tar_directory(layout))
    return Good(members, digest, manifest["config"]["digest"], manifest["layers"][0]["digest"])


def _tampered_blob(g: Good) -> bytes:
    name = f"blobs/sha256/{g.layer[7:]}"
    original = dict((i.name, d) for i, d in g.members)[name]
    return tar_of(*g.replacing(name, original[:-1] + b"!"))


def _index(g: Good, **changes: Any) -> bytes:
    index = g.index()
    index["manifests"][0].update(changes)
    return tar_of(*g.replacing("index.json", json.dumps(index).encode()))


def _docker(paths: list[str], extra: list[Member] | None = None) -> bytes:
    config = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = [{"Config": "c.json", "RepoTags": ["app:1"], "Layers": paths}]
    return tar_of(
        member("c.json", config),
        *(extra or []),
        member("manifest.json", json.dumps(manifest).encode()),
    )


def _zero_bomb() -> bytes:
    """64 MiB of zeros in one member: about 64 KiB gzipped."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w|") as tar,
    ):
        info = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return buf.getvalue()


def _many_small_members() -> bytes:
    """A bomb of many members, each under the limit, adding up to more than it."""
    return gzip.compress(tar_of(*(member(f"x/{i}", bytes(1 << 20)) for i in range(20))))


HOSTILE: list[tuple[str, Callable[[Good], bytes], str]] = [
    (
        "absolute",
        lambda g: tar_of(*g.members, member(f"{os.getcwd()}/evil", b"x")),
        "absolute path",
    ),
    (
        "dotdot",
        lambda g: tar_of(member("blobs/../../outside/evil", b"x"), *g.members),
        r"'\.\.' component",
    ),
    (
        "symlink",
        lambda g: tar_of(
            *g.without(g.layer),
            member(f"blobs/sha256/{g.layer[7:]}", kind=tarfile.SYMTYPE, link="/etc/shadow"),
        ),
        "is a symbolic link",
    ),
    (
        "hardlink",
        lambda g: tar_of(*g.members, member("copy", kind=tarfile.LNKTYPE, link="index.json")),
        "is a hard link",
    ),
    ("chardev", lambda g: tar_of(member("null", kind=tarfile.CHRTYPE), *g.members), "device"),
    ("blockdev", lambda g: tar_of(member("sda", kind=tarfile.BLKTYPE), *g.members), "device"),
    ("fifo", lambda g: tar_of(*g.members, member("fifo", kind=tarfile.FIFOTYPE)), "FIFO"),
    ("missing manifest", lambda g: tar_of(*g.without(g.manifest)), "not in the archive"),
    ("missing config", lambda g: tar_of(*g.without(g.config)), "not in the archive"),
    ("missing layer", lambda g: tar_of(*g.without(g.layer)), "not in the archive"),
    ("blob mismatch", _tampered_blob, "does not match its digest"),
    ("wrong size", lambda g: _index(g, size=1), r"says blob .* is 1 bytes"),
    (
        "not a blob name",
        lambda g: tar_of(*g.members, member("blobs/sha512/abc", b"x")),
        "is not a blob",
    ),
    (
        "duplicate index.json",
        lambda g: tar_of(*g.members, member("index.json", b'{"manifests": []}')),
        "two different members named 'index.json'",
    ),
    (
        "duplicate layer.tar",
        lambda g: _docker(
            ["l/layer.tar"], [member("l/layer.tar", b"a"), member("l/layer.tar", b"b")]
        ),
        "two different members named 'l/layer.tar'",
    ),
    (
        "json over the cap",
        lambda g: tar_of(*g.replacing("index.json", b" " * (MAX_JSON_BYTES + 1))),
        f"index.json in the archive is {MAX_JSON_BYTES + 1} bytes; the limit is",
    ),
    (
        "huge pax header",
        lambda g: tar_of(*g.members, member("p" * (2 << 20), b"x")),
        "extended tar header; the limit is 1048576",
    ),
    (
        "sparse file",
        lambda g: tar_of(
            *g.members, member_with_pax("s", b"1\n0\n4\n" + bytes(506) + b"data", SPARSE)
        ),
        "is a sparse file",
    ),
    (
        "malformed pax",
        lambda g: tar_of(member_with_pax("m", b"x", {"GNU.sparse.map": "a,b"}), *g.members),
        "not an image archive: invalid literal",
    ),
    (
        "docker: missing layer",
        lambda g: _docker(["nothere/layer.tar"]),
        "refers to 'nothere/layer.tar', which is not in the archive",
    ),
    ("docker: escaping layer", lambda g: _docker(["../outside/layer.tar"]), "'..' component"),
    ("docker: absolute layer", lambda g: _docker(["/etc/passwd"]), "absolute path"),
    ("docker: bad tag", lambda g: docker_save([], {}, ["Not A Name"]), "not a valid image name"),
    (
        "oci: bad name",
        lambda g: _index(g, annotations={REF_NAME: "registry.test/UPPER:1"}),
        "'registry.test/UPPER:1' is not a valid image name",
    ),
    (
        "oci: no images",
        lambda g: tar_of(*g.replacing("index.json", b'{"schemaVersion": 2, "manifests": []}')),
        "lists no images",
    ),
    ("docker: no images", lambda g: tar_of(member("manifest.json", b"[]")), "lists no images"),
    ("no metadata", lambda g: tar_of(member("hello.txt", b"hi")), "not an image archive"),
    ("empty stream", lambda g: b"", "not an image archive: empty file"),
    ("not a tar", lambda g: b"\x01" * 4000, "not an image archive"),
    ("json, not a tar", lambda g: b'{"manifests": []}', "not an image archive"),
    ("truncated", lambda g: tar_of(*g.members)[:3000], "damaged or truncated"),
    (
        "corrupt gzip",
        lambda g: (z := gzip.compress(tar_of(*g.members)))[:40] + bytes(200) + z[240:],
        "cannot be decompressed",
    ),
    ("bomb", lambda g: _zero_bomb(), f"larger than {LIMIT} bytes uncompressed"),
    ("many members", lambda g: _many_small_members(), f"larger than {LIMIT} bytes uncompressed"),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_archives_are_refused_and_leave_nothing(
    node: Node, good: Good, build: Callable[[Good], bytes], message: str
) -> None:
    with pipe_of(build(good)) as f, pytest.raises(Invalid, match=message):
        import_archive(f, node.store, project="p", max_bytes=LIMIT)
    assert_nothing_recorded(node)


def test_too_many_members(node: Node, good: Good, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", len(good.members) + 2)
    data = tar_of(*good.members, member("a"), member("b"))
    assert import_archive(io.BytesIO(data), node.store, project="q")  # at the limit: fine
    node.store.untag("r.test/g:1", "q")
    node.store.gc()
    with pytest.raises(Invalid, match=f"more than {len(good.members) + 2} members"):
        import_archive(
            io.BytesIO(tar_of(*good.members, *(member(c) for c in "abc"))), node.store, project="p"
        )
    assert_nothing_recorded(node)


def test_a_blob_already_stored_is_still_checked(node: Node, good: Good) -> None:
    """A blob the store holds is not rewritten, but the archive's copy must still match."""
    [imported] = import_archive(io.BytesIO(tar_of(*good.members)), node.store, project="q")
    with pytest.raises(Invalid, match="does not match its digest"):
        import_archive(io.BytesIO(_tampered_blob(good)), node.store, project="p")
    assert node.store.images("p") == []
    assert node.store.resolve("r.test/g:1", "q").digest == imported.digest


def test_a_blob_the_store_holds_does_not_complete_an_archive(node: Node, good: Good) -> None:
    """Another project's layer cannot be claimed by naming its digest in an archive."""
    import_archive(io.BytesIO(tar_of(*good.members)), node.store, project="q")
    with pytest.raises(Invalid, match=f"refers to blob {good.layer}, which is not in the archive"):
        import_archive(io.BytesIO(tar_of(*good.without(good.layer))), node.store, project="p")
    assert node.store.images("p") == []
