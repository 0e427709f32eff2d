"""mount(2), umount2(2) and loop devices for the container runtime's root (Python has none)."""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from pathlib import Path

from hutch.model.errors import Unavailable

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4  # the device lets go of its file when the last user (the mount) does
LO_FLAGS_DIRECT_IO = 16  # no second copy of the file system's pages in the host's page cache

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    if (
        _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode())
        != 0
    ):
        err = ctypes.get_errno()
        raise Unavailable(f"mount {fstype} on {target}: {os.strerror(err)}")


def mount_loop(image: Path, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    """Mount the file system in the file `image` through a loop device that goes away with the
    mount (however it is unmounted) and does direct I/O to the file where its disk allows."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(100):  # another process may configure the free device first: take the next
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            finally:
                os.close(control)
            device = f"/dev/loop{number}"
            loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            try:
                if not _configure(loop, backing):
                    continue
                mount(device, target, fstype, flags, data)  # closing `loop` below frees it if not
                return
            finally:
                os.close(loop)
        raise Unavailable("no loop device stayed free long enough to take it")
    finally:
        os.close(backing)


def _configure(loop: int, backing: int) -> bool:
    """Bind the loop device to the file; False if another process took the device first."""
    for flags in (LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, LO_FLAGS_AUTOCLEAR):
        # struct loop_config: fd, block_size, struct loop_info64 (lo_flags is its 9th field), and
        # reserved space.
        info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", 0, 0)
        config = struct.pack("=II", backing, 4096) + info + bytes(64)
        try:
            fcntl.ioctl(loop, LOOP_CONFIGURE, config)
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            if e.errno != errno.EINVAL or not flags & LO_FLAGS_DIRECT_IO:
                raise Unavailable(f"cannot set up a loop device: {e.strerror}") from e
        else:
            return True
    return False


def unmount(target: Path) -> None:
    """Detach `target` if it is mounted (lazily: busy files do not keep it in the tree)."""
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise Unavailable(f"umount {target}: {os.strerror(err)}")


def is_mounted(target: Path) -> bool:
    wanted = str(target)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == wanted:
                return True
    return False
