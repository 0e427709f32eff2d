"""mount(2) and umount2(2) for the container runtime's writable layers (Python has neither)."""

import ctypes
import ctypes.util
import os
from pathlib import Path

from hutch.model.errors import Unavailable

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2

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
