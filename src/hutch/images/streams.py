"""Raw streams that read through another one and look at what passes: the base the image code's
hashing, counting and bounded readers share, and the magic numbers that say how a blob or an
archive is compressed."""

import hashlib
import io
from typing import IO, Any

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Through(io.RawIOBase):
    """Reads `source`, handing each chunk to `seen` before the caller gets it. Subclasses
    override `pull` to change where the bytes come from (or how its errors read) and `seen` to
    count, hash or refuse them."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def pull(self, size: int) -> bytes:
        return self._source.read(size)

    def seen(self, data: bytes) -> None:
        pass

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pull(len(view))
        self.seen(data)
        view[: len(data)] = data
        return len(data)


class Hashing(Through):
    """`source`, with the SHA-256 (`hash`) and the number (`count`) of the bytes read so far."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__(source)
        self.hash = hashlib.sha256()
        self.count = 0

    def seen(self, data: bytes) -> None:
        self.count += len(data)
        self.hash.update(data)
