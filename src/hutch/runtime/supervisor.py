"""Watch one sandbox for this host process: its guest agent connection, logs, exits, exec'd
processes.

A Supervisor is what ties a running sandbox to the driver object that created or re-adopted it.
It holds the sandbox directory's lock, so two host processes never watch the same sandbox; when
the host process dies, the sandbox keeps running and a new Supervisor picks it up (`attach`).
"""

import asyncio
import contextlib
import os
import random
import signal as _signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hutch.model.errors import Conflict, Unavailable
from hutch.model.sandbox import ExitStatus, ProcessSpec, SandboxSpec, SandboxState, Stream
from hutch.runtime.channel import (
    INITIAL_WINDOW,
    MAX_GUEST_PAYLOAD,
    STDIN_WINDOW,
    Connection,
    Frame,
    ProtocolError,
    T,
    decode_exit,
    decode_u32,
    encode_process,
    encode_size,
)
from hutch.runtime.logs import Cursor, LogWriter, Pulse
from hutch.runtime.state import SandboxDir, SandboxRecord

GRANT_BATCH = INITIAL_WINDOW // 4
# Output held while the log waits for its followers: the guest sends no more than its window, so
# more than this means it ignored flow control, and the held output goes to the ring anyway.
MAX_HELD = INITIAL_WINDOW + MAX_GUEST_PAYLOAD
UNKNOWN_EXIT = 255  # exit code reported when the sandbox died without telling us one


@dataclass(frozen=True, slots=True)
class Timeouts:
    # from launch to the guest agent's first answer (TCG boots are slow on busy hosts)
    boot: float = 90.0
    answer: float = 10.0  # for a running guest agent to answer a new connection
    drain: float = 2.0  # after the sandbox's process died, for its last frames to be read
    # How often the sandbox's directory is looked at: once it is gone (its state directory was
    # removed), nothing could ever read its record or logs again, so the sandbox is ended.
    dir_check: float = 2.0


class Host(Protocol):
    """What a supervisor needs from its driver's backend."""

    def oom_killed(self, record: SandboxRecord) -> bool: ...

    def explain_exit(self, record: SandboxRecord, sdir: SandboxDir) -> str: ...

    def saved_exit(self, record: SandboxRecord, sdir: SandboxDir) -> ExitStatus | None: ...

    async def terminate(self, record: SandboxRecord, sdir: SandboxDir) -> None: ...

    async def cleanup(self, record: SandboxRecord, sdir: SandboxDir) -> None: ...


class ProcessInput:
    """What goes into a process in the sandbox: its stdin (within the guest's credit), signals
    and its terminal's size. The main process has one (`Supervisor.main`); an exec'd process
    is one."""

    def __init__(self, sup: "Supervisor", proc_id: int, stdin: bool) -> None:
        self.id = proc_id
        self._sup = sup
        self._stdin_open = stdin
        self._stdin_credit = STDIN_WINDOW
        self._credit_changed = asyncio.Event()
        self._over = False  # the process has exited (or is no longer watched)

    @property
    def stdin_open(self) -> bool:
        return self._stdin_open and not self._over

    async def write(self, data: bytes) -> None:
        """Send bytes to the process's stdin, waiting while the guest has not taken earlier ones."""
        if not self._stdin_open:
            raise Conflict("stdin of this process is closed (or was not requested)")
        view = memoryview(data)
        while view:
            while self._stdin_credit <= 0 and not self._over:
                self._credit_changed.clear()
                await self._credit_changed.wait()
            if self._over:
                raise Conflict("the process has exited")
            n = min(len(view), self._stdin_credit, MAX_GUEST_PAYLOAD)
            self._stdin_credit -= n
            await self._sup.send(T.STDIN, self.id, bytes(view[:n]))
            view = view[n:]

    async def close_stdin(self) -> None:
        if self._stdin_open:
            self._stdin_open = False
            if not self._over:
                await self._sup.send(T.STDIN, self.id, b"")

    async def signal(self, sig: int) -> None:
        if not self._over:
            await self._sup.send(T.SIGNAL, self.id, sig.to_bytes(4, "big"))

    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the process's terminal (without one, nothing happens)."""
        if not self._over:
            await self._sup.send(T.RESIZE, self.id, encode_size(rows, cols))

    # -- fed by the supervisor --

    def _acked(self, payload: bytes) -> None:
        self._stdin_credit += decode_u32(payload)
        self._credit_changed.set()

    def _end(self) -> None:
        self._over = True
        self._credit_changed.set()


class ExecProcess(ProcessInput):
    """A process started inside a running sandbox, with its own stdin, stdout and stderr."""

    def __init__(self, sup: "Supervisor", proc_id: int, stdin: bool) -> None:
        super().__init__(sup, proc_id, stdin)
        self._chunks: asyncio.Queue[tuple[Stream, bytes]] = asyncio.Queue()
        self._open_streams = 2
        self._exit: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self.error = ""

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        """Chunks of stdout and stderr in the order the guest sent them, until both end."""
        while self._open_streams:
            stream, data = await self._chunks.get()
            if not data:
                self._open_streams -= 1
                continue
            await self._sup.grant(self.id, len(data))
            yield stream, data

    async def wait(self, timeout: float | None = None) -> ExitStatus:
        return await asyncio.wait_for(asyncio.shield(self._exit), timeout)

    async def communicate(self, stdin: bytes | None = None) -> tuple[ExitStatus, bytes, bytes]:
        """Feed `stdin` (then close it), collect all output, wait for the exit."""
        out, err = bytearray(), bytearray()

        async def feed() -> None:
            if stdin is not None and self._stdin_open:
                await self.write(stdin)
            await self.close_stdin()

        feeder = asyncio.create_task(feed())
        async for stream, data in self.output():
            (out if stream is Stream.STDOUT else err).extend(data)
        status = await self.wait()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Conflict):
            await feeder
        return status, bytes(out), bytes(err)

    # -- fed by the supervisor --

    def _frame(self, frame: Frame) -> None:
        if frame.type == T.STDOUT:
            self._chunks.put_nowait((Stream.STDOUT, frame.payload))
        elif frame.type == T.STDERR:
            self._chunks.put_nowait((Stream.STDERR, frame.payload))
        elif frame.type == T.ERROR:
            self.error = frame.payload.decode(errors="replace")
        elif frame.type == T.STDIN_ACK:
            self._acked(frame.payload)
        elif frame.type == T.EXIT:
            code, sig, oom = decode_exit(frame.payload)
            self._finish(ExitStatus(code, sig, oom, self.error))

    def _finish(self, status: ExitStatus) -> None:
        if not self._exit.done():
            self._exit.set_result(status)
        for _ in range(self._open_streams):
            self._chunks.put_nowait((Stream.STDOUT, b""))
        self._end()


class Supervisor:
    def __init__(
        self,
        record: SandboxRecord,
        sdir: SandboxDir,
        host: Host,
        *,
        log_max_bytes: int,
        timeouts: Timeouts,
        log_hold: float = 0.0,
    ) -> None:
        self.record = record
        self.dir = sdir
        self._host = host
        self._log_max = log_max_bytes
        self._log_hold = log_hold
        self._timeouts = timeouts
        self.changed = Pulse()  # fired on new log output and on state changes
        self._exited = asyncio.Event()  # the workload's exit (or the sandbox's death) is recorded
        self._ready = asyncio.Event()  # the guest agent has answered this connection
        self._gone = asyncio.Event()  # the host-side process is gone
        self._conn: Connection | None = None
        self._log: LogWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._execs: dict[int, ExecProcess] = {}
        self._fs_requests: dict[int, asyncio.Future[int]] = {}  # FREEZE/THAW awaiting FS_DONE
        # Ids from an earlier host process may still be live in the guest: start elsewhere.
        self._next_exec = random.randrange(2, 1 << 30)
        self._main_error = ""
        self._credit: dict[int, int] = {}
        self._kill_reason = ""
        # The main process's output the log cannot take yet (its followers have not read what a
        # rotation would drop): its window is not granted back, so the workload waits, as on a
        # full pipe, until they read on.
        self._held: deque[tuple[Stream, bytes, int]] = deque()
        self._held_bytes = 0
        self._space = asyncio.Event()
        # Attached clients' way into the main process (stdin, terminal size, signals).
        self.main = ProcessInput(self, 1, record.spec.process.stdin)
        if record.finished:
            self._exited.set()
            self.main._end()

    # -- lifecycle ---------------------------------------------------------------------------

    async def attach(self, *, booting: bool, extra: list[Awaitable[None]] | None = None) -> None:
        """Connect to the guest agent and watch the sandbox's process. Returns without waiting for
        the guest to answer: a booting VM answers when it is up."""
        if self.record.finished:
            return
        ref = self.record.process
        if ref is None:
            raise Unavailable("sandbox has no process to watch")
        try:
            self._conn = await Connection.open(str(self.dir.file("agent.sock")), timeout=10)
        except OSError as e:
            raise Unavailable(f"cannot connect to the sandbox's guest agent: {e}") from e
        self._ready.clear()
        if self.main._over:  # attached again, after a suspend
            self.main = ProcessInput(self, 1, self.record.spec.process.stdin)
        self._log = LogWriter(self.dir.file("stdio.log"), self._log_max)
        self._log.on_space = self._space.set
        self._tasks = [
            asyncio.create_task(self._pump(booting)),
            asyncio.create_task(self._watch(ref.wait())),
            asyncio.create_task(self._release()),
            asyncio.create_task(self._watch_dir()),
            *(asyncio.create_task(_quiet(aw)) for aw in extra or ()),
        ]

    async def detach(self) -> None:
        """Stop watching; the sandbox itself is left as it is."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        if self._log is not None:
            self._write_held(force=True)  # nobody waits for it any more: keep it on disk
            self._log.close()
            self._log = None
        for proc in self._execs.values():
            proc._finish(ExitStatus(UNKNOWN_EXIT, error="the host stopped watching the sandbox"))
        self._execs.clear()
        self.main._end()

    async def start(self) -> None:
        self.mark_started()
        await self.send_run()

    def mark_started(self) -> None:
        """Record the sandbox running (created -> running; Conflict from any other state),
        before its process is started: a crash then is resolved by recover (hello says)."""
        if self.record.state is not SandboxState.CREATED:
            raise Conflict(f"sandbox {self.record.spec.id} is {self.record.state}, not created")
        self.record.state = SandboxState.RUNNING
        self.record.started_at = time.time()
        if self._log is not None and self._log_hold and self.record.spec.hold_output:
            self._log.hold(self._log_hold)  # the follower it was started for comes a moment later
        self.dir.save(self.record)

    async def ready(self) -> None:
        """Wait until the guest agent has answered (a booting guest: once it is up, within the
        boot timeout); Unavailable, saying why, if the sandbox ended first."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._ready, self._exited)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not self._ready.is_set():
            assert self.record.exit is not None
            raise Unavailable(f"sandbox {self.record.spec.id} ended: {self.record.exit.error}")

    def become(self, spec: SandboxSpec) -> None:
        """Take `spec` as the created sandbox's (a template's clone, given its machine)."""
        self.record.spec = spec
        self.main = ProcessInput(self, 1, spec.process.stdin)

    async def send_run(self) -> None:
        spec = self.record.spec
        await self.send(T.RUN, 1, encode_process(spec.process, spec.hostname))

    async def signal_main(self, sig: int) -> None:
        if self.record.state is not SandboxState.RUNNING:
            raise Conflict(f"sandbox {self.record.spec.id} is {self.record.state}, not running")
        await self.send(T.SIGNAL, 1, sig.to_bytes(4, "big"))

    async def exec(self, spec: ProcessSpec, *, unstarted: bool = False) -> ExecProcess:
        """Start `spec` in the running sandbox (with `unstarted`, in a created one too)."""
        started = self.record.state is SandboxState.RUNNING
        if not (started or (unstarted and self.record.state is SandboxState.CREATED)):
            raise Conflict(f"sandbox {self.record.spec.id} is {self.record.state}, not running")
        proc_id = self._next_exec
        self._next_exec += 1
        proc = ExecProcess(self, proc_id, spec.stdin)
        self._execs[proc_id] = proc
        await self.send(T.EXEC, proc_id, encode_process(spec))
        return proc

    async def set_frozen(self, path: str, frozen: bool, timeout: float) -> None:
        """Have the guest agent freeze (FIFREEZE) or thaw the file system mounted at `path` in
        the guest; Unavailable if it refuses or does not answer within `timeout`. A freeze the
        guest agent hears no THAW for ends by itself (FREEZE_MAX_MS in agent.c)."""
        what = f"{'freeze' if frozen else 'thaw'} {path}"
        await self.ask(T.FREEZE if frozen else T.THAW, path.encode(), timeout, what)

    async def ask(
        self,
        type_: T,
        payload: bytes,
        timeout: float,
        what: str,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Send the guest agent a request it answers with FS_DONE (an errno);
        Unavailable, saying it could not `what`, if it refuses or does not answer in time.
        `meanwhile` runs between the request and the wait for its answer (frames it sends
        follow the request)."""
        if self.record.state is SandboxState.SUSPENDED or self.finished:
            raise Conflict(f"sandbox {self.record.spec.id} is {self.record.state}, not running")
        req = self._next_exec
        self._next_exec += 1
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._fs_requests[req] = done
        try:
            await self.send(type_, req, payload)
            if meanwhile is not None:
                await meanwhile()
            err = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise Unavailable(
                f"the guest agent of {self.record.spec.id} did not answer a request to {what} "
                f"within {timeout:g} s"
            ) from None
        finally:
            self._fs_requests.pop(req, None)
        if err:
            raise Unavailable(f"the guest could not {what}: {os.strerror(err)}")

    async def wait(self, timeout: float | None = None) -> ExitStatus:
        await asyncio.wait_for(self._exited.wait(), timeout)
        assert self.record.exit is not None
        return self.record.exit

    async def wait_gone(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._gone.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def finished(self) -> bool:
        return self._exited.is_set()

    @property
    def output_done(self) -> bool:
        """The workload ended and all its output is in the log."""
        return self._exited.is_set() and not self._held

    def log_reader(self) -> Cursor | None:
        """Register a follower of the log: until it closes the cursor, the log keeps what it
        has not read and the workload waits for it."""
        return self._log.reader() if self._log is not None else None

    async def terminate(self, reason: str) -> None:
        """Kill the sandbox now; unless its exit is already known it is recorded as failed with
        `reason`."""
        self._kill_reason = reason
        await self._host.terminate(self.record, self.dir)

    async def send(self, type_: T, proc_id: int, payload: bytes = b"") -> None:
        if self._conn is None:
            raise Conflict(f"sandbox {self.record.spec.id} is not running")
        try:
            await self._conn.send(type_, proc_id, payload)
        except (ConnectionError, OSError) as e:
            raise Conflict(f"sandbox {self.record.spec.id} is no longer reachable: {e}") from e

    async def grant(self, proc_id: int, consumed: int) -> None:
        """Let the guest send `consumed` more bytes of this process's output (batched)."""
        total = self._credit.get(proc_id, 0) + consumed
        if total < GRANT_BATCH:
            self._credit[proc_id] = total
            return
        self._credit[proc_id] = 0
        with contextlib.suppress(Conflict):
            await self.send(T.WINDOW, proc_id, total.to_bytes(4, "big"))

    # -- background work ---------------------------------------------------------------------

    async def _pump(self, booting: bool) -> None:
        conn = self._conn
        assert conn is not None
        limit = self._timeouts.boot if booting else self._timeouts.answer
        try:
            hello = await asyncio.wait_for(conn.hello(), limit)
        except TimeoutError:
            what = "boot" if booting else "answer"
            await self.terminate(f"the guest agent did not {what} within {limit:g} s")
            return
        except (ConnectionError, OSError):
            return  # the process is going away: _watch records why
        self._ready.set()
        if (
            self.record.state is SandboxState.RUNNING
            and not hello.main_started
            and not self.record.spec.template  # which runs no process
        ):
            await self.send_run()  # we crashed between recording the start and sending it
        try:
            while (frame := await conn.recv()) is not None:
                await self._dispatch(frame)
        except ProtocolError as e:
            await self.terminate(f"the guest broke the guest protocol: {e}")
        except (ConnectionError, OSError):
            return

    async def _dispatch(self, frame: Frame) -> None:
        request = self._fs_requests.get(frame.id)
        if request is not None:
            if frame.type == T.FS_DONE and not request.done():
                request.set_result(decode_u32(frame.payload) if len(frame.payload) == 4 else 5)
            return
        if frame.id == 1:
            await self._main_frame(frame)
            return
        proc = self._execs.get(frame.id)
        if proc is None:
            # A process from before this host process attached: nobody can read it any more.
            if frame.type == T.EXIT:
                await self.send(T.EXIT_ACK, frame.id)
            elif frame.type in (T.STDOUT, T.STDERR, T.STARTED):
                await self.send(T.SIGNAL, frame.id, int(_signal.SIGKILL).to_bytes(4, "big"))
            return
        proc._frame(frame)
        if frame.type == T.EXIT:
            del self._execs[frame.id]
            self._credit.pop(frame.id, None)
            await self.send(T.EXIT_ACK, frame.id)

    async def _main_frame(self, frame: Frame) -> None:
        if frame.type in (T.STDOUT, T.STDERR) and frame.payload:
            assert self._log is not None
            stream = Stream.STDOUT if frame.type == T.STDOUT else Stream.STDERR
            if self._held or not self._log.write(stream, frame.payload):
                if not self._held:
                    self._space.set()  # _release learns how long the hold lasts
                self._held.append((stream, frame.payload, time.time_ns()))
                self._held_bytes += len(frame.payload)
                if self._held_bytes <= MAX_HELD:
                    return
                await self.grant(1, self._write_held(force=True))
            else:
                await self.grant(1, len(frame.payload))
            self.changed.fire()
        elif frame.type == T.ERROR:
            self._main_error = frame.payload.decode(errors="replace")
        elif frame.type == T.STDIN_ACK:
            self.main._acked(frame.payload)
        elif frame.type == T.EXIT:
            self.main._end()
            code, sig, oom = decode_exit(frame.payload)
            oom = oom or (sig == _signal.SIGKILL and self._host.oom_killed(self.record))
            failed = bool(self._main_error)
            self.record_exit(ExitStatus(code, sig, oom, self._main_error), failed)
            await self.send(T.EXIT_ACK, 1)  # only now may the guest forget it

    def _write_held(self, force: bool = False) -> int:
        """Move held output into the log while it fits; the bytes moved."""
        moved = 0
        while self._held and self._log is not None:
            stream, data, time_ns = self._held[0]
            if not self._log.write(stream, data, time_ns, force=force):
                break
            self._held.popleft()
            moved += len(data)
        self._held_bytes -= moved
        return moved

    async def _release(self) -> None:
        """Held output goes to the log as followers read on (or the hold ends); only then is
        the guest's window given back."""
        while True:
            self._space.clear()
            if moved := self._write_held():
                self.changed.fire()
                await self.grant(1, moved)
            wait = self._log.hold_left() if self._held and self._log is not None else 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), wait or None)

    async def _watch_dir(self) -> None:
        """End the sandbox once its directory is removed (or replaced): a VM must not outlive
        the only place its record, logs and sockets live."""
        first = _identity(self.dir.path)
        while not self._gone.is_set():
            await asyncio.sleep(self._timeouts.dir_check)
            if first is None or _identity(self.dir.path) != first:
                await self.terminate("its sandbox directory was removed")
                await self._gone.wait()
                await self._host.cleanup(self.record, self.dir)  # its cgroup, its scratch
                return

    def record_exit(self, status: ExitStatus, failed: bool) -> None:
        if self.record.finished:
            return
        self.record.state = SandboxState.FAILED if failed else SandboxState.EXITED
        self.record.exit = status
        self.record.finished_at = time.time()
        with contextlib.suppress(FileNotFoundError):  # its directory was removed under it
            self.dir.save(self.record)
        self._exited.set()
        self.main._end()
        self.changed.fire()
        for proc in self._execs.values():
            proc._finish(ExitStatus(UNKNOWN_EXIT, error="the sandbox stopped"))

    async def _watch(self, gone: Awaitable[None]) -> None:
        await gone
        self._gone.set()
        # The last frames (the EXIT among them) may still be in the socket: let the pump read them.
        pump = self._tasks[0]
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(pump), self._timeouts.drain)
        saved = None if self._kill_reason else self._host.saved_exit(self.record, self.dir)
        if saved is not None:  # the guest powered off with no host to tell (it left just now)
            self.record_exit(saved, failed=False)
        if not self.record.finished:
            reason = self._kill_reason or self._host.explain_exit(self.record, self.dir)
            self.record_exit(ExitStatus(UNKNOWN_EXIT, error=reason), failed=True)
        self.changed.fire()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


async def _quiet(aw: Awaitable[None]) -> None:
    """Side tasks (console copier, QMP events) must never take the supervisor down."""
    with contextlib.suppress(Exception):
        await aw
