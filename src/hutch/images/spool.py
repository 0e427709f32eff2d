"""Room on a disk: the free-space floor that images may not take it below, and spooling an
uploaded archive within that floor and a size limit."""

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO

from hutch.model.errors import InsufficientStorage, Invalid, QuotaExceeded
from hutch.model.units import format_bytes


@contextlib.contextmanager
def disk_full_is_insufficient() -> Iterator[None]:
    """A full disk while writing is 507 for the caller, not a crash."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                "this node's disk is full: remove images (hutch image rm) or give it more disk"
            ) from None
        raise


def check_room(where: int | str | os.PathLike[str], incoming: int, floor: int, what: str) -> None:
    """Refuse (507) `incoming` more bytes for `what` where the disk of `where` (a path or an
    open file's descriptor) would be left with less than `floor` free."""
    st = os.fstatvfs(where) if isinstance(where, int) else os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if free - incoming < floor:
        raise InsufficientStorage(
            f"this host keeps {format_bytes(floor)} of its disk free and has "
            f"{format_bytes(free)}, too little for {what}: remove images (hutch image rm) or "
            "give it more disk"
        )


async def spool(
    chunks: AsyncIterator[bytes], out: BinaryIO, *, limit: int, quota: bool, floor: int
) -> int:
    """Write an uploaded archive to `out`: its size. More than `limit` bytes is refused (the
    project's quota when `quota`, else the largest image this host takes), and so is taking the
    disk below `floor`: before the first byte too much is written, not once it all has been."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            if quota:
                raise QuotaExceeded(
                    f"the archive is larger than the project's image quota "
                    f"({format_bytes(limit)}): ask an operator to raise it (hutch quota set "
                    "--images)"
                )
            raise Invalid(
                f"the archive is larger than {format_bytes(limit)}, the most an image may "
                "unpack to here (max_unpacked_bytes)"
            )
        check_room(out.fileno(), len(chunk), floor, f"an archive of {format_bytes(size)} so far")
        out.write(chunk)
    return size
