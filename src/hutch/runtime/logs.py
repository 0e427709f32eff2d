"""Bounded logs on disk: a ring of two files, so a flood from a hostile guest costs a fixed size.

`NAME` holds the newest records and `NAME.1` the ones before; when `NAME` passes half the bound it
replaces `NAME.1`. Disk use stays under the bound plus one record, and the newest half of the
bound is always kept. Records are binary so any byte the workload writes survives:
`u8 stream, 3 bytes zero, u32 length, u64 time_ns` then the data.
"""

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from hutch.model.sandbox import LogRecord, Stream

RECORD = struct.Struct(">B3xIQ")
MAX_RECORD = 1 << 20
_STREAMS = {Stream.STDOUT: 1, Stream.STDERR: 2}
_BY_CODE = {v: k for k, v in _STREAMS.items()}
MIN_BOUND = 16 << 10


class LogWriter:
    """Appends records; one writer per log (the process watching the sandbox)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._half = max(max_bytes, MIN_BOUND) // 2
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: Stream, data: bytes, time_ns: int | None = None) -> None:
        if not data:
            return
        if self._size >= self._half:
            self._rotate()
        record = RECORD.pack(_STREAMS[stream], len(data), time_ns or time.time_ns()) + data
        os.write(self._fd, record)  # one write: readers never see half a header
        self._size += len(record)

    def _rotate(self) -> None:
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _records(f: BinaryIO) -> Iterator[LogRecord]:
    """Whole records from the current position; stops before a torn one (rewinding to it)."""
    while True:
        start = f.tell()
        head = f.read(RECORD.size)
        if len(head) < RECORD.size:
            f.seek(start)
            return
        code, length, time_ns = RECORD.unpack(head)
        data = f.read(length) if length <= MAX_RECORD else b""
        if len(data) < length or code not in _BY_CODE:
            f.seek(start)
            return
        yield LogRecord(_BY_CODE[code], data, time_ns)


def read_log(path: Path) -> Iterator[LogRecord]:
    """Every record still on disk, oldest first."""
    for part in (path.with_name(path.name + ".1"), path):
        try:
            with part.open("rb") as f:
                yield from _records(f)
        except FileNotFoundError:
            continue


async def follow_log(
    path: Path, finished: Callable[[], bool], changed: "Pulse | None" = None
) -> AsyncIterator[LogRecord]:
    """Records as they are written, oldest first, until `finished()` and nothing is left.

    Survives rotation: an open file keeps being read after it is renamed to `.1`.
    """
    f: BinaryIO | None = None
    after: BinaryIO | None = None  # the file that replaced `f`, held from when it is seen

    def look() -> None:
        """Hold the file that replaced `f` as soon as it exists: the sandbox's directory may
        be removed (auto_destroy) while a reader is still behind, and an open file survives."""
        nonlocal after
        if f is None or after is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                after = path.open("rb")

    try:
        with contextlib.suppress(FileNotFoundError):
            f = path.open("rb")  # held from the start, for the same reason
        try:
            older: BinaryIO | None = path.with_name(path.name + ".1").open("rb")
        except FileNotFoundError:
            older = None
        if older is not None:
            with older:  # unless it is `f`, renamed since: then `f` gives it all
                if f is None or os.fstat(older.fileno()).st_ino != os.fstat(f.fileno()).st_ino:
                    for record in _records(older):
                        yield record
        while True:
            if f is None:
                try:
                    f = path.open("rb")
                except FileNotFoundError:
                    f = None
            done = finished()  # read before draining: what was written before it counts
            got = False
            if f is not None:
                look()
                for record in _records(f):
                    got = True
                    yield record
                    look()  # a stat: cheap beside a record's relay
                look()
                if after is not None:
                    for record in _records(f):
                        yield record
                    f.close()
                    f, after = after, None
                    continue
            if done and not got:
                return
            if not got:
                await (changed.wait(0.25) if changed else asyncio.sleep(0.1))
    finally:
        for held in (f, after):
            if held is not None:
                held.close()


class Pulse:
    """Wakes every waiter when something changed; waiters also give up after a timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def tail(path: Path, *, records: bool = False, lines: int = 4, limit: int = 600) -> str:
    """The last non-empty lines of a text file (or, with `records`, of a ring log), joined
    with " / " for an error message."""
    try:
        data = b"".join(r.data for r in read_log(path)) if records else path.read_bytes()
    except OSError:
        return ""
    text = data[-4096:].decode(errors="replace").replace("\r", "")
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(kept[-lines:])[-limit:]
