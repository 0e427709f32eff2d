"""Exec sessions: a command run inside a running machine, over the controller's WebSocket.

The framing (docs/api.md) is decoded once here; `ExecSession` drives it over a blocking
connection and `AsyncExecSession` over an asyncio one.
"""

import asyncio
import contextlib
import json
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeAlias, TypedDict, TypeVar, Unpack
from urllib.parse import quote, urlencode

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from hutch.client._calls import Endpoint
from hutch.client._core import CHUNK, MachineRef, StreamOptions, argv, build, ref_of
from hutch.client.errors import ApiError, Unavailable, error_for
from hutch.wire.machines import ExecStart

STDIN, STDERR = 0, 2  # the first byte of binary messages (1 is stdout)
MAX_MESSAGE = 16 << 20
Stream: TypeAlias = Literal["stdout", "stderr"]
Chunk: TypeAlias = tuple[Stream, bytes]
CLOSE_STDIN = json.dumps({"type": "close_stdin"})


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How an exec'd command ended (as ExecEnd), with all it wrote."""

    exit_code: int  # 128 + N when signal N ended it
    stdout: bytes
    stderr: bytes
    signal: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class ExecEnd:
    """How an exec'd command ended (the session's last message)."""

    exit_code: int  # 128 + N when signal N ended it
    signal: int  # the signal that ended it, if one did
    error: str  # why it could not run, if it could not


class _ConnectOptions(TypedDict):
    additional_headers: dict[str, str]
    max_size: int
    open_timeout: float


@dataclass(frozen=True, slots=True)
class Opening:
    """What a session connects with: URL, headers, the first message."""

    url: str
    controller: str  # its base URL, for messages
    headers: dict[str, str]
    start: str
    open_timeout: float

    @property
    def options(self) -> _ConnectOptions:
        """websockets' `connect` options (but the URL), the same for both clients."""
        return {
            "additional_headers": self.headers,
            "max_size": MAX_MESSAGE,
            "open_timeout": self.open_timeout,
        }


def opening(
    endpoint: Endpoint, ref: MachineRef, command: Sequence[str], **options: Unpack[StreamOptions]
) -> Opening:
    rows, cols = options.pop("size", None) or (0, 0)
    env = dict(options.pop("env", None) or {})
    start = build(ExecStart, command=argv(command), env=env, rows=rows, cols=cols, **options)
    url = endpoint.url.replace("http", "ws", 1) + f"/v1/machines/{quote(ref_of(ref), safe='')}/exec"
    if endpoint.project:
        url += "?" + urlencode({"project": endpoint.project})
    return Opening(url, endpoint.url, endpoint.headers, start.model_dump_json(), endpoint.timeout)


def attaching(endpoint: Endpoint, ref: MachineRef) -> Opening:
    """An attach session's opening: no first message (the server speaks first)."""
    url = endpoint.url.replace("http", "ws", 1)
    url += f"/v1/machines/{quote(ref_of(ref), safe='')}/attach"
    if endpoint.project:
        url += "?" + urlencode({"project": endpoint.project})
    return Opening(url, endpoint.url, endpoint.headers, "", endpoint.timeout)


def _refused(how: Opening, e: Exception) -> ApiError:
    if isinstance(e, InvalidStatus):
        response = e.response
        return error_for(response.status_code, "", response.body.decode(errors="replace")[:300])
    return Unavailable(f"controller {how.controller} cannot be reached: {e}")


def _decode(message: str | bytes) -> Chunk | ExecEnd:
    """One server message: output, or the end. An error instead of a start raises it."""
    if isinstance(message, bytes):
        return ("stderr" if message[:1] == bytes([STDERR]) else "stdout"), message[1:]
    doc = json.loads(message)
    if doc.get("type") == "error":
        status, title = int(doc.get("status", 500)), str(doc.get("title", ""))
        raise error_for(status, title, str(doc.get("detail", "")), str(doc.get("param") or ""))
    return ExecEnd(
        int(doc.get("exit_code", -1)), int(doc.get("signal") or 0), str(doc.get("error") or "")
    )


def _attached(message: str | bytes) -> dict[str, Any]:
    """An attach session's first message: `attached`, or the refusal (raised)."""
    doc = json.loads(message) if isinstance(message, str) else {}
    if doc.get("type") == "error":
        _decode(message)
    if doc.get("type") != "attached":
        raise Unavailable(f"unexpected first message from the controller: {str(message)[:100]}")
    return dict(doc)


def _signal_message(signal: str) -> str:
    return json.dumps({"type": "signal", "signal": signal})


def _resize_message(rows: int, cols: int) -> str:
    return json.dumps({"type": "resize", "rows": rows, "cols": cols})


def _stdin_frames(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield bytes([STDIN]) + data[i : i + CHUNK]


_ENDED = "the exec session ended without an exit status (the node or controller went away)"


class _Collector:
    """Output gathered into an ExecResult."""

    def __init__(self) -> None:
        self.out = {"stdout": bytearray(), "stderr": bytearray()}

    def add(self, chunk: Chunk) -> None:
        self.out[chunk[0]] += chunk[1]

    def result(self, end: ExecEnd) -> ExecResult:
        return ExecResult(
            end.exit_code,
            bytes(self.out["stdout"]),
            bytes(self.out["stderr"]),
            end.signal,
            end.error,
        )


class _Session:
    """What both sessions track: `end`, set when the exit message came (else None)."""

    end: ExecEnd | None = None

    @property
    def exit_code(self) -> int | None:
        """The command's exit code once it ended (iteration or wait() got there), else None."""
        return self.end.exit_code if self.end else None

    def _ended(self, item: Chunk | ExecEnd) -> Chunk | None:
        if isinstance(item, ExecEnd):
            self.end = item
            return None
        return item


class ExecSession(_Session):
    """A command running in a machine (blocking API). Iterate it for `(stream, bytes)` chunks
    until the command ends; then `exit_code` is set. Close it (or use `with`) when done: a
    session closed early kills its command.

        with client.machines.exec_stream("web", ["sh", "-c", "cat; echo done >&2"],
                                         stdin=True) as s:
            s.write(b"hello\\n")
            s.close_stdin()
            for stream, data in s:
                print(stream, data)      # stdout b'hello\\n', then stderr b'done\\n'
            print(s.exit_code)           # 0
    """

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @staticmethod
    def _connect(how: Opening) -> ClientConnection:
        try:
            connection = sync_connect(how.url, **how.options)
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise _refused(how, e) from None
        # Entered as a context (websockets deprecates bare connections); close() exits it.
        return connection.__enter__()

    @classmethod
    def open(cls, how: Opening) -> "ExecSession":
        session = cls(cls._connect(how))
        try:
            session._ws.send(how.start)
        except ConnectionClosed:
            # A server that refuses (a bad token) may close before the start is sent: its
            # refusal is the message it sent before closing.
            try:
                _decode(session._ws.recv())
            except ConnectionClosed:
                pass
            finally:
                session.close()
            raise Unavailable(_ENDED) from None
        return session

    def __iter__(self) -> Iterator[Chunk]:
        while self.end is None:
            try:
                message = self._ws.recv()
            except ConnectionClosed:
                raise Unavailable(_ENDED) from None
            if (chunk := self._ended(_decode(message))) is not None:
                yield chunk

    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (the session must have been opened with stdin)."""
        for frame in _stdin_frames(data):
            self._ws.send(frame)

    def close_stdin(self) -> None:
        """End the command's stdin (what `cat` waits for)."""
        self._ws.send(CLOSE_STDIN)

    def signal(self, signal: str = "SIGTERM") -> None:
        """Send a signal (a name like "SIGINT", or a number) to the command."""
        self._ws.send(_signal_message(signal))

    def resize(self, rows: int, cols: int) -> None:
        """Tell the command's terminal (a session opened with `tty`) its new size."""
        self._ws.send(_resize_message(rows, cols))

    def wait(self) -> int:
        """Read to the end (discarding output not iterated yet); the exit code."""
        for _ in self:
            pass
        assert self.end is not None
        return self.end.exit_code

    def feed(self, data: bytes) -> None:
        """Write `data` then close stdin; a command that ended meanwhile is not an error."""
        with contextlib.suppress(ConnectionClosed):
            self.write(data)
            self.close_stdin()

    def collect(self, stdin: bytes | None = None) -> ExecResult:
        """Feed `stdin` (from a thread, so a command echoing it never blocks on us) and
        gather all output until the command ends."""
        if stdin is not None:
            threading.Thread(target=self.feed, args=(stdin,), daemon=True).start()
        gathered = _Collector()
        for chunk in self:
            gathered.add(chunk)
        assert self.end is not None
        return gathered.result(self.end)

    def close(self) -> None:
        self._ws.__exit__(None, None, None)

    def __enter__(self) -> "ExecSession":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncExecSession(_Session):
    """A command running in a machine (asyncio API): ExecSession's methods, awaited, and
    `async for stream, data in session`.

        async with client.machines.exec_stream("web", ["sh", "-c", "cat"], stdin=True) as s:
            await s.write(b"hello\\n")
            await s.close_stdin()
            async for stream, data in s:
                print(stream, data)
            print(s.exit_code)
    """

    def __init__(self, ws: AsyncConnection) -> None:
        self._ws = ws

    @staticmethod
    async def _connect(how: Opening) -> AsyncConnection:
        try:
            return await async_connect(how.url, **how.options)
        except (OSError, TimeoutError, InvalidHandshake) as e:
            raise _refused(how, e) from None

    @classmethod
    async def open(cls, how: Opening) -> "AsyncExecSession":
        ws = await cls._connect(how)
        session = cls(ws)
        try:
            await ws.send(how.start)
        except ConnectionClosed:
            try:  # the refusal sent before closing, as in ExecSession.open
                _decode(await ws.recv())
            except ConnectionClosed:
                pass
            finally:
                await session.close()
            raise Unavailable(_ENDED) from None
        return session

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        while self.end is None:
            try:
                message = await self._ws.recv()
            except ConnectionClosed:
                raise Unavailable(_ENDED) from None
            if (chunk := self._ended(_decode(message))) is not None:
                yield chunk

    async def write(self, data: bytes) -> None:
        for frame in _stdin_frames(data):
            await self._ws.send(frame)

    async def close_stdin(self) -> None:
        await self._ws.send(CLOSE_STDIN)

    async def signal(self, signal: str = "SIGTERM") -> None:
        await self._ws.send(_signal_message(signal))

    async def resize(self, rows: int, cols: int) -> None:
        await self._ws.send(_resize_message(rows, cols))

    async def wait(self) -> int:
        async for _ in self:
            pass
        assert self.end is not None
        return self.end.exit_code

    async def feed(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.write(data)
            await self.close_stdin()

    async def collect(self, stdin: bytes | None = None) -> ExecResult:
        feeder = asyncio.ensure_future(self.feed(stdin)) if stdin is not None else None
        gathered = _Collector()
        try:
            async for chunk in self:
                gathered.add(chunk)
        finally:
            if feeder is not None:
                feeder.cancel()
        assert self.end is not None
        return gathered.result(self.end)

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> "AsyncExecSession":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


class AttachSession(ExecSession):
    """Attached to a machine's main process (blocking API; `Machines.attach`): `write()` to
    its stdin, `close_stdin()`, `resize()` its terminal, `signal()` it; `wait()` (or
    iterating, which yields nothing) returns when it ends, with its exit code. Its output is
    the machine's log (`Machines.logs(follow=True)`). Closing the session leaves the machine
    running, its stdin open for the next one."""

    tty = False  # the main process has a terminal (the machine was created with tty)
    stdin = False  # its stdin is open for writing

    @classmethod
    def open(cls, how: Opening) -> "AttachSession":
        session = cls(cls._connect(how))
        try:
            first = _attached(session._ws.recv())
        except ConnectionClosed:
            session.close()
            raise Unavailable(_ENDED) from None
        except BaseException:
            session.close()
            raise
        session.tty, session.stdin = bool(first.get("tty")), bool(first.get("stdin"))
        return session

    def __enter__(self) -> "AttachSession":
        return self


class AsyncAttachSession(AsyncExecSession):
    """AttachSession's methods, awaited (`AsyncMachines.attach`)."""

    tty = False
    stdin = False

    @classmethod
    async def open(cls, how: Opening) -> "AsyncAttachSession":
        session = cls(await cls._connect(how))
        try:
            first = _attached(await session._ws.recv())
        except ConnectionClosed:
            await session.close()
            raise Unavailable(_ENDED) from None
        except BaseException:
            await session.close()
            raise
        session.tty, session.stdin = bool(first.get("tty")), bool(first.get("stdin"))
        return session

    async def __aenter__(self) -> "AsyncAttachSession":
        return self


S = TypeVar("S", bound=AsyncExecSession)


class OpeningSession(Generic[S]):
    """`exec_stream`'s (and `attach`'s) answer on AsyncClient: await it for the session, or
    `async with` it to have the session closed at the end."""

    def __init__(self, opener: Callable[[], Awaitable[S]]) -> None:
        self._opener = opener
        self._session: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._open().__await__()

    async def _open(self) -> S:
        return await self._opener()

    async def __aenter__(self) -> S:
        self._session = await self._opener()
        return self._session

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
