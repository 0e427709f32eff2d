"""The local backend: volumes as raw sparse files on the node, snapshots and forks as reflinks.

Layout under the backend's data directory (`root` itself when its file system can reflink,
else `root/pool`, a loop-mounted XFS file system made with `reflink=1` in the sparse file
`root/pool.xfs`):

    volumes/<volume id>                   the volume: a raw file of exactly its size
    snapshots/<volume id>/<snapshot id>   a snapshot: a reflink copy of the volume

A file's file system (`ext4` or `none`) is kept in its extended attribute `user.hutch.fs`, set
before the file takes its name, so that a name never exists without it. Everything is made
under a temporary name (`.tmp-*`), fsynced, then linked or renamed into place: a crash leaves
no half-made volume or snapshot under its name, and the next backend on the same root removes
the temporary files. Snapshots, forks (`clone`), restores and growth are reflink copies
(FICLONE): they take milliseconds and share every extent until one side writes it.

The pool, once made, is never formatted again: a second backend on the same root (the agent
restarted) uses the mounted pool, or mounts the file again. The agent never unmounts it
(running sandboxes hold its files); `unmount_pool` is for tests and benchmarks.

Capacity: the bytes promised (every volume's size, plus every snapshot's allocated bytes, plus
what running exports read) never exceed the size of the data file system less what it keeps
for itself and a margin for its metadata (or `pool_bytes`, when given, if smaller), so sparse
files never overcommit the pool: creating, forking, importing, growing, restoring or
snapshotting beyond that is refused with NoCapacity.

Export format (version 1), a stream of bytes, every integer big-endian:

    header   "HUTCHVOL" (8 bytes) | version u32 = 1 | flags u32 = 0 | size u64 | fs (8 bytes,
             ASCII, NUL-padded: "ext4" or "none")                             32 bytes
    record   offset u64 | length u32 (1..1 MiB) | sha256(offset | length | data) (32 bytes)
             | data (length bytes)                                            44 + length bytes
    ...      records in increasing, non-overlapping offsets, each within size
    trailer  offset u64 = 2**64-1 | length u32 = 0 | sha256 of the whole stream before the
             trailer (header, then each record's 44-byte head; each head's digest covers its
             data, so this covers every byte)                                 44 bytes

Only data is sent: the file's holes (SEEK_DATA/SEEK_HOLE) and its all-zero 4 KiB blocks are
skipped, and read back as zeros. An export is point in time: a volume is exported from a
reflink copy taken when the export starts. `import_` verifies every record and the trailer
and refuses (Invalid) a bad magic or version, a size beyond `max_bytes`, an offset beyond the
size or going backwards, a wrong digest, a truncated stream, or bytes after the trailer; the
half-written volume is removed.
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

from hutch.model.errors import Conflict, Invalid, NoCapacity, NotFound, Unavailable
from hutch.storage.backend import AttachSource, Fs, SnapshotInfo, VolumeInfo

FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source file's extents (btrfs, XFS)
ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # volume and snapshot ids: one path component
FS_XATTR = "user.hutch.fs"
FORK_XATTR = "user.hutch.fork"  # set on a fork: its used bytes are those it does not share
FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, count, -
FIEMAP_EXTENT = struct.Struct("=QQQ2QI3I")  # logical, physical, length, -, flags, -
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
FIEMAP_BATCH = 512  # extents asked for at once
FIEMAP_FLAG_SYNC = 0x1
# What volumes may be promised leaves the file system room for the metadata that grows as they
# fill and share extents: 1/MARGIN_SHARE of it, at least MARGIN_MIN.
MARGIN_SHARE = 64
MARGIN_MIN = 16 << 20
FS_VALUES: tuple[Fs, ...] = ("ext4", "none")
BLOCK = 4096  # sizes are multiples of it; export skips all-zero blocks of it
MIN_BYTES = 16 << 20  # room for ext4's journal
GIB = 1 << 30
TMP = ".tmp-"
POOL_FILE = "pool.xfs"
POOL_DIR = "pool"
# e2fsck and resize2fs on a volume's ext4 (a tenant's craft, maybe) run as this uid and gid
# (nobody: no file of the node's is its own, no hutch sandbox runs as it), for at most this long.
CONFINED_UID = 65534
CONFINED_TIMEOUT_S = 300

# The volume's ext4: made lazily (writing almost nothing, so the file stays sparse), WITH a
# journal (a volume outlives crashes: fsck-free recovery), nothing reserved for root.
MKFS_EXT4 = [
    "mkfs.ext4", "-q", "-F",
    "-b", "4096",
    "-i", "16384",
    "-m", "0",
    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
]  # fmt: skip

MAGIC = b"HUTCHVOL"
VERSION = 1
HEADER = struct.Struct(">8sIIQ8s")
RECORD = struct.Struct(">QI32s")
END = (1 << 64) - 1
MAX_RECORD = 1 << 20
CHUNK = 1 << 20  # bytes read from the file at once
_ZERO = bytes(BLOCK)
_ZERO_CHUNK = bytes(CHUNK)


def reflinks(directory: Path) -> bool:
    """Whether the file system of `directory` can share extents between files (FICLONE)."""
    src = directory / f"{TMP}probe-{uuid.uuid4().hex}"
    dst = directory / f"{TMP}probe-{uuid.uuid4().hex}"
    try:
        src.write_bytes(b"x" * BLOCK)
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS):
            return False
        raise
    else:
        return True
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Unavailable(f"{what}: {argv[0]} failed: {(done.stderr or done.stdout).strip()}")


def _confined(argv: list[str], path: Path, what: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` + [its file] on the file `path` the way a tool parsing a tenant's craft must
    run on the node: as CONFINED_UID (its only way to the file the descriptor it inherits,
    which it reopens through /proc/self/fd: the file is the uid's for the run), with no
    capabilities nor a way to gain any, in network and IPC namespaces of its own, unable to make
    the file larger than it is (RLIMIT_FSIZE), and killed after CONFINED_TIMEOUT_S. A volume's
    ext4 may have been written block by block by root in a micro-VM, or imported: e2fsck and
    resize2fs parse it, and a bug they have must not become the node's root."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.fchown(fd, CONFINED_UID, CONFINED_UID)
        command = [
            "unshare", "--net", "--ipc", "--",
            "prlimit", f"--fsize={size}", "--core=0", "--",
            "setpriv", f"--reuid={CONFINED_UID}", f"--regid={CONFINED_UID}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
            *argv, f"/proc/self/fd/{fd}",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, errors="replace", check=False,
                pass_fds=(fd,), timeout=CONFINED_TIMEOUT_S, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"{what}: {argv[0]} took more than {CONFINED_TIMEOUT_S} s and was stopped"
            ) from None
        if os.fstat(fd).st_size != size:  # what RLIMIT_FSIZE stops, checked all the same
            raise Unavailable(f"{what}: {argv[0]} changed the size of the file")
        return done
    finally:
        with contextlib.suppress(OSError):
            os.fchown(fd, 0, 0)
        os.close(fd)


def _tail(text: str, limit: int = 400) -> str:
    """The end of a tool's output (about a file a tenant may have crafted: bounded)."""
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clone(src: Path, dst: Path, fs: Fs, fork: bool | None = None) -> None:
    """`dst` (a new temporary name) becomes a reflink copy of `src`, its fs attribute set (and
    its fork mark: `fork`, or else `src`'s) and its data and metadata on disk."""
    if fork is None:
        fork = _is_fork(src)
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
            os.setxattr(fd, FS_XATTR, fs.encode())
            if fork:
                os.setxattr(fd, FORK_XATTR, b"1")
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Give a made file its name, refusing an existing one (link is atomic), then drop the
    temporary name and make both durable."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise Conflict(f"{final.name} exists already") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(final.parent)


def _fs_of(path: Path) -> Fs:
    try:
        value = os.getxattr(path, FS_XATTR).decode()
    except OSError:
        return "none"
    return value if value in FS_VALUES else "none"


def _used(st: os.stat_result) -> int:
    return st.st_blocks * 512


def _extents(fd: int, sync: bool = False) -> Iterator[tuple[int, int, int]]:
    """The file's extents (FIEMAP; `sync`: its dirty data written first, so that every extent
    has its place): physical offset, length, flags."""
    start, flag = 0, FIEMAP_FLAG_SYNC if sync else 0
    while True:
        request = bytearray(FIEMAP.size + FIEMAP_BATCH * FIEMAP_EXTENT.size)
        FIEMAP.pack_into(request, 0, start, (1 << 64) - 1 - start, flag, 0, FIEMAP_BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        mapped = FIEMAP.unpack_from(request)[3]
        if not mapped:
            return
        for i in range(mapped):
            logical, physical, length, _, _, flags, *_ = FIEMAP_EXTENT.unpack_from(
                request, FIEMAP.size + i * FIEMAP_EXTENT.size
            )
            yield physical, length, flags
            if flags & FIEMAP_EXTENT_LAST:
                return
            start = logical + length


def _physical_extents(fd: int) -> Iterator[tuple[int, int]]:
    return ((physical, length) for physical, length, _ in _extents(fd, sync=True))


def own_bytes(fd: int) -> int:
    """The bytes of the file's extents that no other file shares (FIEMAP, without the
    FIEMAP_EXTENT_SHARED flag): what deleting it would free."""
    return sum(length for _, length, flags in _extents(fd) if not flags & FIEMAP_EXTENT_SHARED)


def _own(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return own_bytes(fd)
    finally:
        os.close(fd)


def _is_fork(path: Path) -> bool:
    try:
        return os.getxattr(path, FORK_XATTR) == b"1"
    except OSError:
        return False


def pool_mounted(root: Path) -> bool:
    return os.path.ismount(root / POOL_DIR)


def mount_pool(root: Path, pool_bytes: int | None = None) -> Path:
    """The loop-mounted XFS pool of `root`, made if there is none (a sparse `pool.xfs` of
    `pool_bytes`, by default half of the free space of root's file system, at least 1 GiB),
    mounted again if it is not; never formatted twice. Returns the mount point."""
    root.mkdir(parents=True, exist_ok=True)
    mountpoint = root / POOL_DIR
    image = root / POOL_FILE
    with open(root / ".pool.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pool_mounted(root):
            return mountpoint
        if not image.exists():
            size = pool_bytes or max(GIB, shutil.disk_usage(root).free // 2)
            size -= size % BLOCK
            tmp = root / f"{TMP}{POOL_FILE}"
            tmp.unlink(missing_ok=True)
            with open(tmp, "wb") as f:
                f.truncate(size)
            # -K: do not discard (a sparse new file has nothing to discard)
            _run(["mkfs.xfs", "-q", "-K", "-m", "reflink=1", str(tmp)], "cannot make the pool")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, image)  # only a formatted pool has the name
            _fsync_dir(root)
        mountpoint.mkdir(exist_ok=True)
        # discard: what the pool frees is punched out of pool.xfs, back to the node's disk
        _run(
            ["mount", "-t", "xfs", "-o", "loop,discard", str(image), str(mountpoint)],
            "cannot mount the pool",
        )
        return mountpoint


def unmade_capacity(root: Path, pool_bytes: int | None = None) -> tuple[int, int]:
    """(0, the bytes a LocalBackend on `root` would hold), without making it: no directory,
    pool or loop device (a node asked where a volume may go, that never held one)."""
    if pool_mounted(root):
        return 0, shutil.disk_usage(root / POOL_DIR).total
    if (root / POOL_FILE).exists():
        return 0, (root / POOL_FILE).stat().st_size
    probe = root
    while not probe.exists():
        probe = probe.parent
    if reflinks(probe):
        size = shutil.disk_usage(probe).total
        return 0, min(size, pool_bytes) if pool_bytes else size
    size = pool_bytes or max(GIB, shutil.disk_usage(probe).free // 2)
    return 0, size - size % BLOCK


def unmount_pool(root: Path) -> None:
    """Unmount the pool of `root` and detach its loop device (tests, benchmarks: the agent never
    does). Files of the pool still mounted elsewhere (a loop mount of a volume) make it fail."""
    mountpoint = root / POOL_DIR
    if pool_mounted(root):
        _run(["umount", str(mountpoint)], "cannot unmount the pool")
    image = root / POOL_FILE
    if image.exists():  # mount's loop devices detach on umount (autoclear); any other too
        found = subprocess.run(
            ["losetup", "-j", str(image), "-O", "NAME", "-n"],
            capture_output=True,
            text=True,
            check=False,
        )
        for device in found.stdout.split():
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def _check_id(value: str, what: str = "volume") -> None:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise Invalid(
            f"bad {what} id {value!r}: 1 to 64 of a-z, 0-9, '-' and '_', starting with a "
            "letter or digit"
        )


def _check_size(size_bytes: int) -> None:
    if size_bytes < MIN_BYTES or size_bytes % BLOCK:
        raise Invalid(
            f"a volume's size must be at least {MIN_BYTES >> 20} MiB and a multiple of "
            f"{BLOCK} bytes, not {size_bytes}"
        )


class _Reader:
    """Exact reads over an iterable of byte chunks of any size."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()

    def read(self, n: int, what: str) -> bytes:
        if not self._buf:  # the common case: records arrive as they were sent, copy nothing
            chunk = next(self._chunks, None)
            if chunk is None:
                raise Invalid(f"the image is truncated: it ends inside {what}")
            if len(chunk) == n:
                return bytes(chunk)
            self._buf += chunk
        while len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise Invalid(f"the image is truncated: it ends inside {what}")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def at_end(self) -> bool:
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return True
            self._buf += chunk
        return False


def _data_runs(fd: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of each run of non-zero blocks in the file, at most MAX_RECORD each."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole from here on
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        pos = end
        off = start - start % BLOCK
        while off < end:
            n = min(CHUNK, end - off)
            data = os.pread(fd, n, off)
            if len(data) != n:
                raise Unavailable("the volume changed size while being exported")
            if data != (_ZERO_CHUNK if n == CHUNK else bytes(n)):  # some data: its blocks
                run_start = -1
                for b in range(0, n, BLOCK):
                    if data.startswith(_ZERO[: n - b], b):  # an all-zero block (or tail)
                        if run_start >= 0:
                            yield off + run_start, data[run_start:b]
                            run_start = -1
                    elif run_start < 0:
                        run_start = b
                if run_start >= 0:
                    yield off + run_start, data if run_start == 0 else data[run_start:]
            off += n


def export_stream(path: Path, fs: Fs) -> Iterator[bytes]:
    """The export image of the file at `path` (see the module's docstring), in chunks of at
    most 1 MiB."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead
        stream = hashlib.sha256()
        header = HEADER.pack(MAGIC, VERSION, 0, size, fs.encode())
        stream.update(header)
        yield header
        for offset, data in _data_runs(fd, size):
            digest = hashlib.sha256(struct.pack(">QI", offset, len(data)))
            digest.update(data)
            record = RECORD.pack(offset, len(data), digest.digest())
            stream.update(record)
            yield record
            yield data
        yield RECORD.pack(END, 0, stream.digest())
    finally:
        os.close(fd)


def read_header(header: bytes) -> tuple[int, Fs]:
    """An export image's volume size and file system, from its first HEADER.size bytes;
    Invalid if they are not a header this backend writes (the size is not checked)."""
    if len(header) != HEADER.size:
        raise Invalid(f"the image is truncated: it ends inside its header ({len(header)} bytes)")
    magic, version, flags, size, fs_raw = HEADER.unpack(header)
    if magic != MAGIC:
        raise Invalid("not a hutch volume image (bad magic)")
    if version != VERSION or flags != 0:
        raise Invalid(f"a volume image of version {version} (flags {flags}): only 1 is known")
    fs = fs_raw.rstrip(b"\0").decode("ascii", "replace")
    if fs not in FS_VALUES:
        raise Invalid(f"the image's file system {fs!r} is neither ext4 nor none")
    return size, cast(Fs, fs)


def _parse_header(header: bytes, max_bytes: int) -> tuple[int, Fs]:
    """An export image's volume size and file system, from its header."""
    size, fs = read_header(header)
    if size > max_bytes:
        raise Invalid(f"the image's volume is {size} bytes, beyond the {max_bytes} allowed")
    _check_size(size)
    return size, fs


def _import_records(fd: int, reader: _Reader, header: bytes, size: int) -> None:
    """Writes an export image's records (after its `header`) into the file `fd` of `size`."""
    stream = hashlib.sha256(header)
    os.ftruncate(fd, size)
    pos = 0
    while True:
        record = reader.read(RECORD.size, "a record's head")
        offset, length, digest = RECORD.unpack(record)
        if offset == END and length == 0:
            if digest != stream.digest():
                raise Invalid("the image is corrupted: its trailer's digest does not match")
            break
        if length == 0 or length > MAX_RECORD:
            raise Invalid(f"the image is corrupted: a record of {length} bytes")
        if offset < pos or offset + length > size:
            raise Invalid(
                f"the image is corrupted: a record at {offset} (+{length}) is beyond the "
                f"volume's {size} bytes or before the previous one"
            )
        data = reader.read(length, "a record's data")
        check = hashlib.sha256(record[:12])
        check.update(data)
        if check.digest() != digest:
            raise Invalid(f"the image is corrupted: the record at offset {offset} fails its digest")
        stream.update(record)
        if os.pwrite(fd, data, offset) != length:
            raise Unavailable("short write while importing a volume")
        pos = offset + length
    if not reader.at_end():
        raise Invalid("the image is corrupted: bytes follow its trailer")


class LocalBackend:
    """Volumes as raw sparse files under `root` (see the module's docstring)."""

    name = "local"

    def __init__(self, root: Path, pool_bytes: int | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if pool_mounted(root) or (root / POOL_FILE).exists() or not reflinks(root):
            self.data = mount_pool(root, pool_bytes)
            self.limit: int | None = None
        else:
            self.data = root
            self.limit = pool_bytes
        if not reflinks(self.data):
            raise Unavailable(f"{self.data} cannot share extents (FICLONE): no snapshots there")
        self._volumes = self.data / "volumes"
        self._snapshots = self.data / "snapshots"
        for directory in (self._volumes, self._snapshots):  # the node's root's alone
            directory.mkdir(exist_ok=True)
            directory.chmod(0o700)
        self._lock = threading.Lock()
        self._reserved = 0  # promised to operations under way (imports)
        # descriptors of the files exports read: a volume's copy (True, always promised) or a
        # snapshot (False, promised here once deleted)
        self._exports: dict[int, bool] = {}
        self._clean()
        self._overhead = self._measure_overhead()

    # -- paths and bookkeeping

    def _clean(self) -> None:
        """Remove what a crash left half made, and the snapshots of volumes deleted halfway."""
        for p in self._volumes.glob(f"{TMP}*"):
            p.unlink(missing_ok=True)
        for d in self._snapshots.iterdir():
            if not d.is_dir():
                continue
            if not (self._volumes / d.name).exists():
                shutil.rmtree(d, ignore_errors=True)
                continue
            for p in d.glob(f"{TMP}*"):
                p.unlink(missing_ok=True)

    def _volume(self, volume_id: str) -> Path:
        _check_id(volume_id)
        path = self._volumes / volume_id
        if not path.is_file():
            raise NotFound(f"no volume {volume_id} on this node")
        return path

    def _snapshot(self, volume_id: str, snapshot_id: str) -> Path:
        self._volume(volume_id)
        _check_id(snapshot_id, "snapshot")
        path = self._snapshots / volume_id / snapshot_id
        if not path.is_file():
            raise NotFound(f"no snapshot {snapshot_id} of volume {volume_id} on this node")
        return path

    def _tmp(self, directory: Path) -> Path:
        return directory / f"{TMP}{uuid.uuid4().hex}"

    def _promised(self) -> int:
        total = self._reserved
        for fd, own in self._exports.items():  # files exports read: see `export`
            st = os.fstat(fd)
            if own or st.st_nlink == 0:
                total += _used(st)
        for p in self._volumes.iterdir():
            if ID.fullmatch(p.name):
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
        for p in self._snapshots.glob("*/*"):
            if ID.fullmatch(p.name):
                with contextlib.suppress(FileNotFoundError):
                    total += _used(p.stat())
        return total

    def _total(self) -> int:
        """What the volumes may be promised: the file system's size less what it keeps for
        itself (its log, metadata, reserve: measured when the backend is made) and a margin
        for the metadata that grows as volumes fill and share extents."""
        st = os.statvfs(self.data)
        size = st.f_blocks * st.f_frsize
        room = max(0, size - self._overhead - max(MARGIN_MIN, size // MARGIN_SHARE))
        return min(room, self.limit) if self.limit else room

    def _files(self) -> Iterator[Path]:
        """Every volume and snapshot file (not the temporary ones)."""
        yield from (p for p in self._volumes.iterdir() if ID.fullmatch(p.name))
        yield from (p for p in self._snapshots.glob("*/*") if ID.fullmatch(p.name))

    def _measure_overhead(self) -> int:
        """The bytes of the data file system that are not its files' data: in use, less the
        extents of the volumes and snapshots (each shared extent counted once)."""
        st = os.statvfs(self.data)
        used = (st.f_blocks - st.f_bavail) * st.f_frsize
        extents: list[tuple[int, int]] = []
        for path in self._files():
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    extents.extend(_physical_extents(fd))
                finally:
                    os.close(fd)
        data, end = 0, 0
        for start, length in sorted(extents):
            if start + length > end:
                data += start + length - max(start, end)
                end = start + length
        return max(0, used - data)

    @contextlib.contextmanager
    def _reserve(self, n: int, what: str) -> Iterator[None]:
        """Holds `n` more bytes promised while the block runs; NoCapacity if they do not fit."""
        with self._lock:
            promised, total = self._promised(), self._total()
            if promised + n > total:
                raise NoCapacity(
                    f"{what} needs {n >> 20} MiB more: {promised >> 20} of the "
                    f"{total >> 20} MiB this node's volume pool holds are promised already"
                )
            self._reserved += n
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= n

    def _exists(self, volume_id: str) -> None:
        if (self._volumes / volume_id).exists():
            raise Conflict(f"volume {volume_id} exists already")

    def _volume_info(self, volume_id: str, path: Path) -> VolumeInfo:
        """Its used bytes: what it has allocated, shared extents included (those it shares
        with its snapshots, or with its forks: each counted once, here); a fork's, only
        what it does not share (a fresh fork's are ~0; once its source is gone, all)."""
        st = path.stat()
        used = _own(path) if _is_fork(path) else _used(st)
        return VolumeInfo(volume_id, st.st_size, _fs_of(path), used)

    def _snapshot_info(self, volume_id: str, snapshot_id: str, path: Path) -> SnapshotInfo:
        """Its used bytes: only what it does not share (what deleting it would free)."""
        st = path.stat()
        return SnapshotInfo(snapshot_id, volume_id, st.st_size, _own(path))

    # -- volumes

    def create(self, volume_id: str, size_bytes: int, fs: Fs) -> VolumeInfo:
        _check_id(volume_id)
        _check_size(size_bytes)
        if fs not in FS_VALUES:
            raise Invalid(f"a volume's file system is ext4 or none, not {fs!r}")
        self._exists(volume_id)
        with self._reserve(size_bytes, f"a volume of {size_bytes >> 20} MiB"):
            tmp = self._tmp(self._volumes)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.ftruncate(fd, size_bytes)
                    os.setxattr(fd, FS_XATTR, fs.encode())
                finally:
                    os.close(fd)
                if fs == "ext4":
                    _run([*MKFS_EXT4, str(tmp)], f"cannot make volume {volume_id}'s ext4")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                _publish(tmp, self._volumes / volume_id)
            finally:
                tmp.unlink(missing_ok=True)
        return self.info(volume_id)

    def delete(self, volume_id: str) -> None:
        _check_id(volume_id)
        (self._volumes / volume_id).unlink(missing_ok=True)
        shutil.rmtree(self._snapshots / volume_id, ignore_errors=True)
        _fsync_dir(self._volumes)

    def info(self, volume_id: str) -> VolumeInfo:
        return self._volume_info(volume_id, self._volume(volume_id))

    def volumes(self) -> list[VolumeInfo]:
        out = []
        for p in sorted(self._volumes.iterdir()):
            if ID.fullmatch(p.name):
                with contextlib.suppress(FileNotFoundError):
                    out.append(self._volume_info(p.name, p))
        return out

    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """A larger volume, its ext4 grown to fill it (offline: the volume is detached). Made
        on a reflink copy then renamed over the volume: a crash leaves the old one whole."""
        path = self._volume(volume_id)
        _check_size(size_bytes)
        old = path.stat().st_size
        if size_bytes < old:
            raise Invalid(
                f"volume {volume_id} is {old} bytes: it can grow, not shrink to {size_bytes}"
            )
        if size_bytes == old:
            return self.info(volume_id)
        fs = _fs_of(path)
        with self._reserve(size_bytes - old, f"growing volume {volume_id}"):
            tmp = self._tmp(self._volumes)
            try:
                _clone(path, tmp, fs)
                os.truncate(tmp, size_bytes)
                if fs == "ext4":
                    # A tenant may have written this ext4 block by block: checked and grown
                    # by tools _confined to it. resize2fs wants it checked since its last mount.
                    what = f"cannot grow volume {volume_id}'s ext4"
                    check = _confined(["e2fsck", "-f", "-p"], tmp, what)
                    if check.returncode >= 4:  # the volume's fault, not the node's
                        raise Invalid(
                            f"volume {volume_id}'s ext4 has errors e2fsck cannot fix (or it "
                            f"needs more than its own file): {_tail(check.stderr or check.stdout)}"
                        )
                    done = _confined(["resize2fs"], tmp, what)
                    if done.returncode != 0:
                        raise Unavailable(
                            f"{what}: resize2fs failed: {_tail(done.stderr or done.stdout)}"
                        )
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                _fsync_dir(self._volumes)
            finally:
                tmp.unlink(missing_ok=True)
        return self.info(volume_id)

    def attach_source(self, volume_id: str) -> AttachSource:
        return AttachSource("file", str(self._volume(volume_id)))

    def capacity(self) -> tuple[int, int]:
        with self._lock:
            return self._promised(), self._total()

    # -- snapshots and forks

    def snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo:
        path = self._volume(volume_id)
        _check_id(snapshot_id, "snapshot")
        directory = self._snapshots / volume_id
        directory.mkdir(exist_ok=True)
        if (directory / snapshot_id).exists():
            raise Conflict(f"volume {volume_id} has a snapshot {snapshot_id} already")
        with self._reserve(_used(path.stat()), f"a snapshot of volume {volume_id}"):
            tmp = self._tmp(directory)
            try:
                _clone(path, tmp, _fs_of(path))
                _publish(tmp, directory / snapshot_id)
            finally:
                tmp.unlink(missing_ok=True)
        return self._snapshot_info(volume_id, snapshot_id, directory / snapshot_id)

    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> None:
        _check_id(volume_id)
        _check_id(snapshot_id, "snapshot")
        directory = self._snapshots / volume_id
        (directory / snapshot_id).unlink(missing_ok=True)
        if directory.exists():
            _fsync_dir(directory)

    def snapshots(self, volume_id: str) -> list[SnapshotInfo]:
        self._volume(volume_id)
        directory = self._snapshots / volume_id
        if not directory.is_dir():
            return []
        out = []
        for p in sorted(directory.iterdir()):
            if ID.fullmatch(p.name):
                with contextlib.suppress(FileNotFoundError):
                    out.append(self._snapshot_info(volume_id, p.name, p))
        return out

    def restore(self, volume_id: str, snapshot_id: str) -> VolumeInfo:
        """The volume's content (and size) become the snapshot's; the snapshot stays."""
        path = self._volume(volume_id)
        snap = self._snapshot(volume_id, snapshot_id)
        more = max(0, snap.stat().st_size - path.stat().st_size)
        with self._reserve(more, f"restoring volume {volume_id}"):
            tmp = self._tmp(self._volumes)
            try:
                _clone(snap, tmp, _fs_of(path))
                os.replace(tmp, path)
                _fsync_dir(self._volumes)
            finally:
                tmp.unlink(missing_ok=True)
        return self.info(volume_id)

    def clone(self, volume_id: str, new_id: str, snapshot_id: str = "") -> VolumeInfo:
        """A new volume `new_id`, a copy of the volume or of its snapshot (a fork)."""
        source = self._snapshot(volume_id, snapshot_id) if snapshot_id else self._volume(volume_id)
        _check_id(new_id)
        self._exists(new_id)
        fs = _fs_of(self._volumes / volume_id)
        size = source.stat().st_size
        with self._reserve(size, f"a fork of {size >> 20} MiB"):
            tmp = self._tmp(self._volumes)
            try:
                _clone(source, tmp, fs, fork=True)
                _publish(tmp, self._volumes / new_id)
            finally:
                tmp.unlink(missing_ok=True)
        return self.info(new_id)

    # -- export and import

    def export(self, volume_id: str, snapshot_id: str = "") -> Iterator[bytes]:
        """The export image (see the module's docstring) of the volume as it is now (from a
        reflink copy made before this returns), or of one of its snapshots. What the export
        reads stays promised until it ends, as a snapshot is: the volume's copy (NoCapacity if
        it does not fit), a snapshot once it is deleted meanwhile (its blocks are the export's
        then). Else a tenant who holds an export open and deletes or rewrites its volume would
        take pool space no promise counts."""
        if snapshot_id:
            fs = _fs_of(self._volume(volume_id))
            fd = os.open(self._snapshot(volume_id, snapshot_id), os.O_RDONLY | os.O_CLOEXEC)
            with self._lock:
                self._exports[fd] = False
            return self._exporting(fd, fs)
        path = self._volume(volume_id)
        fs = _fs_of(path)
        tmp = self._tmp(self._volumes)
        try:
            _clone(path, tmp, fs)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        finally:
            tmp.unlink(missing_ok=True)  # the descriptor keeps it, and a crash leaves nothing
        with self._lock:
            promised, total, need = self._promised(), self._total(), _used(os.fstat(fd))
            if promised + need <= total:
                self._exports[fd] = True
                return self._exporting(fd, fs)
        os.close(fd)
        raise NoCapacity(
            f"an export of volume {volume_id} holds a copy of its {need >> 20} MiB while it "
            f"runs: {promised >> 20} of the {total >> 20} MiB this node's volume pool holds are "
            "promised already"
        )

    def _exporting(self, fd: int, fs: Fs) -> Iterator[bytes]:
        """The export image of the file open as `fd`; its promise ends with the stream."""
        try:
            yield from export_stream(Path(f"/proc/self/fd/{fd}"), fs)
        finally:
            with self._lock:
                self._exports.pop(fd, None)
            os.close(fd)

    def import_(self, new_id: str, chunks: Iterable[bytes], max_bytes: int) -> VolumeInfo:
        """A new volume `new_id` from an export image; Invalid (and nothing left) if the image
        is bad, truncated, or larger than `max_bytes`."""
        _check_id(new_id)
        self._exists(new_id)
        reader = _Reader(chunks)
        header = reader.read(HEADER.size, "its header")
        size, fs = _parse_header(header, max_bytes)
        with self._reserve(size, f"an imported volume of {size >> 20} MiB"):
            tmp = self._tmp(self._volumes)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    _import_records(fd, reader, header, size)
                    os.setxattr(fd, FS_XATTR, fs.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _publish(tmp, self._volumes / new_id)
            finally:
                tmp.unlink(missing_ok=True)
        return self.info(new_id)
