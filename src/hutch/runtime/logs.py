"""Bounded logs on disk: a ring of two files, so a flood from a hostile guest costs a fixed size.

`NAME` holds the newest records and `NAME.1` the ones before; when `NAME` passes half the bound it
replaces `NAME.1`. Disk use stays under the bound plus one record, and the newest half of the
bound is always kept. Records are binary so any byte the workload writes survives:
`u8 stream, 3 bytes zero, u32 length, u64 time_ns` then the data.

Each file starts with a mark (stream code 3): its generation (rotations so far) and how many bytes
of stdout and of stderr were written before it. A reader compares the mark with what it has read
and reports the difference as skipped bytes (a `LogRecord` with `skipped`), so dropping output is
never silent. A follower registers a `Cursor`: the writer then refuses to rotate away a file that
follower has not finished (`write` returns False and the caller holds the data, as a full pipe
does), and, for a while after `hold`, it keeps everything until a first follower comes.
"""

import asyncio
import contextlib
import os
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from hutch.model.sandbox import LogRecord, Stream

RECORD = struct.Struct(">B3xIQ")
MARK = struct.Struct(">QQQ")  # generation, stdout bytes and stderr bytes written before the file
MAX_RECORD = 1 << 20
CHUNK = 64 << 10  # readers join consecutive records of one stream up to this many bytes
_STREAMS = {Stream.STDOUT: 1, Stream.STDERR: 2}
_BY_CODE = {v: k for k, v in _STREAMS.items()}
_MARK_CODE = 3
MIN_BOUND = 16 << 10


class LogWriter:
    """Appends records; one writer per log (the process watching the sandbox)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._half = max(max_bytes, MIN_BOUND) // 2
        self._readers: set[Cursor] = set()
        self._ever_read = False
        self._hold_until = 0.0
        self.on_space: Callable[[], None] = lambda: None  # a reader moved on: writes may fit now
        self._fd = -1
        gen, self.written, current = _resume(path)
        if current and gen >= 0:  # our own file (an earlier host process wrote it): go on
            self.gen = gen
            self._fd = _open_append(path)
            self._size = _size(path)
        else:  # a new log, a rotation cut short, or a file from before marks: a file of our own
            if current:
                os.replace(path, _old(path))
            self.gen = gen + 1 if gen >= 0 else 0
            self._start_file()

    def write(
        self, stream: Stream, data: bytes, time_ns: int | None = None, *, force: bool = False
    ) -> bool:
        """Append a record. False, writing nothing, when that would rotate away a file a
        follower still reads (or, during `hold`, output nobody read yet); `force` drops it."""
        if not data:
            return True
        if self._size >= self._half:
            if not force and self.blocked():
                return False
            os.replace(self.path, _old(self.path))
            os.close(self._fd)
            self.gen += 1
            self._start_file()
        self._append(_STREAMS[stream], data, time_ns)
        self.written[stream] += len(data)
        return True

    def blocked(self) -> bool:
        """Whether rotating now would drop what a reader still needs."""
        if self.gen == 0 or not _old(self.path).exists():
            return False  # nothing would be dropped
        if any(c.gen < self.gen for c in self._readers):
            return True
        return not self._ever_read and time.monotonic() < self._hold_until

    def hold(self, seconds: float) -> None:
        """Keep everything (blocking writes) for `seconds` or until a first follower comes:
        a workload started with someone about to attach must not lose its first output."""
        self._hold_until = time.monotonic() + seconds

    def hold_left(self) -> float:
        return 0.0 if self._ever_read else max(0.0, self._hold_until - time.monotonic())

    def reader(self) -> "Cursor":
        """Register a follower; it starts at the oldest file and must `close` its cursor."""
        self._ever_read = True
        cursor = Cursor(self, self.gen - 1 if _old(self.path).exists() else self.gen)
        self._readers.add(cursor)
        return cursor

    def _start_file(self) -> None:
        self._fd = _open_append(self.path)
        self._size = 0
        mark = MARK.pack(self.gen, self.written[Stream.STDOUT], self.written[Stream.STDERR])
        self._append(_MARK_CODE, mark, None)

    def _append(self, code: int, data: bytes, time_ns: int | None) -> None:
        record = RECORD.pack(code, len(data), time_ns or time.time_ns()) + data
        os.write(self._fd, record)  # one write: readers never see half a header
        self._size += len(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._readers.clear()


class Cursor:
    """Where a follower is: the generation of the file it reads."""

    def __init__(self, writer: LogWriter, gen: int) -> None:
        self._writer = writer
        self.gen = gen

    def at(self, gen: int) -> None:
        if gen > self.gen:
            self.gen = gen
            self._writer.on_space()

    def close(self) -> None:
        if self in self._writer._readers:
            self._writer._readers.discard(self)
            self._writer.on_space()


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _resume(path: Path) -> tuple[int, dict[Stream, int], bool]:
    """The newest file's generation (-1: it has no mark, or there is no file), the bytes
    written per stream up to its end, and whether it is `path` (not `.1`)."""
    written = {Stream.STDOUT: 0, Stream.STDERR: 0}
    for part in (path, _old(path)):
        if not _size(part):
            continue
        gen = -1
        with part.open("rb") as f:
            for code, data in _raw(f):
                if code == _MARK_CODE and len(data) == MARK.size:
                    gen, out, err = MARK.unpack(data)
                    written = {Stream.STDOUT: out, Stream.STDERR: err}
                elif code in _BY_CODE:
                    written[_BY_CODE[code]] += len(data)
        return gen, written, part == path
    return -1, written, False


def _raw(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for code, data, _ in _raw_timed(f):
        yield code, data


def _raw_timed(f: BinaryIO) -> Iterator[tuple[int, bytes, int]]:
    """Whole records from the current position; stops before a torn one (rewinding to it)."""
    while True:
        start = f.tell()
        head = f.read(RECORD.size)
        if len(head) < RECORD.size:
            f.seek(start)
            return
        code, length, time_ns = RECORD.unpack(head)
        data = f.read(length) if length <= MAX_RECORD else b""
        if len(data) < length or (code not in _BY_CODE and code != _MARK_CODE):
            f.seek(start)
            return
        yield code, data, time_ns


def _generation(f: BinaryIO) -> int | None:
    """A file's generation from its mark (None: none yet, or none at all)."""
    f.seek(0)
    head = f.read(RECORD.size + MARK.size)
    f.seek(0)
    if len(head) < RECORD.size + MARK.size or head[0] != _MARK_CODE:
        return None
    return int(MARK.unpack_from(head, RECORD.size)[0])


class _Reading:
    """What a reader has accounted for, per stream: bytes read plus bytes reported skipped."""

    def __init__(self, cursor: "Cursor | None") -> None:
        self.gen = -2
        self.seen = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._cursor = cursor

    def records(self, f: BinaryIO) -> Iterator[LogRecord]:
        """The records `f` holds now, consecutive ones of a stream joined up to CHUNK."""
        return _join(self._records(f))

    def _records(self, f: BinaryIO) -> Iterator[LogRecord]:
        for code, data, time_ns in _raw_timed(f):
            if code == _MARK_CODE:
                if len(data) != MARK.size:
                    continue
                gen, out, err = MARK.unpack(data)
                self.gen = gen
                if self._cursor is not None:
                    self._cursor.at(gen)
                for stream, before in ((Stream.STDOUT, out), (Stream.STDERR, err)):
                    if before > self.seen[stream]:
                        yield LogRecord(stream, b"", time_ns, skipped=before - self.seen[stream])
                        self.seen[stream] = before
                continue
            stream = _BY_CODE[code]
            self.seen[stream] += len(data)
            yield LogRecord(stream, data, time_ns)

    def next_file(
        self, path: Path, held: BinaryIO | None = None
    ) -> tuple[BinaryIO | None, BinaryIO | None]:
        """The oldest file newer than the one read last (files without a mark: `.1` first),
        and a newer one still, held open (None if there is none): the sandbox's directory may
        be removed (auto_destroy) while a reader is behind, and an open file survives. `held`
        is such a file from before; it is given back or closed."""
        found: list[tuple[int, int, BinaryIO]] = []  # (generation, inode, file)
        opened = [(held, -3)] if held is not None else []
        for part, unmarked in ((_old(path), -2), (path, -1)):
            with contextlib.suppress(FileNotFoundError):
                opened.append((part.open("rb"), unmarked))
        for f, unmarked in opened:
            gen = _generation(f)
            gen = unmarked if gen is None else gen
            inode = os.fstat(f.fileno()).st_ino
            if gen > self.gen and all(inode != other for _, other, _ in found):
                found.append((gen, inode, f))
            else:
                f.close()
        found.sort(key=lambda item: item[0])
        for _, _, extra in found[1:-1]:
            extra.close()
        if not found:
            return None, None
        self.gen = max(self.gen, found[0][0])
        return found[0][2], found[-1][2] if len(found) > 1 else None


def _join(records: Iterable[LogRecord]) -> Iterator[LogRecord]:
    held: LogRecord | None = None
    parts: list[bytes] = []
    size = 0
    for record in records:
        if (
            held is not None
            and record.stream is held.stream
            and not record.skipped
            and size + len(record.data) <= CHUNK
        ):
            parts.append(record.data)
            size += len(record.data)
            continue
        if held is not None:
            yield LogRecord(held.stream, b"".join(parts), held.time_ns)
            held = None
        if record.skipped:
            yield record
            continue
        held, parts, size = record, [record.data], len(record.data)
    if held is not None:
        yield LogRecord(held.stream, b"".join(parts), held.time_ns)


class LastLines:
    """The last `lines` lines of the records given to it, counted as `tail -n` does over both
    streams (an unfinished last line is one), in one pass: it keeps only the records those
    lines can reach."""

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self._window: deque[LogRecord] = deque()
        self._newlines = 0  # in the window
        self._open = False  # the window's last data does not end with a newline

    def add(self, record: LogRecord) -> None:
        self._window.append(record)
        if record.data:
            self._newlines += record.data.count(b"\n")
            self._open = not record.data.endswith(b"\n")
        while len(self._window) > 1:  # drop the oldest while the rest still holds the lines
            first = self._window[0].data.count(b"\n")
            if self._newlines - first + self._open < self.lines:
                break
            self._window.popleft()
            self._newlines -= first

    def records(self) -> list[LogRecord]:
        """The records holding the lines (the first one cut where they start)."""
        skip = self._newlines + self._open - self.lines  # lines to leave out
        window = list(self._window)
        if skip <= 0:
            return window
        for index, record in enumerate(window):
            count = record.data.count(b"\n")
            if count < skip:
                skip -= count
                continue
            at = -1
            for _ in range(skip):
                at = record.data.find(b"\n", at + 1)
            rest = record.data[at + 1 :]
            first = [LogRecord(record.stream, rest, record.time_ns)] if rest else []
            return first + window[index + 1 :]
        return []


def read_log(path: Path, tail: int | None = None) -> Iterator[LogRecord]:
    """Every record still on disk, oldest first; what was dropped before them as skipped. With
    `tail`, only the last `tail` lines (read once, as everything else)."""
    reading = _Reading(None)
    last = LastLines(tail) if tail is not None else None
    f, newer = reading.next_file(path)
    while f is not None:
        with f:
            for record in reading.records(f):
                if last is None:
                    yield record
                else:
                    last.add(record)
        f, newer = reading.next_file(path, newer)
    if last is not None:
        yield from last.records()


async def follow_log(
    path: Path,
    finished: Callable[[], bool],
    changed: "Pulse | None" = None,
    cursor: Cursor | None = None,
    tail: int | None = None,
) -> AsyncIterator[LogRecord]:
    """Records as they are written, oldest first, until `finished()` and nothing is left; what
    the ring dropped before the follower read it comes as skipped records. With `tail`, of what
    is there when the follower has caught up, only the last `tail` lines.

    Survives rotation: an open file keeps being read after it is renamed to `.1` (or dropped),
    and the file that replaced it is held open from when it is seen (the sandbox's directory
    may be removed while the follower is behind). With a `cursor` the writer waits for this
    follower instead of dropping what it has not read.
    """
    reading = _Reading(cursor)
    f: BinaryIO | None = None
    after: BinaryIO | None = None  # a file newer than `f`: then `f` is complete

    def look() -> None:
        nonlocal after
        if f is None or after is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                after = path.open("rb")

    last = LastLines(tail) if tail is not None else None  # until the follower caught up
    try:
        while True:
            if f is None:
                f, after = reading.next_file(path, after)
            done = finished()  # read before draining: what was written before it counts
            got = False
            if f is not None:
                look()
                for record in reading.records(f):
                    got = True
                    if last is None:
                        yield record
                    else:
                        last.add(record)
                    look()  # a stat: cheap beside a record's relay
                look()
                if after is not None:  # the writer moved on: what f holds is all it gets
                    for record in reading.records(f):
                        if last is None:
                            yield record
                        else:
                            last.add(record)
                    f.close()
                    f, after = reading.next_file(path, after)
                    continue
            if last is not None and not got:  # caught up: the lines asked for, then what comes
                for record in last.records():
                    yield record
                last = None
            if done and not got:
                return
            if not got:
                await (changed.wait(0.25) if changed else asyncio.sleep(0.1))
    finally:
        for held in (f, after):
            if held is not None:
                held.close()
        if cursor is not None:
            cursor.close()


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
