import gzip
import io
import json
import logging
import os
import shutil
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from hutch.images import rootfs as rootfs_module
from hutch.images.rootfs import PreparedRoot, prepare_root, tree_key
from hutch.images.staging import Staging
from hutch.images.users import resolve_user
from hutch.model.errors import Invalid, NotFound
from hutch.model.image import ImageConfig
from hutch.model.sandbox import User

from .ocibuild import blob_path, write_oci_layout


def tar_of(*entries: tuple[str, bytes | None, int]) -> bytes:
    """(name, data or None for a directory, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1_600_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, str]:
    layout = tmp_path / "image"
    digest = write_oci_layout(
        layout,
        [
            tar_of(("bin", None, 0o755), ("bin/sh", b"shell", 0o755), ("etc/old", b"o", 0o644)),
            tar_of(("etc/.wh.old", b"", 0o644), ("etc/hostname", b"box\n", 0o644)),
        ],
        {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["A=1"], "User": "0"},
    )
    return layout, digest


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    (root / "bin").mkdir(parents=True)
    (root / "bin/sh").write_bytes(b"shell")
    (root / "bin/sh").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc/link").symlink_to("/bin/sh")
    return root


def test_missing_and_non_directory_sources_are_invalid(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match=f"rootfs {tmp_path}/x does not exist"):
        prepare_root(tmp_path / "x", tmp_path / "cache", disk=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(Invalid, match="is not a directory"):
        prepare_root(tmp_path / "f", tmp_path / "cache", disk=False)
    with pytest.raises(Invalid, match="format 'qcow2' is unknown"):
        prepare_root(tmp_path, tmp_path / "cache", disk=False, disk_format="qcow2")


def test_plain_directory_is_used_in_place(plain: Path, tmp_path: Path) -> None:
    root = prepare_root(plain, tmp_path / "cache", disk=False)
    assert root == PreparedRoot(rootfs=plain, disk=None, config=ImageConfig(), key=root.key)
    assert root.key.startswith("sha256:") and len(root.key) == 71
    assert prepare_root(plain, tmp_path / "cache", disk=False).key == root.key
    with pytest.raises(Invalid, match="not an OCI image layout"):
        prepare_root(plain, tmp_path / "cache", disk=False, ref="latest")


def test_tree_key_covers_content_modes_owners_and_links(plain: Path) -> None:
    keys = {tree_key(plain)}
    (plain / "bin/sh").write_bytes(b"shelL")
    keys.add(tree_key(plain))
    (plain / "bin/sh").chmod(0o700)
    keys.add(tree_key(plain))
    os.chown(plain / "bin/sh", 1, 1)
    keys.add(tree_key(plain))
    (plain / "etc/link").unlink()
    (plain / "etc/link").symlink_to("/bin/bash")
    keys.add(tree_key(plain))
    (plain / "etc/new").mkdir()
    keys.add(tree_key(plain))
    (plain / "etc/new").rename(plain / "etc/nex")
    keys.add(tree_key(plain))
    assert len(keys) == 7
    before = tree_key(plain)
    os.utime(plain / "bin/sh", (1, 1))  # times are not content
    assert tree_key(plain) == before


def test_tree_key_is_the_same_for_identical_trees(plain: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(plain, copy, symlinks=True)
    assert tree_key(copy) == tree_key(plain)


def test_tree_key_reuses_file_hashes_while_files_are_unchanged(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every file counts as old enough to trust its stat (no "racy" window).
    monkeypatch.setattr(rootfs_module, "RACY_NS", -(10**18))
    cache = tmp_path / "cache"
    key = tree_key(plain, cache)
    hashed: list[str] = []
    real_hash = rootfs_module._hash_file

    def counting(*args: object) -> tuple[str, bool]:
        hashed.append(str(args[3]))
        return real_hash(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(rootfs_module, "_hash_file", counting)
    assert tree_key(plain, cache) == key
    assert hashed == []
    (plain / "bin/sh").write_bytes(b"changed")
    changed = tree_key(plain, cache)
    assert hashed == ["sh"] and changed != key
    assert changed == tree_key(plain)  # same as without the cache


def test_tree_key_does_not_trust_recent_files(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    tree_key(plain, cache)  # the files were just written: nothing may be remembered
    hashed: list[object] = []
    real_hash = rootfs_module._hash_file

    def counting(*args: object) -> tuple[str, bool]:
        hashed.append(args)
        return real_hash(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(rootfs_module, "_hash_file", counting)
    tree_key(plain, cache)
    assert len(hashed) == 1


def test_oci_image_is_unpacked_once_by_manifest_digest(
    image: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, digest = image
    cache = tmp_path / "cache"
    root = prepare_root(layout, cache, disk=False)
    assert root.key == digest
    assert root.rootfs == cache / "rootfs" / digest.removeprefix("sha256:")
    assert root.disk is None
    assert root.config == ImageConfig(
        entrypoint=("/bin/sh",), cmd=("-c", "true"), env=("A=1",), user="0"
    )
    assert (root.rootfs / "bin/sh").read_bytes() == b"shell"
    assert sorted(os.listdir(root.rootfs / "etc")) == ["hostname"]  # the whiteout applied
    assert stat.S_IMODE(os.stat(root.rootfs).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(cache / "rootfs").st_mode) == 0o700  # setuid files stay private
    assert sorted(os.listdir(cache / "rootfs")) == [digest.removeprefix("sha256:")]

    def no_unpacking(*args: object, **kw: object) -> None:
        raise AssertionError("unpacked again")

    monkeypatch.setattr(rootfs_module, "apply_layer", no_unpacking)
    assert prepare_root(layout, cache, disk=False) == root


def test_ref_picks_the_image(image: tuple[Path, str], tmp_path: Path) -> None:
    layout, _ = image
    other = write_oci_layout(layout, [tar_of(("x", b"x", 0o644))], {"Cmd": ["x"]}, ref="other")
    root = prepare_root(layout, tmp_path / "cache", disk=False, ref="other")
    assert root.key == other
    assert os.listdir(root.rootfs) == ["x"]
    with pytest.raises(NotFound, match="'missing' is not in"):
        prepare_root(layout, tmp_path / "cache", disk=False, ref="missing")


def test_corrupt_layer_leaves_nothing_behind(image: tuple[Path, str], tmp_path: Path) -> None:
    layout, digest = image
    layer = json.loads(blob_path(layout, digest).read_text())["layers"][1]["digest"]
    path = blob_path(layout, layer)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the gzip CRC: every file of the layer is unpacked before it is checked
    path.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(Invalid, match=layer):
        prepare_root(layout, cache, disk=False)
    assert os.listdir(cache / "rootfs") == []


def test_decompression_bomb_is_stopped(tmp_path: Path) -> None:
    bomb = tar_of(("zeros", b"\0" * (4 << 20), 0o644))
    assert len(gzip.compress(bomb)) < 10_000
    layout = tmp_path / "image"
    write_oci_layout(layout, [bomb], {})
    cache = tmp_path / "cache"
    with pytest.raises(Invalid, match="image unpacks to more than 1048576 bytes"):
        prepare_root(layout, cache, disk=False, max_unpacked_bytes=1 << 20)
    assert os.listdir(cache / "rootfs") == []


def test_hostile_layer_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("evil")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
        tar.addfile(link)
        info = tarfile.TarInfo("evil/x")
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "outside").mkdir()
    layout = tmp_path / "image"
    write_oci_layout(layout, [buf.getvalue()], {})
    with pytest.raises(Invalid, match="which is a symlink"):
        prepare_root(layout, tmp_path / "cache", disk=False)
    assert os.listdir(tmp_path / "outside") == []
    assert os.listdir(tmp_path / "cache/rootfs") == []


def test_stale_temporary_trees_are_cleaned_up(image: tuple[Path, str], tmp_path: Path) -> None:
    layout, digest = image
    hexdigest = digest.removeprefix("sha256:")
    stale = tmp_path / "cache" / "rootfs" / f".{hexdigest}.tmp-crashed"
    stale.mkdir(parents=True)
    (stale / "half").write_text("")
    root = prepare_root(layout, tmp_path / "cache", disk=False)
    assert os.listdir(root.rootfs.parent) == [hexdigest]


def test_disk_is_built_once_per_key(
    image: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("mkfs.erofs") is None:
        pytest.skip("mkfs.erofs is not installed")
    layout, digest = image
    cache = tmp_path / "cache"
    root = prepare_root(layout, cache, disk=True)
    assert root.disk == cache / "rootdisks" / f"{digest.removeprefix('sha256:')}.erofs"
    assert root.disk.read_bytes()[1024:1028] == b"\xe2\xe1\xf5\xe0"  # erofs magic
    built = root.disk.stat()

    def no_building(*args: object, **kw: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(rootfs_module, "build_root_disk", no_building)
    again = prepare_root(layout, cache, disk=True)
    assert again == root
    assert again.disk is not None and again.disk.stat().st_ino == built.st_ino


def test_ext4_disk_of_a_plain_directory(plain: Path, tmp_path: Path) -> None:
    if shutil.which("mkfs.ext4") is None and shutil.which("mkfs.ext4", path="/sbin") is None:
        pytest.skip("mkfs.ext4 is not installed")
    root = prepare_root(plain, tmp_path / "cache", disk=True, disk_format="ext4")
    assert root.rootfs == plain
    assert root.disk == tmp_path / "cache/rootdisks" / f"{root.key.removeprefix('sha256:')}.ext4"
    assert root.disk.read_bytes()[0x438:0x43A] == b"\x53\xef"  # ext4 magic


def test_concurrent_calls_unpack_once(image: tuple[Path, str], tmp_path: Path) -> None:
    layout, _ = image
    results: list[PreparedRoot] = []
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            results.append(prepare_root(layout, tmp_path / "cache", disk=False))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.rootfs for r in results}) == 1 and len(results) == 4
    assert len(os.listdir(tmp_path / "cache" / "rootfs")) == 1


def test_busybox_round_trip_through_an_oci_layout(busybox_rootfs: Path, tmp_path: Path) -> None:
    layout = tmp_path / "image"
    digest = write_oci_layout(layout, [busybox_rootfs], {"Cmd": ["/bin/sh"], "User": "app"})
    root = prepare_root(layout, tmp_path / "cache", disk=False)
    assert root.key == digest
    assert tree_key(root.rootfs) == tree_key(busybox_rootfs)  # same paths, modes, owners, data
    assert os.readlink(root.rootfs / "bin/ls") == "busybox"
    assert stat.S_IMODE(os.stat(root.rootfs / "tmp").st_mode) == 0o1777
    assert resolve_user(root.rootfs, root.config.user) == User(1000, 1000, (2000,))


# -- disk-only roots, built from a scaffold --------------------------------------------------


@pytest.fixture
def app_image(tmp_path: Path) -> tuple[Path, str]:
    layout = tmp_path / "app"
    passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    digest = write_oci_layout(
        layout,
        [
            tar_of(("etc", None, 0o755), ("etc/passwd", passwd, 0o644)),
            tar_of(("srv", None, 0o755), ("srv/data", b"x" * 5000, 0o600)),
        ],
        {"Cmd": ["/srv/data"], "User": "app"},
    )
    return layout, digest


def test_a_disk_only_root_keeps_no_tree(app_image: tuple[Path, str], tmp_path: Path) -> None:
    layout, digest = app_image
    shm, cache = tmp_path / "shm", tmp_path / "cache"
    shm.mkdir()
    shm.chmod(0o1777)  # as /dev/shm
    staging = Staging(shm, 1 << 30)
    root = prepare_root(layout, cache, disk=True, staging=staging)
    assert root.disk is not None and root.disk.is_file() and root.key == digest
    assert not (cache / "rootfs" / digest[7:]).exists()  # no unpacked tree was kept
    assert [p.name for p in root.rootfs.rglob("*")] == ["etc", "passwd"]  # just the users
    assert resolve_user(root.rootfs, "app") == User(1000, 1000)
    # Nothing left in the staging but the ledger; the staging directory itself untouched.
    assert [p.name for p in shm.rglob("*")] == [f".hutch-{os.geteuid()}", "ledger.lock"]
    assert stat.S_IMODE(shm.stat().st_mode) == 0o1777
    again = prepare_root(layout, cache, disk=True, staging=staging)
    assert again == root  # cached: nothing rebuilt
    tree = prepare_root(layout, cache, disk=False)  # a container needs the tree itself
    assert (tree.rootfs / "srv" / "data").stat().st_size == 5000
    assert prepare_root(layout, cache, disk=True).rootfs == tree.rootfs  # now built from it
    assert rootfs_module.drop_prepared(cache, digest) > 0
    assert list((cache / "rootdisks").iterdir()) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_an_image_too_large_for_staging_is_built_on_disk(
    tmp_path: Path, compression: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The staging takes 8 KiB. A gzip layer says what it unpacks to (its trailer): the image
    is not even started there. A zstd layer does not: it is started, then stopped when it
    outgrows its reservation, and done again on disk."""
    layout = tmp_path / "app"
    passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    layers: list[bytes | Path] = [
        tar_of(("etc", None, 0o755), ("etc/passwd", passwd, 0o644)),
        tar_of(("srv", None, 0o755), ("srv/data", b"x" * 5000, 0o600)),
    ]
    write_oci_layout(layout, layers, {"User": "app"}, compression=compression)
    shm = tmp_path / "shm"
    shm.mkdir()
    caplog.set_level(logging.INFO, logger="hutch.images.rootfs")
    root = prepare_root(layout, tmp_path / "cache", disk=True, staging=Staging(shm, 8192))
    said = {"gzip": "has no room for", "zstd": "cannot hold"}[compression]
    assert said in caplog.text and "on the cache's disk" in caplog.text
    assert root.disk is not None and root.disk.stat().st_size > 5000
    assert resolve_user(root.rootfs, "app").uid == 1000
    assert [p.name for p in shm.rglob("*")] == [f".hutch-{os.geteuid()}", "ledger.lock"]
