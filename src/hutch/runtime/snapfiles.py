"""Files of a saved guest (a suspended sandbox's, a machine snapshot's): copied sparsely, so that
guest RAM or a scratch disk the guest never touched takes no room on the host's disk."""

import ctypes
import json
import os
from pathlib import Path

from hutch.model.errors import InsufficientStorage, Invalid
from hutch.model.sandbox import Resources, SandboxSpec, SnapshotFiles
from hutch.model.units import format_bytes

STATE = "state"  # QEMU's migration stream: device state (and RAM, when it is not in MEMORY)
MEMORY = "memory"  # guest RAM, as the memory-backend file holds it
SCRATCH = "scratch"  # a snapshot's copy of the scratch disk
META = "snapshot.json"  # what a restore must match: resources, root disk; whether a template
CHUNK = 8 << 20
PAGE = 4096
ZERO_PAGE = bytes(PAGE)
# What a save leaves free on the host's disk: other guests' sparse scratch disks grow into it.
FREE_FLOOR = 512 << 20
FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc = ctypes.CDLL(None, use_errno=True)


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy `src` to the new file `dst`, its holes and whole zero pages left holes (SEEK_DATA/
    SEEK_HOLE): a guest's RAM has many (memory it freed), which a restore need not copy back."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(sfd).st_size
            os.ftruncate(dfd, size)
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(sfd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: nothing but holes from here
                    break
                end = os.lseek(sfd, start, os.SEEK_HOLE)
                off = start
                while off < end:  # not copy_file_range: it refuses to cross file systems
                    data = os.pread(sfd, min(CHUNK, end - off), off)
                    if not data:
                        raise OSError(f"copying {src}: it shrank at {off}")
                    _write_data(dfd, data, off)
                    off += len(data)
                pos = end
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _write_data(fd: int, data: bytes, at: int) -> None:
    """Write `data` at offset `at` of `fd` but for its whole zero pages (holes read as zeros)."""
    view = memoryview(data)
    run = -1  # where the run of pages with data being gathered starts
    for page in range(0, len(data), PAGE):
        zero = view[page : page + PAGE] == ZERO_PAGE[: len(view) - page]
        if zero and run >= 0:
            os.pwrite(fd, view[run:page], at + run)
            run = -1
        elif not zero and run < 0:
            run = page
    if run >= 0:
        os.pwrite(fd, view[run:], at + run)


def punch(path: Path) -> None:
    """Free all of `path`'s blocks, its size kept: it reads as zeros (a tmpfs file's memory
    is given back, its mappings stay valid)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size and _libc.fallocate(fd, FALLOC_PUNCH, ctypes.c_long(0), ctypes.c_long(size)):
            err = ctypes.get_errno()
            raise OSError(err, f"punching {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def check_room(where: Path, most: int) -> None:
    """InsufficientStorage unless the disk of `where` has room for `most` bytes of a save and
    FREE_FLOOR more: a guest saved there must not fill the disk other guests write to."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if free - most < FREE_FLOOR:
        raise InsufficientStorage(
            f"saving the guest takes up to {format_bytes(most)}, and this host's disk has "
            f"{format_bytes(free)} free (it keeps {format_bytes(FREE_FLOOR)} free)"
        )


def allocated(path: Path) -> int:
    """Bytes the file `path` takes on its disk."""
    return os.stat(path).st_blocks * 512


def disk_usage(path: Path) -> int:
    """Bytes the files under `path` take on disk (their allocated blocks)."""
    return sum(allocated(p) for p in path.rglob("*") if p.is_file())


def describe(path: Path, spec: SandboxSpec) -> SnapshotFiles:
    """Record, beside a snapshot's files, what it was taken of; the snapshot."""
    res = spec.resources
    meta = {
        "resources": {
            "cpus": res.cpus,
            "memory_mib": res.memory_mib,
            "scratch_mib": res.scratch_mib,
            "pids": res.pids,
        },
        "root_disk": spec.root_disk,
        "root_disk_format": spec.root_disk_format,
        "template": spec.template,
    }
    fd = os.open(path / META, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    return load(path)


def load(path: Path) -> SnapshotFiles:
    """The snapshot in `path`; Invalid if there is none."""
    try:
        meta = json.loads((path / META).read_text())
        return SnapshotFiles(
            path=str(path),
            size_bytes=disk_usage(path),
            resources=Resources(**meta["resources"]),
            root_disk=meta["root_disk"],
            root_disk_format=meta["root_disk_format"],
            template=bool(meta.get("template", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Invalid(f"{path} holds no machine snapshot: {e}") from None


def check_restore(spec: SandboxSpec) -> SnapshotFiles:
    """The snapshot `spec` is restored from; Invalid unless it can be."""
    snap = load(Path(spec.restore_from))
    if spec.resources != snap.resources:
        raise Invalid(
            f"the snapshot in {snap.path} was taken with {snap.resources}: a restore gets "
            f"exactly that, not {spec.resources}"
        )
    if (spec.root_disk, spec.root_disk_format) != (snap.root_disk, snap.root_disk_format):
        raise Invalid(f"the snapshot in {snap.path} was taken on root disk {snap.root_disk}")
    if spec.volumes:
        raise Invalid("a sandbox restored from a snapshot takes no volumes")
    return snap
