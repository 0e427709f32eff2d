"""A deterministic newc cpio writer: same inputs, same bytes, same cache key."""

import stat
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # including the file type bits
    data: bytes = b""  # file contents, or a symlink's target


def _header(ino: int, entry: Entry, size: int) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name), 0)
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    return head + name + b"\0" * (-(len(head) + len(name)) % 4)


def write_newc(entries: list[Entry]) -> bytes:
    """The archive for `entries` in order (parents must come before children)."""
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        body = entry.data if stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode) else b""
        out += _header(ino, entry, len(body)) + body + b"\0" * (-len(body) % 4)
    out += _header(0, Entry("TRAILER!!!", 0), 0)
    return bytes(out)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | mode, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())
