"""Files of a saved guest (a suspended sandbox's, a machine snapshot's): copied sparsely, so that
guest RAM or a scratch disk the guest never touched takes no room on the host's disk."""

import os
from pathlib import Path

STATE = "state"  # QEMU's migration stream: device state (and RAM, when it is not in MEMORY)
MEMORY = "memory"  # guest RAM, as the memory-backend file holds it
SCRATCH = "scratch"  # a snapshot's copy of the scratch disk
CHUNK = 8 << 20


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy `src` to the new file `dst`, its holes left holes (SEEK_DATA/SEEK_HOLE)."""
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
                    os.pwrite(dfd, data, off)
                    off += len(data)
                pos = end
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def disk_usage(path: Path) -> int:
    """Bytes the files under `path` take on disk (their allocated blocks)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
