"""The runtime driver contract, and the one implementation both runtimes share.

Both runtimes run the guest agent (hutch-agent) as the sandbox's init and talk to it over a unix
socket, so everything above "how is the sandbox started, killed and cleaned up" is common: that
part is a `Backend` (QEMU micro-VM or crun container); the rest is `SandboxDriver`.
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal as _signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hutch.model.errors import (
    Conflict,
    HutchError,
    Invalid,
    NotFound,
    Unavailable,
    Unsupported,
)
from hutch.model.sandbox import (
    Capabilities,
    DiskIO,
    ExitStatus,
    LogRecord,
    ProcessSpec,
    Reading,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    SnapshotFiles,
    Stats,
    validate_sandbox_id,
)
from hutch.runtime import snapfiles, volumes
from hutch.runtime.channel import T, encode_clock, encode_identity, encode_process
from hutch.runtime.logs import follow_log, read_log
from hutch.runtime.procs import ProcessRef
from hutch.runtime.state import SandboxDir, SandboxRecord, check_state_root
from hutch.runtime.supervisor import ExecProcess, ProcessInput, Supervisor, Timeouts

log = logging.getLogger(__name__)

SUSPEND_DIR = "suspend"  # in the sandbox's directory: its saved memory and device state
KILL_GRACE = 5.0  # after SIGKILL through the guest agent, before the sandbox itself is killed
POWER_OFF_GRACE = 3.0  # for an ended sandbox to go by itself before destroy kills it
SETTLE_TIMEOUT = 2.0  # for a guest to freeze a volume before destroy kills it
FROM_TEMPLATE = "from_template"  # in a record's details: restored from a template snapshot
# What a template's clone takes from the machine it starts as; the rest is what it was made as.
MACHINE_FIELDS = ("process", "hostname", "stop_signal", "hold_output")


class RuntimeDriver(Protocol):
    """Runs sandboxes on this host (the containerd/Nomad shape).

    Every method that names a sandbox raises NotFound for an unknown id. Sandboxes outlive the
    driver object: `close` leaves them running, and `recover` in a new driver re-adopts them.
    """

    name: str

    def capabilities(self) -> Capabilities:
        """What this driver can do on this host."""

    def fingerprint(self) -> dict[str, str]:
        """Versions and probe results, for node registration and `hutch sandbox info`."""

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Set up and boot the sandbox; the workload is not started. On failure nothing is left."""

    async def start(self, sandbox_id: str, spec: SandboxSpec | None = None) -> SandboxInfo:
        """Start the workload (created -> running); Conflict from any other state. A template
        runs none: it is running once its guest agent answers. A clone of a template snapshot
        starts as the machine `spec` (its process, hostname, stop signal, output hold; the
        rest must be what it was created with), recorded as its spec; any other sandbox given
        a `spec` is Invalid."""

    async def signal(self, sandbox_id: str, sig: int) -> None:
        """Deliver `sig` to the workload's main process; Conflict unless running."""

    async def stop(
        self, sandbox_id: str, timeout: float = 10.0, sig: int | None = None
    ) -> ExitStatus:
        """Send `sig` (default: the spec's stop signal), wait `timeout`, then kill. After the
        call the sandbox is exited or failed; its process is gone or going."""

    async def destroy(self, sandbox_id: str, force: bool = False) -> None:
        """Remove the sandbox and everything it left on the host: process, cgroup, mounts,
        sockets, files. Conflict if it runs and not `force`. Unknown ids are not an error."""

    async def inspect(self, sandbox_id: str) -> SandboxInfo: ...

    async def spec(self, sandbox_id: str) -> SandboxSpec:
        """What the sandbox was created with (exec inherits its environment)."""

    async def sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox of this runtime on this host: the ones this driver watches, and from
        their records the ones another process watches or no process has re-adopted yet."""

    async def wait(self, sandbox_id: str, timeout: float | None = None) -> ExitStatus:
        """Block until the workload ends; TimeoutError after `timeout` seconds."""

    async def stats(self, sandbox_id: str) -> Stats: ...

    def logs(
        self, sandbox_id: str, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[LogRecord]:
        """The workload's stdout and stderr still in the bounded log (with `tail`, its last
        `tail` lines); with `follow`, until it ends. The log is read once."""

    async def exec(self, sandbox_id: str, spec: ProcessSpec) -> ExecProcess:
        """Start another process in the running sandbox."""

    async def attach(self, sandbox_id: str) -> ProcessInput:
        """The way into the running workload's main process: its stdin (if its spec asked for
        one), its terminal's size (if it has one), signals. Its output stays in the log.
        Conflict unless running."""

    async def recover(self) -> list[SandboxInfo]:
        """Re-adopt sandboxes left by an earlier host process; clean up those that died."""

    async def suspend(self, sandbox_id: str) -> SandboxInfo:
        """Save the running sandbox's memory and device state on this host and end its process
        (running -> suspended): it holds no CPU or memory, keeps its disks, and survives a
        restart of this host process. A `resume` during a suspend cancels it. If it fails the
        sandbox runs on, never half-saved. Unsupported unless `capabilities().suspend`;
        Conflict unless running."""

    async def resume(self, sandbox_id: str) -> SandboxInfo:
        """Continue a suspended sandbox where it was (suspended -> running), its clock set to
        the host's; a resume of a sandbox being suspended cancels the suspend. Conflict unless
        suspended or suspending."""

    async def snapshot(self, sandbox_id: str, dest: Path) -> SnapshotFiles:
        """Capture the running sandbox (memory, devices, scratch disk) into the new directory
        `dest` without ending it (its workload pauses for the copy). On failure `dest` is gone
        and the sandbox runs on. A template's is a template snapshot (`SnapshotFiles.template`).
        Unsupported unless `capabilities().snapshot`; Conflict unless running; Invalid for a
        sandbox with volumes (their data is not the snapshot's)."""

    def freeze(
        self, sandbox_id: str, targets: Sequence[str]
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Inside the block, the file systems of the running sandbox's volumes mounted at
        `targets` are frozen (FIFREEZE: flushed and consistent on the node's disk, writers
        blocked); they thaw when it ends, however it ends, and by themselves after
        volumes.FREEZE_MAX_S if this host process dies in between. Invalid for a target that is
        no volume's (or one without a file system); Conflict unless running."""

    async def close(self) -> None:
        """Stop watching all sandboxes; they keep running."""


class Backend(Protocol):
    """How one runtime starts, kills and cleans up a sandbox whose init is the guest agent."""

    name: str
    # Whether the guest's own kernel mounts its volumes (a micro-VM), rather than the node's
    volumes_in_guest: bool

    def capabilities(self) -> Capabilities: ...

    def fingerprint(self) -> dict[str, str]: ...

    def validate(self, spec: SandboxSpec) -> None:
        """Raise Invalid for what this runtime cannot run (resources are checked against
        the capabilities before)."""

    async def launch(self, record: SandboxRecord, sdir: SandboxDir) -> ProcessRef:
        """Start the sandbox with the guest agent listening at sdir/agent.sock. On failure, raise
        after undoing what was done. May add `record.details`."""

    def side_tasks(self, record: SandboxRecord, sdir: SandboxDir) -> list[Awaitable[None]]:
        """Work to run while the sandbox is watched (console copier, event listener)."""

    async def terminate(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """Kill the sandbox now."""

    def oom_killed(self, record: SandboxRecord) -> bool:
        """Whether the host's OOM killer hit the sandbox's cgroup."""

    def explain_exit(self, record: SandboxRecord, sdir: SandboxDir) -> str:
        """Why the sandbox's process ended without the guest agent reporting an exit."""

    def saved_exit(self, record: SandboxRecord, sdir: SandboxDir) -> ExitStatus | None:
        """The workload's exit, as the sandbox saved it when it ended with no host process
        watching (None if it did not)."""

    async def sweep(self) -> list[str]:
        """End this host's sandboxes of this runtime (of any hutch process) whose directory is
        gone; the ids of those ended."""

    def stats(self, record: SandboxRecord) -> Stats: ...

    async def disk_io(self, record: SandboxRecord, sdir: SandboxDir) -> dict[str, DiskIO]:
        """The running sandbox's disks' I/O by name ("root", "scratch", "volume:<id>"), since
        its process started; {} where the runtime cannot tell them apart."""

    async def cleanup(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """Remove what launch made (the process must be gone). Idempotent; safe after a
        launch that failed half way or was interrupted by a crash."""

    async def freeze_volume(
        self, record: SandboxRecord, sdir: SandboxDir, index: int, frozen: bool
    ) -> bool:
        """Freeze or thaw volume `index`'s file system from the node; False if only the guest
        agent can (the node has no mount of it)."""

    # Suspend, resume and snapshots (Unsupported unless capabilities say so):

    async def save(
        self, record: SandboxRecord, sdir: SandboxDir, dest: Path, with_scratch: bool
    ) -> None:
        """Pause the sandbox and save it into the new directory `dest` (with `with_scratch`, a
        copy of its scratch disk too); it stays paused. On failure or cancellation it runs on
        and `dest` is gone."""

    async def cont(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """Let the paused sandbox run."""

    async def pause(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """Stop the running sandbox where it is, holding its memory (`cont` lets it go on)."""

    async def restore(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> ProcessRef:
        """Start the suspended sandbox again, paused, from what `save` put in `saved` (its
        disks are where they were). On failure, raise with nothing new left."""

    async def release(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """What cleanup removes except the disks, for a sandbox whose process ended because it
        was suspended."""

    async def park(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> bool:
        """Keep the process of a sandbox just saved into `saved`, holding none of its memory,
        for `unpark`; False if it cannot be kept (it is to end)."""

    async def unpark(self, record: SandboxRecord, sdir: SandboxDir, saved: Path) -> None:
        """Give a parked sandbox its memory back from `saved`; it stays paused."""

    def guest_net(self, spec: SandboxSpec) -> str:
        """How the guest agent configures the sandbox's network (a clone, again, as its own)."""


@dataclass(frozen=True, slots=True)
class DriverOptions:
    state_dir: Path  # sandboxes live in state_dir/<runtime>/<id>
    log_max_bytes: int = 1 << 20  # stdout + stderr kept per sandbox
    log_hold: float = 0.0  # seconds a new workload's output waits for a first follower
    timeouts: Timeouts = field(default_factory=Timeouts)


class SandboxDriver:
    """Drives sandboxes: the RuntimeDriver contract over a Backend, through each sandbox's guest
    agent."""

    def __init__(self, backend: Backend, options: DriverOptions) -> None:
        self.name = backend.name
        self.backend = backend
        self._options = options
        self._root = check_state_root(options.state_dir / backend.name)
        self._sups: dict[str, Supervisor] = {}
        self._suspends: dict[str, _Suspend] = {}  # suspends under way
        self._snapshots: set[str] = set()  # sandboxes being snapshotted

    def capabilities(self) -> Capabilities:
        return self.backend.capabilities()

    def fingerprint(self) -> dict[str, str]:
        return self.backend.fingerprint()

    def _supervisor(self, record: SandboxRecord, sdir: SandboxDir) -> Supervisor:
        return Supervisor(
            record,
            sdir,
            self.backend,
            log_max_bytes=self._options.log_max_bytes,
            timeouts=self._options.timeouts,
            log_hold=self._options.log_hold,
        )

    def _get(self, sandbox_id: str) -> Supervisor:
        sup = self._sups.get(sandbox_id)
        if sup is None:
            raise NotFound(f"no sandbox {sandbox_id!r} on this host")
        return sup

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        self.backend.capabilities().check(spec.resources)
        self.backend.validate(spec)
        if spec.template and not self.capabilities().snapshot:
            raise Invalid(f"the {self.name} runtime makes no templates; micro-VMs do")
        record = SandboxRecord(spec=spec, runtime=self.name)
        if spec.restore_from:
            self._can("restore a snapshot", self.capabilities().snapshot)
            if snapfiles.check_restore(spec).template:
                record.details[FROM_TEMPLATE] = "true"
        sdir = SandboxDir(self._root, spec.id)
        sdir.create()
        sdir.try_lock()
        sup: Supervisor | None = None
        try:
            sdir.save(record)  # first, so a crash during launch is found and cleaned by recover
            ref = await self.backend.launch(record, sdir)
            record.pid, record.pid_start = ref.pid, ref.start_ticks
            sdir.save(record)
            sup = self._supervisor(record, sdir)
            await sup.attach(booting=True, extra=self.backend.side_tasks(record, sdir))
            if record.details.get(FROM_TEMPLATE):
                await self._make_ready(sup)
        except BaseException:
            if sup is not None:
                await sup.detach()
            with contextlib.suppress(Exception):
                if record.process is not None:
                    await self.backend.terminate(record, sdir)
                    await _wait_gone(record.process, 10)
                await self.backend.cleanup(record, sdir)
            sdir.remove()
            raise
        self._sups[spec.id] = sup
        return record.info()

    async def start(self, sandbox_id: str, spec: SandboxSpec | None = None) -> SandboxInfo:
        sup = self._get(sandbox_id)
        record = sup.record
        if record.details.get(FROM_TEMPLATE):
            await self._start_as(sup, spec or record.spec)
            return record.info()
        if spec is not None:
            raise Invalid(
                f"sandbox {sandbox_id} was not restored from a template snapshot: it starts "
                "as it was created"
            )
        if record.spec.template:
            sup.mark_started()
            await sup.ready()
            await self._preload(sup)
            return record.info()
        if not record.spec.restore_from:
            await sup.start()
            return record.info()
        # A clone: its guest waits, paused, where the snapshot left it, its workload stopped.
        sup.mark_started()
        await sup.send(T.CLOCK, 0, encode_clock())
        identity = self._identity(record.spec)
        await self.backend.cont(record, sup.dir)
        await sup.ask(T.IDENTITY, identity, self._options.timeouts.answer, "take its identity")
        await sup.send(T.CONTINUE, 0)
        return record.info()

    async def _preload(self, sup: Supervisor) -> None:
        """The template's guest reads the program of its (never started) process into its
        page cache, which its snapshot keeps: its clones then exec it, or anything in the same
        file (busybox), without reading the disk. Best effort: a program not in the image
        leaves the cache as it was."""
        try:
            await sup.ask(
                T.PRELOAD, encode_process(sup.record.spec.process),
                self._options.timeouts.answer, "read its program",
            )  # fmt: skip
        except Unavailable as e:
            log.info("template %s: %s", sup.record.spec.id, e)

    async def _make_ready(self, sup: Supervisor) -> None:
        """A template's clone, restored paused, runs until its guest agent has answered, taken
        the clone's own identity and run a process, then pauses again. What a start would
        wait for is done: the guest's first steps after the restore, a first write of
        /etc/machine-id, and (under TCG, where each QEMU translates the guest's code anew)
        the kernel's fork and exec paths, which the workload's start takes again."""
        record = sup.record
        answer = self._options.timeouts.answer
        await self.backend.cont(record, sup.dir)
        await sup.ready()
        await sup.ask(T.IDENTITY, self._identity(record.spec), answer, "take its identity")
        # The one program every guest has: the guest agent's own, which, not PID 1, exits at
        # once (saying how it is used).
        warm = await sup.exec(ProcessSpec(args=("/proc/self/exe",)), unstarted=True)
        try:
            status, _, _ = await asyncio.wait_for(warm.communicate(), answer)
        except TimeoutError:
            raise Unavailable(f"its warm-up process did not end within {answer:g} s") from None
        if status.error:
            log.info("sandbox %s: no warm-up process: %s", record.spec.id, status.error)
        await self.backend.pause(record, sup.dir)

    async def _start_as(self, sup: Supervisor, spec: SandboxSpec) -> None:
        """Start a template's clone (see _make_ready) as the machine `spec`: its guest takes
        the host's clock, the machine's hostname (and network, with it in /etc/hosts), and
        runs its process."""
        record = sup.record
        if record.state is not SandboxState.CREATED:
            raise Conflict(f"sandbox {record.spec.id} is {record.state}, not created")
        sup.become(_machine(record.spec, spec))
        sup.mark_started()
        spec = record.spec
        # Frames the guest takes in order: the process starts after IDENTITY, without
        # waiting for its answer here.
        named = encode_identity(spec.hostname or spec.id, "", b"", (), self.backend.guest_net(spec))

        async def run() -> None:
            await sup.send_run()
            await self.backend.cont(record, sup.dir)

        try:
            await sup.send(T.CLOCK, 0, encode_clock())
            await sup.ask(
                T.IDENTITY, named, self._options.timeouts.answer, "take its hostname",
                meanwhile=run,
            )  # fmt: skip
        except HutchError as e:  # it must not run on with another machine's name
            await sup.terminate(f"it could not start as its machine: {e}")
            raise

    def _identity(self, spec: SandboxSpec) -> bytes:
        """A clone's IDENTITY: `spec`'s hostname, MACs and network, a fresh machine-id and
        entropy."""
        return encode_identity(
            spec.hostname or spec.id,
            uuid.uuid4().hex,
            os.urandom(64),
            tuple(att.mac for att in spec.networks),
            self.backend.guest_net(spec),
        )

    async def signal(self, sandbox_id: str, sig: int) -> None:
        await self._get(sandbox_id).signal_main(sig)

    async def stop(
        self, sandbox_id: str, timeout: float = 10.0, sig: int | None = None
    ) -> ExitStatus:
        sup = self._get(sandbox_id)
        record = sup.record
        if sup.finished:
            assert record.exit is not None
            return record.exit
        if record.state is SandboxState.CREATED:
            await sup.terminate("stopped before it was started")
            return await sup.wait(KILL_GRACE * 2)
        if record.state is SandboxState.SUSPENDED or record.spec.template:
            # Nothing runs to be signalled: its saved state (and parked process) is dropped, or
            # its guest ended, as a kill would.
            if record.state is SandboxState.SUSPENDED:
                await self._end_parked(record, sup.dir)
            shutil.rmtree(sup.dir.file(SUSPEND_DIR), ignore_errors=True)
            status = ExitStatus(128 + _signal.SIGKILL, _signal.SIGKILL)
            sup.record_exit(status, failed=False)
            if record.spec.template:
                await sup.terminate("stopped")
            return status
        with contextlib.suppress(Conflict):
            await sup.signal_main(sig or record.spec.stop_signal)
        with contextlib.suppress(TimeoutError):
            return await sup.wait(timeout)
        with contextlib.suppress(Conflict):
            await sup.signal_main(_signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            return await sup.wait(KILL_GRACE)
        await sup.terminate(
            f"did not stop within {timeout:g} s and its guest agent did not answer; killed"
        )
        return await sup.wait(KILL_GRACE * 2)

    async def destroy(self, sandbox_id: str, force: bool = False) -> None:
        validate_sandbox_id(sandbox_id)
        sup = self._sups.get(sandbox_id)
        sdir = sup.dir if sup else SandboxDir(self._root, sandbox_id)
        if sup is None:
            if not sdir.record_file.exists():
                sdir.remove()  # a directory from a crash before the first save, or nothing
                return
            if not sdir.try_lock():
                await self._take_from_watcher(sdir, force)
                if not sdir.path.exists():
                    return  # its watcher removed it
            record = sdir.load()
        else:
            record = sup.record
        if record.state is SandboxState.SUSPENDED:
            await self._end_parked(record, sdir)  # nothing runs there
        ref = record.process
        alive = ref is not None and ref.alive()
        if alive and not record.finished and not force:
            raise Conflict(f"sandbox {sandbox_id} is {record.state}: stop it first, or force")
        if alive and record.finished and ref is not None:
            # Its exit was acknowledged, so it is ending by itself (a micro-VM unmounts its
            # volumes cleanly first): let it, for a moment, before killing it.
            await _wait_gone(ref, POWER_OFF_GRACE)
            alive = ref.alive()
        if alive:
            if sup is not None:
                await self._settle_volumes(sup)
                await sup.terminate("destroyed")
            else:
                await self.backend.terminate(record, sdir)
            assert ref is not None
            await _wait_gone(ref, 15)
        if sup is not None:
            await sup.detach()
        await self.backend.cleanup(record, sdir)
        sdir.remove()
        self._sups.pop(sandbox_id, None)

    async def _settle_volumes(self, sup: Supervisor) -> None:
        """Before a running micro-VM is killed, its guest freezes its read-write ext4 volumes:
        a freeze writes the journal out and marks the file system clean, so that a read-only
        attachment later needs no journal replay (which its read-only disk cannot do). Best
        effort, a moment each. A container's volumes are the node's mounts, unmounted cleanly
        after its processes are gone."""
        if not self.backend.volumes_in_guest or sup.finished:
            return
        for vol in sup.record.spec.volumes:
            if vol.read_only or vol.fs != "ext4":
                continue
            try:
                await sup.set_frozen(vol.target, True, SETTLE_TIMEOUT)
            except (HutchError, OSError) as e:
                log.info("sandbox %s: volume at %s not settled: %s", sup.record.spec.id,
                         vol.target, e)  # fmt: skip

    async def _take_from_watcher(self, sdir: SandboxDir, force: bool) -> None:
        """Another live hutch process watches the sandbox: with `force`, kill the sandbox and
        wait for that process to let go (it records the death, and may remove it itself)."""
        record = sdir.load()
        watcher = sdir.watcher_pid()
        if not force:
            raise Conflict(
                f"sandbox {record.spec.id} is {record.state} and watched by hutch process "
                f"{watcher or '?'}: stop it there, or force"
            )
        await self.backend.terminate(record, sdir)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while sdir.path.exists() and not sdir.try_lock():
            if loop.time() > deadline:
                raise Conflict(
                    f"hutch process {watcher or '?'} still holds sandbox {record.spec.id}"
                )
            await asyncio.sleep(0.1)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        sup = self._sups.get(sandbox_id)
        if sup is not None:
            return sup.record.info()
        validate_sandbox_id(sandbox_id)
        sdir = SandboxDir(self._root, sandbox_id)
        try:
            return sdir.load().info()  # watched by another process, or not recovered yet
        except FileNotFoundError:
            raise NotFound(f"no sandbox {sandbox_id!r} on this host") from None

    async def spec(self, sandbox_id: str) -> SandboxSpec:
        sup = self._sups.get(sandbox_id)
        if sup is not None:
            return sup.record.spec
        validate_sandbox_id(sandbox_id)
        try:
            return SandboxDir(self._root, sandbox_id).load().spec
        except FileNotFoundError:
            raise NotFound(f"no sandbox {sandbox_id!r} on this host") from None

    async def sandboxes(self) -> list[SandboxInfo]:
        infos = []
        for path in sorted(self._root.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                with contextlib.suppress(NotFound, ValueError, KeyError, TypeError, HutchError):
                    infos.append(await self.inspect(path.name))
        return infos

    async def wait(self, sandbox_id: str, timeout: float | None = None) -> ExitStatus:
        return await self._get(sandbox_id).wait(timeout)

    async def stats(self, sandbox_id: str) -> Stats:
        stats = self.reading(sandbox_id).stats
        if stats is None:
            raise Conflict(
                f"sandbox {sandbox_id} is {self._get(sandbox_id).record.state}: no stats"
            )
        return stats

    def sandbox_ids(self) -> list[str]:
        """The sandboxes this driver watches."""
        return list(self._sups)

    def reading(self, sandbox_id: str) -> Reading:
        """The sandbox's state and, while its process runs, its counters. File reads only and
        no await: telemetry reads many at once on a thread of its own. NotFound if this driver
        does not watch it."""
        sup = self._get(sandbox_id)
        record = sup.record
        running = record.state is not SandboxState.SUSPENDED and not (
            sup.finished and not (record.process and record.process.alive())
        )
        stats = self.backend.stats(record) if running else None
        return Reading(
            record.state, record.spec.resources, record.started_at, stats, record.finished_at
        )

    async def disk_io(self, sandbox_id: str) -> dict[str, DiskIO]:
        """The running sandbox's disks' I/O (Backend.disk_io); {} when it does not run."""
        sup = self._get(sandbox_id)
        if sup.record.state is not SandboxState.RUNNING:
            return {}
        return await self.backend.disk_io(sup.record, sup.dir)

    async def logs(
        self, sandbox_id: str, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[LogRecord]:
        sup = self._sups.get(sandbox_id)
        path = (sup.dir if sup else SandboxDir(self._root, validate_sandbox_id(sandbox_id))).file(
            "stdio.log"
        )
        if sup is None and not path.parent.exists():
            raise NotFound(f"no sandbox {sandbox_id!r} on this host")
        if not follow or sup is None:
            for record in read_log(path, tail):
                yield record
            return
        async for record in follow_log(
            path, lambda: sup.output_done, sup.changed, sup.log_reader(), tail
        ):
            yield record

    async def exec(self, sandbox_id: str, spec: ProcessSpec) -> ExecProcess:
        return await self._get(sandbox_id).exec(spec)

    async def attach(self, sandbox_id: str) -> ProcessInput:
        sup = self._get(sandbox_id)
        if sup.record.state is not SandboxState.RUNNING or sup.finished:
            raise Conflict(f"sandbox {sandbox_id} is {sup.record.state}, not running")
        return sup.main

    async def recover(self) -> list[SandboxInfo]:
        for sandbox_id in await self.backend.sweep():
            log.warning("ended sandbox %s: its directory was removed", sandbox_id)
        adopted = []
        for path in sorted(self._root.iterdir()):
            if not path.is_dir() or path.name in self._sups or path.name.startswith("."):
                continue
            sdir = SandboxDir(self._root, path.name)
            if not sdir.try_lock():
                continue  # another live hutch process watches it
            try:
                record = sdir.load()
            except (FileNotFoundError, ValueError, KeyError, TypeError, HutchError):
                # Never saved, or unreadable: only a crash mid-create does that. Clean it up.
                sdir.remove()
                continue
            sup = self._supervisor(record, sdir)
            ref = record.process
            if record.state is SandboxState.SUSPENDED:
                # Parked by the process that died, or saved as it died: a resume restores it.
                await self._end_parked(record, sdir)
            elif not record.finished and (ref is None or not ref.alive()):
                saved = self.backend.saved_exit(record, sdir)  # before cleanup removes it
                await self.backend.cleanup(record, sdir)
                if saved is not None:  # it ended with no host process to tell, as it should
                    sup.record_exit(saved, failed=False)
                sup.record_exit(
                    ExitStatus(255, error="its process ended while no hutch process watched it")
                    if ref is not None
                    else ExitStatus(255, error="hutch stopped while creating it"),
                    failed=True,
                )
            elif not record.finished:
                try:
                    await sup.attach(
                        booting=record.state is SandboxState.CREATED,
                        extra=self.backend.side_tasks(record, sdir),
                    )
                    if record.state is SandboxState.CREATED and record.details.get(FROM_TEMPLATE):
                        # Paused, after _make_ready or in the middle of it: again, whole.
                        try:
                            await self._make_ready(sup)
                        except HutchError as e:  # it is watched: its death is recorded
                            await sup.terminate(f"it could not be made ready again: {e}")
                    if record.state is SandboxState.RUNNING and self.capabilities().suspend:
                        # This process may have died with the guest paused (in the middle of a
                        # suspend, resume or snapshot): it runs on.
                        shutil.rmtree(sdir.file(SUSPEND_DIR), ignore_errors=True)
                        try:
                            await self.backend.cont(record, sdir)
                        except Exception as e:  # it is watched: a death is seen and said
                            log.warning("sandbox %s: continuing it: %s", record.spec.id, e)
                except HutchError:
                    sdir.unlock()
                    continue
            self._sups[record.spec.id] = sup
            adopted.append(record.info())
        return adopted

    def _can(self, what: str, flag: bool) -> None:
        if not flag:
            raise Unsupported(f"the {self.name} runtime cannot {what}; micro-VMs can")

    async def suspend(self, sandbox_id: str) -> SandboxInfo:
        sup = self._get(sandbox_id)
        self._can("suspend", self.capabilities().suspend)
        record = sup.record
        if record.state is not SandboxState.RUNNING or sup.finished:
            raise Conflict(f"sandbox {sandbox_id} is {record.state}, not running")
        if sandbox_id in self._suspends or sandbox_id in self._snapshots:
            what = "suspended" if sandbox_id in self._suspends else "snapshotted"
            raise Conflict(f"sandbox {sandbox_id} is being {what}")
        if any(not v.read_only for v in record.spec.volumes):
            # QEMU must reopen a disk read-only at the end of a save, which it cannot do for a
            # volume it locks against a second writer.
            raise Invalid(f"sandbox {sandbox_id} has read-write volumes: it cannot be suspended")
        saved = sup.dir.file(SUSPEND_DIR)
        shutil.rmtree(saved, ignore_errors=True)  # what a crash mid-suspend left
        job = asyncio.ensure_future(self.backend.save(record, sup.dir, saved, with_scratch=False))
        pending = self._suspends[sandbox_id] = _Suspend(job)
        try:
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                if not job.cancelled():
                    raise  # our caller was cancelled: the suspend goes on, as shielded
                raise Conflict(f"a resume of sandbox {sandbox_id} cancelled its suspend") from None
            except OSError as e:  # the host's files (its disk, the RAM file): it runs on
                raise Unavailable(f"sandbox {sandbox_id} could not be saved: {e}") from e
            # Saved: from here on it is suspended, even if this process dies with its process
            # parked or before it ends (recover ends it then).
            record.state = SandboxState.SUSPENDED
            sup.dir.save(record)
            await sup.detach()
            if not await self.backend.park(record, sup.dir, saved):
                await self._end_parked(record, sup.dir)
        finally:
            del self._suspends[sandbox_id]
            pending.over.set()
        return record.info()

    async def resume(self, sandbox_id: str) -> SandboxInfo:
        sup = self._get(sandbox_id)
        self._can("resume", self.capabilities().suspend)
        pending = self._suspends.get(sandbox_id)
        if pending is not None:
            pending.job.cancel()
            await asyncio.wait([pending.job])
            if pending.job.cancelled() or pending.job.exception() is not None:
                return sup.record.info()  # it runs on, never suspended
            await pending.over.wait()  # saved before the cancel came: resume it
        record = sup.record
        if record.state is not SandboxState.SUSPENDED:
            raise Conflict(f"sandbox {sandbox_id} is {record.state}, not suspended")
        saved = sup.dir.file(SUSPEND_DIR)
        ref = record.process
        if ref is not None and ref.alive():  # parked: its memory back, and it goes on
            try:
                await self.backend.unpark(record, sup.dir, saved)
            except (HutchError, OSError) as e:  # a restore says so again if it still holds
                log.warning("sandbox %s: restored anew: its parked process failed: %s",
                            sandbox_id, e)  # fmt: skip
                ref = None
        else:
            ref = None
        if ref is None:
            await self._end_parked(record, sup.dir)  # one that died while parked, or failed
            ref = await self.backend.restore(record, sup.dir, saved)
        record.pid, record.pid_start = ref.pid, ref.start_ticks
        record.state = SandboxState.RUNNING
        sup.dir.save(record)
        try:
            # The same supervisor: whoever waits for the sandbox's end or follows its log
            # since before the suspend goes on waiting and following.
            await sup.attach(booting=False, extra=self.backend.side_tasks(record, sup.dir))
            # The guest's clock stood still while it was saved: set, before anything else runs.
            await sup.send(T.CLOCK, 0, encode_clock())
            await self.backend.cont(record, sup.dir)
        except BaseException:
            await sup.detach()
            await self.backend.terminate(record, sup.dir)
            await _wait_gone(ref, 15)
            await self.backend.release(record, sup.dir)
            record.state = SandboxState.SUSPENDED
            record.pid = record.pid_start = 0
            sup.dir.save(record)
            raise
        # Off the event loop: unlinking a saved RAM file of 100 MiB takes tens of milliseconds.
        await asyncio.to_thread(shutil.rmtree, saved, ignore_errors=True)
        return record.info()

    async def _end_parked(self, record: SandboxRecord, sdir: SandboxDir) -> None:
        """End a suspended sandbox's process, if it has one (parked, or saved as this process
        died), and release what it held; its saved state stays."""
        ref = record.process
        if ref is None:
            return
        if ref.alive():
            await self.backend.terminate(record, sdir)
            await _wait_gone(ref, 15)
        await self.backend.release(record, sdir)
        record.pid = record.pid_start = 0
        sdir.save(record)

    async def snapshot(self, sandbox_id: str, dest: Path) -> SnapshotFiles:
        sup = self._get(sandbox_id)
        self._can("snapshot", self.capabilities().snapshot)
        record = sup.record
        if record.state is not SandboxState.RUNNING or sup.finished:
            raise Conflict(f"sandbox {sandbox_id} is {record.state}, not running")
        if record.spec.volumes:
            raise Invalid(
                f"sandbox {sandbox_id} has volumes: a snapshot cannot hold their data; "
                "snapshot the volumes themselves"
            )
        if sandbox_id in self._suspends or sandbox_id in self._snapshots:
            what = "suspended" if sandbox_id in self._suspends else "snapshotted"
            raise Conflict(f"sandbox {sandbox_id} is being {what}")
        answer = self._options.timeouts.answer
        self._snapshots.add(sandbox_id)
        try:
            if await asyncio.to_thread(os.path.lexists, dest):
                raise Conflict(f"{dest} exists already")
            # Its processes stop first: a clone continues them only once it is its own machine.
            # A template has none.
            if not record.spec.template:
                await sup.ask(T.PAUSE, b"", answer, "pause its workload")
            try:
                await self.backend.save(record, sup.dir, dest, with_scratch=True)
                try:
                    files = snapfiles.describe(dest, record.spec)
                finally:
                    await self.backend.cont(record, sup.dir)
            except BaseException as e:
                shutil.rmtree(dest, ignore_errors=True)
                if isinstance(e, OSError):  # the host's files (its disk, the RAM file)
                    raise Unavailable(f"sandbox {sandbox_id} could not be saved: {e}") from e
                raise
            finally:
                if not record.spec.template:
                    with contextlib.suppress(Conflict):  # else it continues by itself soon
                        await sup.send(T.CONTINUE, 0)
        finally:
            self._snapshots.discard(sandbox_id)
        return files

    @contextlib.asynccontextmanager
    async def freeze(self, sandbox_id: str, targets: Sequence[str]) -> AsyncIterator[None]:
        sup = self._get(sandbox_id)
        record = sup.record
        indexes = [volumes.find(record.spec, target) for target in targets]
        if record.state is not SandboxState.RUNNING or sup.finished:
            raise Conflict(f"sandbox {sandbox_id} is {record.state}, not running")
        done: list[int] = []

        async def set_frozen(index: int, frozen: bool) -> None:
            if not await self.backend.freeze_volume(record, sup.dir, index, frozen):
                target = record.spec.volumes[index].target
                await sup.set_frozen(target, frozen, self._options.timeouts.answer)

        try:
            for index in indexes:
                await set_frozen(index, True)
                done.append(index)
            yield
        finally:
            for index in reversed(done):
                try:
                    await set_frozen(index, False)
                except (HutchError, OSError) as e:  # it thaws by itself before long
                    log.warning("sandbox %s: thawing volume %d: %s", sandbox_id, index, e)

    async def close(self) -> None:
        for sup in self._sups.values():
            await sup.detach()
            sup.dir.unlock()
        self._sups.clear()


@dataclass(slots=True)
class _Suspend:
    job: "asyncio.Future[None]"  # the backend saving the sandbox (a resume cancels it)
    over: asyncio.Event = field(default_factory=asyncio.Event)  # suspend() has returned


async def _wait_gone(ref: ProcessRef, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ref.wait(), timeout)


def _machine(created: SandboxSpec, given: SandboxSpec) -> SandboxSpec:
    """The spec a template's clone created as `created` starts as: `given`'s MACHINE_FIELDS on
    the rest of `created`; Invalid if `given` has another id, shape, disk or networks."""
    spec = dataclasses.replace(created, **{f: getattr(given, f) for f in MACHINE_FIELDS})
    differ = [
        f.name
        for f in dataclasses.fields(SandboxSpec)
        if f.name != "restore_from" and getattr(spec, f.name) != getattr(given, f.name)
    ]
    if differ:
        raise Invalid(
            f"sandbox {created.id} was restored with other {', '.join(differ)}: the machine "
            f"it starts as takes only its {', '.join(MACHINE_FIELDS)}"
        )
    return spec
