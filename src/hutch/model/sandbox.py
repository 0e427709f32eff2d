"""What a runtime driver is asked to run, and what it reports back."""

import re
import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Literal

from hutch.model.errors import Invalid
from hutch.model.network import Attachment, PortMapping

SANDBOX_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
MAX_ARG_BYTES = 256 << 10  # argv + env together, well under the guest's 1 MiB frame


def validate_sandbox_id(sandbox_id: str) -> str:
    if not SANDBOX_ID.match(sandbox_id):
        raise Invalid(
            f"sandbox id {sandbox_id!r} is invalid: use 1-40 of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return sandbox_id


def parse_signal(value: str | int) -> int:
    """A signal by number, name or short name: 15, "SIGTERM", "term"."""
    if isinstance(value, int) or (value.isascii() and value.isdigit()):
        num = int(value)
        if 1 <= num <= 64:
            return num
        raise Invalid(f"signal {value} is out of range (1-64)")
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise Invalid(f"unknown signal {value!r}") from None


@dataclass(frozen=True, slots=True)
class User:
    """A resolved identity: names are looked up in the image before they reach a driver."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for what, value in (
            ("uid", self.uid),
            ("gid", self.gid),
            *(("group", g) for g in self.groups),
        ):
            if not 0 <= value < 2**32 - 1:
                raise Invalid(f"{what} {value} is out of range")


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process: the main workload or an exec'd one."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()  # "KEY=VALUE"
    cwd: str = "/"
    user: User = field(default_factory=User)
    stdin: bool = False  # give it a pipe (else /dev/null)
    tty: bool = False  # a pseudo-terminal for stdin, stdout and stderr (output is one stream)
    rows: int = 0  # the terminal's size (0: 24 rows, 80 columns)
    cols: int = 0

    def __post_init__(self) -> None:
        if not self.args or not self.args[0]:
            raise Invalid("no command to run: give a command, or use an image that has one")
        if not PurePosixPath(self.cwd).is_absolute():
            raise Invalid(f"working directory {self.cwd!r} must be an absolute path")
        for entry in self.env:
            key, sep, _ = entry.partition("=")
            if not sep or not _ENV_KEY.match(key):
                raise Invalid(f"environment entry {entry!r} is not KEY=VALUE")
        for text in (*self.args, *self.env, self.cwd):
            if "\0" in text:
                raise Invalid("arguments, environment and paths may not contain NUL bytes")
        if sum(len(t.encode()) + 1 for t in (*self.args, *self.env)) > MAX_ARG_BYTES:
            raise Invalid(f"arguments and environment exceed {MAX_ARG_BYTES >> 10} KiB")


MIN_SCRATCH_MIB = 16  # what a sandbox gets at least when no size is asked for


def scratch_mib(asked_mib: int, memory_mib: int) -> int:
    """The writable scratch a sandbox gets: what was asked for, else (0) half its memory."""
    return asked_mib or max(memory_mib // 2, MIN_SCRATCH_MIB)


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: int = 1
    memory_mib: int = 128
    # Writable layer over the read-only root, on the node's disk (a sparse ext4 file for both
    # runtimes), not in memory: it may exceed memory_mib. 0 = half the memory.
    scratch_mib: int = 0
    pids: int = 1024

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise Invalid(f"cpus must be at least 1, not {self.cpus}")
        if self.memory_mib < 1:
            raise Invalid(f"memory must be positive, not {self.memory_mib} MiB")
        if self.scratch_mib < 0:
            raise Invalid("scratch size cannot be negative")
        if self.pids < 8:
            raise Invalid(f"pids limit must be at least 8, not {self.pids}")

    @property
    def scratch_bytes(self) -> int:
        return scratch_mib(self.scratch_mib, self.memory_mib) << 20


MAX_VOLUMES = 16  # per sandbox: virtio-blk devices and boot parameters stay few
_VOLUME_TARGET = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+$")  # boot parameters carry it: no spaces


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """A volume given to a sandbox: a raw file on the node (its storage backend's), as a disk of
    a micro-VM or a loop device of a container, mounted at `target` (ext4) or, for `fs="none"`,
    a block device node at `target`."""

    volume_id: str  # names it in errors and serials
    source: str  # absolute path of the raw file on the node
    target: str  # absolute path inside the sandbox
    read_only: bool = False
    fs: Literal["ext4", "none"] = "ext4"

    def __post_init__(self) -> None:
        if not PurePosixPath(self.source).is_absolute():
            raise Invalid(f"volume {self.volume_id}: source {self.source!r} is not absolute")
        validate_volume_target(self.target)


def validate_volume_target(target: str) -> str:
    """A mount path inside a sandbox: absolute, not `/`, no `.` or `..` parts, at most 200
    bytes of letters, digits and `_.@+-` (it travels on the guest's kernel command line)."""
    parts = target.split("/")[1:]
    if (
        len(target) > 200
        or not _VOLUME_TARGET.match(target)
        or any(part in (".", "..") for part in parts)
    ):
        raise Invalid(
            f"volume path {target!r} is invalid: give an absolute path other than /, without "
            "'.' or '..' parts, of letters, digits and _.@+- (at most 200 characters)"
        )
    return target


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything a driver needs; paths are prepared by the image layer beforehand."""

    id: str
    process: ProcessSpec
    rootfs: str = ""  # unpacked root directory (the container runtime runs on it)
    root_disk: str = ""  # read-only file system image of that root (micro-VMs boot from it)
    root_disk_format: Literal["erofs", "ext4"] = "erofs"
    resources: Resources = field(default_factory=Resources)
    hostname: str = ""
    stop_signal: int = int(_signal.SIGTERM)
    networks: tuple[Attachment, ...] = ()  # its NICs, in order (eth0 first)
    ports: tuple[PortMapping, ...] = ()  # published on the node, to the first NIC's addresses
    volumes: tuple[VolumeMount, ...] = ()  # mounted before the workload starts, in order
    # Someone follows the output from the start: it waits for a first follower (the driver's
    # log_hold seconds at most) rather than being dropped from the ring.
    hold_output: bool = False
    # A machine snapshot's directory on this host (`RuntimeDriver.snapshot`): `create` restores
    # the guest from it, paused, instead of booting; `start` continues it as this spec's machine
    # (its own MAC, addresses, hostname, machine-id, fresh entropy, the host's clock). Its
    # resources and root disk must be the snapshot's. A clone of a template snapshot starts as
    # the machine `RuntimeDriver.start` is given.
    restore_from: str = ""
    # A template (micro-VMs only): `start` boots the guest until its agent answers and runs no
    # process; a snapshot of it is a template snapshot, whose clones wait, pre-restored, for
    # the machine they become.
    template: bool = False

    def __post_init__(self) -> None:
        validate_sandbox_id(self.id)
        if self.hostname and not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", self.hostname):
            raise Invalid(f"hostname {self.hostname!r} is invalid")
        if len({a.network_id for a in self.networks}) != len(self.networks):
            raise Invalid("a sandbox is attached to each network at most once")
        if self.ports and not self.networks:
            raise Invalid("published ports need a network: the sandbox has none")
        if self.template and (self.restore_from or self.volumes):
            raise Invalid("a template is booted afresh and takes no volumes")
        if len(self.volumes) > MAX_VOLUMES:
            raise Invalid(f"a sandbox takes at most {MAX_VOLUMES} volumes")
        targets = [v.target for v in self.volumes]
        for i, t in enumerate(targets):
            for other in targets[i + 1 :]:
                if t == other or other.startswith(t + "/") or t.startswith(other + "/"):
                    raise Invalid(f"volume paths {t} and {other} overlap")
        if len({v.volume_id for v in self.volumes}) != len(self.volumes):
            raise Invalid("a sandbox takes each volume at most once")
        seen: set[tuple[str, int, str]] = set()
        for p in self.ports:
            key = (p.host_ip, p.host_port, p.protocol)
            if key in seen:
                raise Invalid(f"host port {p.host_port}/{p.protocol} is published twice")
            seen.add(key)


class SandboxState(StrEnum):
    CREATED = "created"  # the sandbox exists and boots; the workload has not been started
    RUNNING = "running"
    SUSPENDED = "suspended"  # memory and devices saved on the host, no process: `resume` it
    EXITED = "exited"  # the workload ended; see ExitStatus
    FAILED = "failed"  # hutch could not run it, or the sandbox died under it


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int  # 0-255; 128 + signal when a signal ended it
    signal: int = 0
    oom_killed: bool = False
    error: str = ""  # set when the sandbox failed rather than the workload exiting

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def describe(self) -> str:
        if self.error:
            return self.error
        if self.oom_killed:
            return f"out of memory (killed, exit code {self.code})"
        if self.signal:
            return f"killed by signal {self.signal} (exit code {self.code})"
        return f"exit code {self.code}"


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    id: str
    runtime: str
    state: SandboxState
    pid: int  # host pid of the qemu or of the container's init; 0 when gone
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    exit: ExitStatus | None = None
    resources: Resources = field(default_factory=Resources)
    details: Mapping[str, str] = field(default_factory=dict)  # accel, uid, ...
    root_paths: tuple[str, ...] = ()  # host paths its root lives on (unpacked tree, disk)


@dataclass(frozen=True, slots=True)
class SnapshotFiles:
    """A machine snapshot on this host (`RuntimeDriver.snapshot`): a directory that holds the
    guest's memory, device state and scratch disk, and what a restore must match."""

    path: str  # the directory, as `SandboxSpec.restore_from` takes it
    size_bytes: int  # what its files take on the host's disk
    resources: Resources  # a restore gets exactly these
    root_disk: str  # the root disk it was taken on (a restore boots the same image)
    root_disk_format: str
    template: bool = False  # taken of a template: its clones are started as a machine given then


@dataclass(frozen=True, slots=True)
class Stats:
    cpu_ns: int  # host CPU time of the sandbox (qemu or the container's processes)
    memory_bytes: int  # host memory charged to it
    memory_limit_bytes: int
    pids: int


@dataclass(frozen=True, slots=True)
class DiskIO:
    """One disk's I/O since its sandbox's process started."""

    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0


@dataclass(frozen=True, slots=True)
class Reading:
    """A sandbox as telemetry samples it: its state, what it was given, and, while its process
    runs, its counters."""

    state: "SandboxState"
    resources: "Resources"
    started_at: float | None  # when it last started (its record's)
    stats: Stats | None  # None: no process (suspended, ended)
    finished_at: float | None = None  # when it ended (its record's), if it has


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a driver can do, as data (Nomad's shape): callers check, not guess."""

    runtime: str
    isolation: Literal["vm", "namespaces"]
    root: Literal["disk", "dir"]  # what SandboxSpec field the driver boots from
    exec: bool
    signals: bool
    accel: str  # "kvm", "tcg" or "none"
    min_memory_mib: int
    max_cpus: int
    max_memory_mib: int
    overhead_mib: int  # host memory per sandbox beyond its own limit, for the scheduler
    suspend: bool = False  # `suspend` and `resume` work
    snapshot: bool = False  # `snapshot` works, and `SandboxSpec.restore_from`

    def check(self, res: Resources) -> None:
        """Raise Invalid unless this driver can give `res` on its host."""
        what = "a micro-VM" if self.isolation == "vm" else f"a {self.runtime} sandbox"
        if res.memory_mib < self.min_memory_mib:
            raise Invalid(
                f"memory {res.memory_mib} MiB is too little: {what} needs at least "
                f"{self.min_memory_mib} MiB"
            )
        if res.memory_mib > self.max_memory_mib:
            raise Invalid(
                f"memory {res.memory_mib} MiB is more than this host can give {what} "
                f"({self.max_memory_mib} MiB)"
            )
        if res.cpus > self.max_cpus:
            raise Invalid(f"{res.cpus} CPUs asked for, this host has {self.max_cpus}")


class Stream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True, slots=True)
class LogRecord:
    stream: Stream
    data: bytes
    time_ns: int
    skipped: int = (
        0  # with no data: this many bytes of `stream` are missing here (log dropped them)
    )
