"""Files hutch writes for its owner's eyes only (tokens, secrets, keys, identities)."""

import ctypes
import os
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Write `path` with mode 0600, atomically: a crash leaves the old file or the new one,
    never half of one (an agent that finds half an identity would join again as a new node)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a temporary file left from before keeps its mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def syncfs(path: Path) -> None:
    """Flush the file system holding `path` (and what it does late: XFS frees a deleted
    file's extents, and unshares what it shared, in the background until then)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()  # no syncfs(2): flush everything, which is slower but as safe
    finally:
        os.close(fd)
