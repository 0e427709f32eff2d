"""Files hutch writes for its owner's eyes only (tokens, secrets, keys, identities)."""

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
