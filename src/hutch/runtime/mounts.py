"""mount(2), umount2(2) and loop devices for the container runtime's root (Python has none)."""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from hutch.model.errors import Unavailable

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
CLONE_NEWNET = 0x40000000
MNT_DETACH = 2
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_CLR_FD = 0x4C01
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4  # the device lets go of its file when the last user (the mount) does
LO_FLAGS_DIRECT_IO = 16  # no second copy of the file system's pages in the host's page cache

# The new mount API (x86_64 numbers; glibc 2.36 has no wrappers for mount_setattr).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    if (
        _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, data.encode())
        != 0
    ):
        err = ctypes.get_errno()
        raise Unavailable(f"mount {fstype} on {target}: {os.strerror(err)}")


def mount_loop(
    image: Path,
    target: Path,
    fstype: str,
    flags: int = 0,
    data: str = "",
    *,
    read_only: bool = False,
    block_size: int = 4096,
) -> None:
    """Mount the file system in the file `image` through a loop device that goes away with the
    mount (however it is unmounted) and does direct I/O to the file where its disk allows;
    `read_only`: the device itself refuses writes (and the mount is read-only); `block_size`:
    the device's logical block size (a file system of smaller blocks cannot be mounted on it)."""
    if read_only:
        flags |= MS_RDONLY

    def use(device: str) -> None:
        mount(device, target, fstype, flags, data)  # closing the loop fd then frees it if not

    flags_ = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    _with_loop(image, flags_, block_size, use)


def attach_loop(image: Path, read_only: bool = False, block_size: int = 512) -> int:
    """A loop device on `image` that stays until `detach_loop` (no mount holds it: a raw
    block device given to a container); its number."""
    taken: list[int] = []
    _with_loop(
        image,
        LO_FLAGS_READ_ONLY if read_only else 0,
        block_size,
        lambda device: taken.append(int(device.removeprefix("/dev/loop"))),
    )
    return taken[0]


def detach_loop(number: int) -> None:
    """Let go of loop device `number`'s file (nothing if it has none)."""
    try:
        fd = os.open(f"/dev/loop{number}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as e:
        if e.errno != errno.ENXIO:  # not bound
            raise Unavailable(f"cannot free /dev/loop{number}: {e.strerror}") from e
    finally:
        os.close(fd)


def _with_loop(image: Path, flags: int, block_size: int, use: Callable[[str], None]) -> None:
    """Bind a free loop device to `image` with `flags` (direct I/O added where it works) and
    call `use` with its path while our descriptor of it is open."""
    read_only = bool(flags & LO_FLAGS_READ_ONLY)
    backing = os.open(image, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    try:
        for _ in range(100):  # another process may configure the free device first: take the next
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            finally:
                os.close(control)
            device = f"/dev/loop{number}"
            loop = os.open(device, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            try:
                if not _configure(loop, backing, flags, block_size):
                    continue
                use(device)
                return
            finally:
                os.close(loop)
        raise Unavailable("no loop device stayed free long enough to take it")
    finally:
        os.close(backing)


def _configure(loop: int, backing: int, base: int, block_size: int) -> bool:
    """Bind the loop device to the file; False if another process took the device first."""
    for flags in (base | LO_FLAGS_DIRECT_IO, base):
        # struct loop_config: fd, block_size, struct loop_info64 (lo_flags is its 9th field), and
        # reserved space.
        info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", 0, 0)
        config = struct.pack("=II", backing, block_size) + info + bytes(64)
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


def user_namespace(host_id: int, size: int) -> int:
    """A descriptor of a new user namespace mapping uids and gids 0..size-1 to host_id.., for
    idmapped mounts (no process stays in it: the descriptor keeps it alive)."""

    def enter() -> None:
        if _libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(126)

    # unshare(CLONE_NEWUSER) needs a single-threaded caller: the forked child, before exec.
    holder = subprocess.Popen(["sleep", "60"], preexec_fn=enter)  # noqa: PLW1509
    try:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(f"0 {host_id} {size}\n")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise Unavailable(f"cannot make a user namespace: {e.strerror}") from e
    finally:
        holder.kill()
        holder.wait()


def bind_idmapped(source: Path, target: Path, userns: int, read_only: bool = False) -> None:
    """Bind `source` (recursively) at `target`, its owners shifted by the mapping of the user
    namespace `userns`: root's files appear owned by the namespace's host root."""
    tree = _libc.syscall(
        SYS_OPEN_TREE, AT_FDCWD, str(source).encode(),
        OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
    )  # fmt: skip
    if tree < 0:
        raise Unavailable(f"open_tree {source}: {os.strerror(ctypes.get_errno())}")
    try:
        # struct mount_attr: attr_set, attr_clr, propagation, userns_fd
        flags = MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if read_only else 0)
        attr = ctypes.create_string_buffer(struct.pack("=4Q", flags, 0, 0, userns), 32)
        if _libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, attr, 32) < 0:
            raise Unavailable(
                f"idmapped mount of {source}: {os.strerror(ctypes.get_errno())} (the kernel or "
                "its file system cannot shift owners: set container_userns = false)"
            )
        if (
            _libc.syscall(
                SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, str(target).encode(), MOVE_MOUNT_F_EMPTY_PATH
            )
            < 0
        ):
            raise Unavailable(f"move_mount to {target}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(tree)


def mount_sysfs_of(netns: Path, target: Path) -> None:
    """A read-only sysfs at `target` whose /sys/class/net is the network namespace at `netns`
    (sysfs shows the namespace of whoever mounts it), for a container that joins a namespace
    it does not own: crun could not mount one there, and falls back to the host's /sys."""
    errors: list[BaseException] = []

    def run() -> None:  # network namespaces are per thread: only this one enters it
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise Unavailable(f"entering {netns}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
            mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name="hutch-sysfs")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def unmount(target: Path) -> None:
    """Detach `target` if it is mounted (lazily: busy files do not keep it in the tree)."""
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise Unavailable(f"umount {target}: {os.strerror(err)}")


def unmount_under(root: Path) -> None:
    """Detach every mount at or below `root`, deepest first: what deletes the tree after this
    never reaches into a file system that is not the tree's own (a volume's data)."""
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].replace("\\040", " ") for line in f}
    inside = (p for p in points if p == str(root) or p.startswith(prefix))
    for point in sorted(inside, reverse=True):
        unmount(Path(point))


def is_mounted(target: Path) -> bool:
    wanted = str(target)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == wanted:
                return True
    return False
