"""Building a read-only file system image (erofs or ext4) of an unpacked root, without mounting.

Micro-VMs boot from it as a read-only block device. Owners, modes (setuid included), times,
symlinks, hard links and extended attributes are kept as in the tree, so run as root.
"""

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from hutch.model.errors import Invalid, Unavailable

FORMATS = ("erofs", "ext4")
_BLOCK = 4096
_INODE_SIZE = 256
_MIN_EXT4_BYTES = 8 << 20
_EXT4_ATTEMPTS = 3  # the size is an estimate: grow and retry if mke2fs runs out of room
# Disks built for the same output name get the same UUID, so a rebuild is interchangeable.
_UUID_NAMESPACE = uuid.UUID("6f1b9a57-2a4c-4c43-9a0e-0c5d1f7e3b21")


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """What a tree needs on an ext4 file system with 4 KiB blocks."""

    blocks: int  # data, directory, long-symlink and extent-tree blocks
    inodes: int  # distinct inodes (hard links counted once)


def build_root_disk(rootfs: Path, out: Path, fmt: str = "erofs") -> None:
    """Write a read-only `fmt` image of the directory `rootfs` to `out`.

    The image is built in a temporary file next to `out`, synced and renamed into place, so
    `out` is never seen half-written; on failure the temporary file is removed. Raises Invalid
    for an unknown format or a missing tree, Unavailable if the tool is missing or fails.
    """
    if fmt not in FORMATS:
        raise Invalid(f"root disk format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
    if not rootfs.is_dir():
        raise Invalid(f"rootfs {rootfs} is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        disk_uuid = str(uuid.uuid5(_UUID_NAMESPACE, out.name))
        if fmt == "erofs":
            _erofs(rootfs, tmp, disk_uuid)
        else:
            _ext4(rootfs, tmp, disk_uuid)
        # Readable by the (possibly unprivileged) VMM; the image content is not secret from
        # the host, only the live tree's setuid files are dangerous, and a disk runs none.
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def tree_usage(root: Path) -> TreeUsage:
    """Blocks and inodes the tree under `root` needs (symlinks are not followed)."""
    blocks = inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        path = stack.pop()
        dir_bytes = 24  # "." and ".."
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                dir_bytes += 8 + (len(os.fsencode(entry.name)) + 3) // 4 * 4
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                inodes += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISREG(st.st_mode):
                    data = -(-st.st_size // _BLOCK)
                    blocks += data + data // 32768  # an extent block per 128 MiB, roughly
                elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
                    blocks += 1  # shorter targets live in the inode
        blocks += -(-dir_bytes // _BLOCK) + (1 if dir_bytes > _BLOCK else 0)  # + htree index
    return TreeUsage(blocks=blocks, inodes=inodes + 1)


def ext4_geometry(usage: TreeUsage) -> tuple[int, int]:
    """(size in bytes, inode count) for an ext4 image holding a tree of `usage`."""
    inodes = max(usage.inodes * 5 // 4 + 64, 256)
    size = usage.blocks * _BLOCK * 6 // 5 + inodes * _INODE_SIZE + (4 << 20)
    size = max(size, _MIN_EXT4_BYTES)
    return -(-size // (1 << 20)) << 20, inodes


def _erofs(rootfs: Path, tmp: Path, disk_uuid: str) -> None:
    # Uncompressed (no -z): the guest reads it directly and the host page cache shares it.
    # No -T: it would replace every file's mtime, breaking .pyc checks and make-style tools.
    _run(["mkfs.erofs", "--quiet", f"-U{disk_uuid}", str(tmp), str(rootfs)], "erofs-utils")


def _ext4(rootfs: Path, tmp: Path, disk_uuid: str) -> None:
    size, inodes = ext4_geometry(tree_usage(rootfs))
    st = rootfs.stat()
    for attempt in range(_EXT4_ATTEMPTS):
        try:
            _run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-d",
                    str(rootfs),
                    "-L",
                    "hutch-root",
                    "-O",
                    "^has_journal,^resize_inode",  # read-only: neither is of any use
                    "-m",
                    "0",
                    "-b",
                    str(_BLOCK),
                    "-I",
                    str(_INODE_SIZE),
                    "-N",
                    str(inodes),
                    "-U",
                    disk_uuid,
                    "-E",
                    f"root_owner={st.st_uid}:{st.st_gid},hash_seed={disk_uuid}",
                    str(tmp),
                    f"{size >> 10}k",
                ],
                "e2fsprogs",
            )
            break
        except Unavailable as e:
            if attempt + 1 == _EXT4_ATTEMPTS or not _out_of_room(e.message):
                raise
            size, inodes = size * 2, inodes * 2
    # mke2fs -d copies owners but not the root directory's mode and time (e2fsprogs 1.47.0).
    mode = stat.S_IFDIR | stat.S_IMODE(st.st_mode)
    script = f"sif / mode 0{mode:o}\nsif / mtime @{int(st.st_mtime)}\n"
    _run(["debugfs", "-w", "-f", "-", str(tmp)], "e2fsprogs", stdin=script, debugfs=True)


def _out_of_room(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("no space", "could not allocate", "no free space", "inodes"))


def _run(argv: list[str], package: str, stdin: str = "", debugfs: bool = False) -> None:
    tool = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin")
    if tool is None:
        raise Unavailable(f"{argv[0]} is not installed: install {package}")
    try:
        proc = subprocess.run(
            [tool, *argv[1:]], input=stdin.encode(), capture_output=True, check=False
        )
    except OSError as e:
        raise Unavailable(f"cannot run {argv[0]}: {e.strerror}") from None
    errors = proc.stderr.decode(errors="replace").strip().splitlines()
    if debugfs:
        # debugfs exits 0 whatever happens; anything but its banner and echoed commands is an
        # error.
        errors = [
            line
            for line in errors
            if line.strip() and not line.startswith(("debugfs ", "debugfs:"))
        ]
        if errors:
            raise Unavailable(f"debugfs failed: {errors[-1]}")
    if proc.returncode != 0:
        last = errors[-1] if errors else proc.stdout.decode(errors="replace").strip()
        raise Unavailable(f"{argv[0]} failed: {last or f'exit status {proc.returncode}'}")
