"""A sandbox's scratch disk: the writable layer over its read-only root, as a sparse ext4 file
in the sandbox's directory on the node's disk.

Both runtimes use it (a second virtio-blk disk of the VM; a loop mount under the container's
overlay), so the writable layer is disk, not memory: filling it fails with ENOSPC instead of
being killed as out of memory, and it is not charged to the sandbox's RAM. The file holds only
what the workload writes (and a few MiB of metadata); it goes with the sandbox.
"""

import errno
import os
import shutil
import subprocess
from pathlib import Path

from hutch.model.errors import NoCapacity, Unavailable

FILE_NAME = "scratch"
# Made lazily, so that making it writes almost nothing (~6 ms at any size) and the file stays
# sparse; thrown away with the sandbox, so it needs no journal to survive a crash.
MKFS = [
    "mkfs.ext4", "-q", "-F",
    "-b", "4096",  # mke2fs picks 1 KiB blocks for small file systems: more metadata, slower
    "-i", "16384",  # one inode per 16 KiB at every size (mke2fs's "default" usage type)
    "-m", "0",  # nothing reserved for root: the workload gets the size it asked for
    "-O", "^has_journal",
    "-E", "lazy_itable_init=1,nodiscard",
]  # fmt: skip
# Mounted without zeroing the inode tables later either (every block written fills the file).
MOUNT_OPTIONS = "noinit_itable"


def create(path: Path, size_bytes: int) -> None:
    """Make the sparse file and its ext4 file system. NoCapacity if the disk has not that much
    room free now (other sparse files may still fill it later: the scheduler counts disk)."""
    free = shutil.disk_usage(path.parent).free
    if size_bytes > free:
        raise NoCapacity(
            f"a scratch disk of {size_bytes >> 20} MiB does not fit: {free >> 20} MiB are free "
            f"on the disk of {path.parent}; ask for less"
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size_bytes)
    finally:
        os.close(fd)
    made = subprocess.run([*MKFS, str(path)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        path.unlink(missing_ok=True)
        raise Unavailable(f"cannot make the scratch disk: {made.stderr.strip() or made.stdout}")


def direct_io(path: Path) -> bool:
    """Whether `path` can be read and written with O_DIRECT (bypassing the host's page cache:
    the sandbox caches what it reads in its own memory already)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True
