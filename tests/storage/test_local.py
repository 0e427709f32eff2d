"""The local backend on real files: a real loop-mounted XFS pool (the test machine's / is ext4,
which cannot reflink), real mkfs.ext4, each volume's ext4 checked through a real loop mount."""

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hutch.model.errors import Conflict, Invalid, NoCapacity, NotFound
from hutch.storage import local
from hutch.storage.backend import Backend
from hutch.storage.local import LocalBackend, unmount_pool

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount"),
    pytest.mark.timeout(120),
]
MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "node"
    unmount_pool(tmp_path / "node")


@pytest.fixture
def backend(root: Path) -> LocalBackend:
    return LocalBackend(root, pool_bytes=8 * GIB)


@contextlib.contextmanager
def mounted(file: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", file, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def path_of(b: LocalBackend, volume_id: str) -> str:
    return b.attach_source(volume_id).path


def write_at(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def leftovers(b: LocalBackend) -> list[str]:
    return sorted(p.name for p in b.data.rglob(".tmp-*"))


def test_the_backend_meets_the_contract_and_makes_a_pool_where_root_cannot_reflink(
    backend: LocalBackend, root: Path
) -> None:
    b: Backend = backend
    assert b.name == "local"
    assert not local.reflinks(root)
    assert backend.data == root / "pool" and os.path.ismount(root / "pool")
    assert (root / "pool.xfs").stat().st_blocks * 512 < 128 * MIB  # sparse (the log is written)


def test_create_info_volumes_delete(backend: LocalBackend) -> None:
    made = backend.create("vol-a", 64 * MIB, "ext4")
    assert (made.id, made.size_bytes, made.fs) == ("vol-a", 64 * MIB, "ext4")
    assert 0 < made.used_bytes < 8 * MIB  # sparse: ext4 made lazily
    raw = backend.create("vol-b", 32 * MIB, "none")
    assert (raw.fs, raw.used_bytes) == ("none", 0)
    assert backend.info("vol-a") == made
    assert [v.id for v in backend.volumes()] == ["vol-a", "vol-b"]
    assert os.path.getsize(path_of(backend, "vol-b")) == 32 * MIB
    with pytest.raises(Conflict):
        backend.create("vol-a", 64 * MIB, "ext4")
    backend.snapshot("vol-a", "s1")
    backend.delete("vol-a")
    backend.delete("vol-a")  # idempotent
    with pytest.raises(NotFound):
        backend.info("vol-a")
    with pytest.raises(NotFound):
        backend.snapshots("vol-a")
    assert [v.id for v in backend.volumes()] == ["vol-b"]
    assert not (backend.data / "snapshots" / "vol-a").exists()
    for size in (0, MIB, 64 * MIB + 1):
        with pytest.raises(Invalid):
            backend.create("vol-c", size, "none")
    with pytest.raises(Invalid):
        backend.create("vol-c", 64 * MIB, "btrfs")  # type: ignore[arg-type]
    assert leftovers(backend) == []


def test_the_ext4_is_made_and_holds_files(backend: LocalBackend, tmp_path: Path) -> None:
    backend.create("db", 64 * MIB, "ext4")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "hello").write_text("persistent")
        st = os.statvfs(m)
        assert st.f_blocks * st.f_frsize > 50 * MIB  # -m 0: all of it for the workload
    check = subprocess.run(
        ["e2fsck", "-fn", path_of(backend, "db")], capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout
    dumped = subprocess.run(
        ["dumpe2fs", "-h", path_of(backend, "db")], capture_output=True, text=True, check=True
    )
    assert "has_journal" in dumped.stdout
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        assert (m / "hello").read_text() == "persistent"


def test_snapshot_then_write_then_restore_gives_the_old_data(
    backend: LocalBackend, tmp_path: Path
) -> None:
    backend.create("db", 64 * MIB, "ext4")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "row").write_text("before")
    snap = backend.snapshot("db", "s-1")
    assert (snap.id, snap.volume_id, snap.size_bytes) == ("s-1", "db", 64 * MIB)
    with pytest.raises(Conflict):
        backend.snapshot("db", "s-1")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "row").write_text("after")
        (m / "new").write_text("x")
    assert [s.id for s in backend.snapshots("db")] == ["s-1"]
    restored = backend.restore("db", "s-1")
    assert restored.size_bytes == 64 * MIB and restored.fs == "ext4"
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        assert (m / "row").read_text() == "before"
        assert not (m / "new").exists()
    assert [s.id for s in backend.snapshots("db")] == ["s-1"]  # the snapshot stays
    backend.delete_snapshot("db", "s-1")
    backend.delete_snapshot("db", "s-1")  # idempotent
    assert backend.snapshots("db") == []
    with pytest.raises(NotFound):
        backend.restore("db", "s-1")
    assert leftovers(backend) == []


def test_a_fork_is_independent_of_its_source_both_ways(backend: LocalBackend) -> None:
    backend.create("src", 64 * MIB, "none")
    write_at(path_of(backend, "src"), 0, b"A" * 4096)
    backend.snapshot("src", "s")
    write_at(path_of(backend, "src"), 0, b"B" * 4096)
    fork = backend.clone("src", "fork")
    assert backend.clone("src", "from-snap", "s").size_bytes == 64 * MIB
    assert (fork.size_bytes, fork.fs) == (64 * MIB, "none")
    assert read_at(path_of(backend, "fork"), 0, 4) == b"BBBB"
    assert read_at(path_of(backend, "from-snap"), 0, 4) == b"AAAA"
    write_at(path_of(backend, "fork"), 0, b"F" * 4096)
    assert read_at(path_of(backend, "src"), 0, 4) == b"BBBB"
    write_at(path_of(backend, "src"), 0, b"C" * 4096)
    assert read_at(path_of(backend, "fork"), 0, 4) == b"FFFF"
    assert read_at(path_of(backend, "from-snap"), 0, 4) == b"AAAA"
    backend.delete("src")  # a fork outlives its source and the source's snapshots
    assert read_at(path_of(backend, "from-snap"), 0, 4) == b"AAAA"
    with pytest.raises(Conflict):
        backend.clone("fork", "from-snap")
    with pytest.raises(NotFound):
        backend.clone("fork", "other", "no-such-snapshot")


def test_an_ext4_fork_mounts_with_its_sources_files(backend: LocalBackend, tmp_path: Path) -> None:
    backend.create("db", 64 * MIB, "ext4")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "f").write_text("data")
    assert backend.clone("db", "preview").fs == "ext4"
    with mounted(path_of(backend, "preview"), tmp_path / "p") as m:
        assert (m / "f").read_text() == "data"


def test_snapshots_and_forks_of_a_written_volume_share_its_extents(
    backend: LocalBackend,
) -> None:
    backend.create("big", 2 * GIB, "none")
    chunk = os.urandom(MIB)
    fd = os.open(path_of(backend, "big"), os.O_WRONLY)
    try:
        for i in range(1024):  # 1 GiB, one MiB in every two
            os.pwrite(fd, chunk, 2 * i * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert GIB <= backend.info("big").used_bytes < GIB + MIB  # and the file's extent map
    before = shutil.disk_usage(backend.data).used
    snap = backend.snapshot("big", "s")
    fork = backend.clone("big", "fork")
    fork2 = backend.clone("big", "fork2", "s")
    grew = shutil.disk_usage(backend.data).used - before
    assert grew < 16 * MIB, grew
    # Each uses only what it does not share: ~0 now (the source counts the shared extents).
    assert snap.used_bytes == fork.used_bytes == fork2.used_bytes == 0
    assert GIB <= backend.info("big").used_bytes < GIB + MIB
    assert read_at(path_of(backend, "fork"), 1022 * MIB, MIB) == chunk
    # what changes afterwards is all a fork takes
    write_at(path_of(backend, "fork"), 0, os.urandom(8 * MIB))
    assert shutil.disk_usage(backend.data).used - before < 32 * MIB
    assert 8 * MIB <= backend.info("fork").used_bytes < 9 * MIB
    assert backend.info("fork2").used_bytes == 0  # a fork of a fork-free snapshot: still shared


def test_grow_keeps_the_data_and_the_ext4_sees_the_new_size(
    backend: LocalBackend, tmp_path: Path
) -> None:
    backend.create("db", 64 * MIB, "ext4")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "keep").write_text("me")
        small = os.statvfs(m).f_blocks * os.statvfs(m).f_frsize
    grown = backend.grow("db", 256 * MIB)
    assert grown.size_bytes == 256 * MIB and os.path.getsize(path_of(backend, "db")) == 256 * MIB
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        assert (m / "keep").read_text() == "me"
        big = os.statvfs(m).f_blocks * os.statvfs(m).f_frsize
    assert small < 64 * MIB < 200 * MIB < big <= 256 * MIB
    assert backend.grow("db", 256 * MIB).size_bytes == 256 * MIB  # the same size: nothing
    with pytest.raises(Invalid, match="not shrink"):
        backend.grow("db", 128 * MIB)
    backend.create("raw", 32 * MIB, "none")
    write_at(path_of(backend, "raw"), 0, b"r" * 4096)
    assert backend.grow("raw", 64 * MIB).size_bytes == 64 * MIB
    assert read_at(path_of(backend, "raw"), 0, 4) == b"rrrr"
    assert leftovers(backend) == []


def written_sparsely(b: LocalBackend, volume_id: str) -> None:
    """10 MiB of data in a 1 GiB volume: ten 1 MiB pieces, a page of zeros inside one."""
    path = path_of(b, volume_id)
    for i in range(10):
        write_at(path, i * 97 * MIB + 4096 * i, os.urandom(MIB))
    write_at(path, 5 * 97 * MIB + 4096 * 5 + 8192, bytes(4096))


def test_export_then_import_is_the_same_volume_byte_for_byte_and_sparse_on_the_wire(
    backend: LocalBackend,
) -> None:
    backend.create("src", GIB, "none")
    written_sparsely(backend, "src")
    chunks = list(backend.export("src"))
    assert max(len(c) for c in chunks) <= MIB
    wire = sum(len(c) for c in chunks)
    assert 10 * MIB - 4096 <= wire < 10 * MIB + 64 * 1024, wire
    copy = backend.import_("copy", iter(chunks), max_bytes=GIB)
    assert (copy.size_bytes, copy.fs) == (GIB, "none")
    assert sha(path_of(backend, "copy")) == sha(path_of(backend, "src"))
    assert copy.used_bytes <= 10 * MIB  # sparse on arrival too
    assert leftovers(backend) == []


def test_an_ext4_volume_and_a_snapshot_export_as_they_were(
    backend: LocalBackend, tmp_path: Path
) -> None:
    backend.create("db", 128 * MIB, "ext4")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "v").write_text("one")
    backend.snapshot("db", "s")
    with mounted(path_of(backend, "db"), tmp_path / "m") as m:
        (m / "v").write_text("two")
    backend.import_("from-snap", backend.export("db", "s"), max_bytes=GIB)
    backend.import_("from-vol", backend.export("db"), max_bytes=GIB)
    assert backend.info("from-snap").fs == "ext4"
    assert sha(path_of(backend, "from-snap")) == sha(str(backend.data / "snapshots/db/s"))
    with mounted(path_of(backend, "from-snap"), tmp_path / "m") as m:
        assert (m / "v").read_text() == "one"
    with mounted(path_of(backend, "from-vol"), tmp_path / "m") as m:
        assert (m / "v").read_text() == "two"
    # a stream abandoned halfway leaves nothing behind
    stream = backend.export("db")
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert leftovers(backend) == []


def image_of(b: LocalBackend) -> bytes:
    b.create("img", 64 * MIB, "none")
    write_at(path_of(b, "img"), 3 * MIB, os.urandom(2 * MIB))
    return b"".join(b.export("img"))


def record(offset: int, data: bytes) -> bytes:
    head = struct.pack(">QI", offset, len(data))
    return local.RECORD.pack(offset, len(data), hashlib.sha256(head + data).digest()) + data


def test_a_corrupted_truncated_or_oversize_image_is_refused_and_leaves_nothing(
    backend: LocalBackend,
) -> None:
    image = image_of(backend)
    header = local.HEADER.size
    flipped = bytearray(image)
    flipped[header + local.RECORD.size + 1000] ^= 1
    head = local.HEADER.pack(local.MAGIC, 1, 0, 64 * MIB, b"none")
    beyond = record(64 * MIB - 4096, b"x" * 8192)  # a valid digest, past the end
    backwards = record(8192, b"x" * 4096) + record(0, b"y" * 4096)
    bad_trailer = local.RECORD.pack(local.END, 0, bytes(32))
    cases = {
        "fails its digest": bytes(flipped),
        "truncated": image[: len(image) // 2],
        "truncated: it ends inside a record's head": image[: -local.RECORD.size + 3],
        "trailer's digest": image[:-32] + bytes(32),
        "bytes follow its trailer": image + b"\0",
        "bad magic": b"NOTHUTCH" + image[8:],
        "version 2": image[:8] + struct.pack(">I", 2) + image[12:],
        "beyond the volume's": head + beyond + bad_trailer,
        "before the previous one": head + backwards + bad_trailer,
        "beyond the 33554432 allowed": image,
        "ends inside its header": image[:10],
    }
    for message, data in cases.items():
        max_bytes = 32 * MIB if "allowed" in message else GIB
        # in small pieces: a reader must not count on records arriving whole
        pieces = (data[i : i + 777] for i in range(0, len(data), 777))
        with pytest.raises(Invalid, match=message):
            backend.import_("bad", pieces, max_bytes=max_bytes)
        assert [v.id for v in backend.volumes()] == ["img"], message
        assert leftovers(backend) == [], message
    # the same bytes, whole and in order, are accepted
    assert backend.import_("good", [image], max_bytes=GIB).size_bytes == 64 * MIB


def test_volumes_never_promise_more_than_the_pool_holds(root: Path) -> None:
    b = LocalBackend(root, pool_bytes=2 * GIB)
    promised, total = b.capacity()
    assert promised == 0 and GIB < total <= 2 * GIB
    b.create("a", GIB, "none")
    with pytest.raises(NoCapacity, match="promised"):
        b.create("b", GIB, "none")
    with pytest.raises(NoCapacity):
        b.clone("a", "b")
    with pytest.raises(NoCapacity):
        b.grow("a", 2 * GIB)
    with pytest.raises(NoCapacity):
        b.import_("b", b.export("a"), max_bytes=2 * GIB)
    write_at(path_of(b, "a"), 0, os.urandom(MIB))
    b.snapshot("a", "s")  # promises what the snapshot holds: 1 MiB
    assert b.capacity()[0] == GIB + MIB
    assert [v.id for v in b.volumes()] == ["a"] and leftovers(b) == []
    b.delete("a")
    assert b.capacity()[0] == 0
    b.create("b", GIB, "none")


def test_a_restarted_backend_reuses_the_pool_and_a_remounted_one_is_not_reformatted(
    backend: LocalBackend, root: Path
) -> None:
    backend.create("keep", 64 * MIB, "ext4")
    write_at(path_of(backend, "keep"), 32 * MIB, b"k" * 4096)
    backend.snapshot("keep", "s")
    (backend.data / "volumes" / ".tmp-crashed").write_bytes(b"half")  # a crash halfway
    (backend.data / "snapshots" / "keep" / ".tmp-crashed").write_bytes(b"half")
    again = LocalBackend(root)
    assert again.data == backend.data
    assert [v.id for v in again.volumes()] == ["keep"] and again.info("keep").fs == "ext4"
    assert leftovers(again) == []
    unmount_pool(root)  # the node rebooted
    assert not os.path.ismount(root / "pool")
    third = LocalBackend(root, pool_bytes=GIB)  # another size is no reason to format it
    assert [v.id for v in third.volumes()] == ["keep"]
    assert [s.id for s in third.snapshots("keep")] == ["s"]
    assert read_at(path_of(third, "keep"), 32 * MIB, 4) == b"kkkk"
    assert third.capacity()[1] > 4 * GIB


def test_a_root_that_can_reflink_is_used_as_it_is(backend: LocalBackend) -> None:
    inner = LocalBackend(backend.data / "node-on-xfs")
    assert inner.data == backend.data / "node-on-xfs"
    assert not (inner.data / "pool").exists()
    inner.create("v", 64 * MIB, "none")
    inner.snapshot("v", "s")
    assert inner.clone("v", "w", "s").size_bytes == 64 * MIB


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".tmp-x", "-a", "A", "a.b", "a" * 65, "a\n"])
def test_bad_ids_are_refused_and_unknown_ones_not_found(backend: LocalBackend, bad: str) -> None:
    backend.create("v", 32 * MIB, "none")
    backend.snapshot("v", "s")
    calls: list[Callable[[], object]] = [
        lambda: backend.create(bad, 32 * MIB, "none"),
        lambda: backend.info(bad),
        lambda: backend.delete(bad),
        lambda: backend.grow(bad, 64 * MIB),
        lambda: backend.snapshot("v", bad),
        lambda: backend.snapshot(bad, "s2"),
        lambda: backend.delete_snapshot("v", bad),
        lambda: backend.snapshots(bad),
        lambda: backend.restore("v", bad),
        lambda: backend.clone("v", bad),
        *(  # no snapshot id: the volume itself
            [lambda: backend.clone("v", "w", bad), lambda: backend.export("v", bad)] if bad else []
        ),
        lambda: backend.import_(bad, iter([]), GIB),
        lambda: backend.attach_source(bad),
    ]
    for call in calls:
        with pytest.raises(Invalid, match=r"bad (volume|snapshot) id"):
            call()
    unknown: list[Callable[[], object]] = [
        lambda: backend.info("nope"),
        lambda: backend.snapshots("nope"),
        lambda: backend.snapshot("nope", "s"),
        lambda: backend.restore("v", "nope"),
        lambda: backend.export("v", "nope"),
        lambda: backend.attach_source("nope"),
        lambda: backend.grow("nope", 64 * MIB),
    ]
    for call in unknown:
        with pytest.raises(NotFound):
            call()
    assert [v.id for v in backend.volumes()] == ["v"]
