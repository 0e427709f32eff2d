"""Machines: what a tenant asks to run, and where each one is in its life. Also nodes and events."""

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from hutch.model.errors import Invalid
from hutch.model.image import parse_ref
from hutch.model.sandbox import MAX_VOLUMES, scratch_mib, validate_volume_target
from hutch.model.units import format_duration

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
MAX_LABELS = 64


class MachineState(StrEnum):
    CREATED = "created"  # recorded; not yet taken up by its node
    STARTING = "starting"  # its node is booting it
    # A warm pool's machine its node has made and left paused: a run takes it (Desired.READY).
    READY = "ready"
    RUNNING = "running"
    # Its memory and devices are saved on its node and no process runs: it holds no CPU or
    # memory there (its disks and addresses stay); `resume` continues it on the same node.
    SUSPENDED = "suspended"
    STOPPING = "stopping"
    EXITED = "exited"  # the workload ended: see exit_code
    FAILED = "failed"  # it could not run, or its sandbox died: see error
    LOST = "lost"  # its node stopped answering: its sandbox is destroyed if it comes back
    DESTROYED = "destroyed"

    @property
    def finished(self) -> bool:
        return self in (
            MachineState.EXITED,
            MachineState.FAILED,
            MachineState.LOST,
            MachineState.DESTROYED,
        )


# A machine in one of these states has no sandbox on its node yet: no log, nothing to exec.
NOT_STARTED = (MachineState.CREATED, MachineState.STARTING)

# A machine in one of these states holds its node's share (once it has a node).
ACTIVE = (
    MachineState.CREATED,
    MachineState.STARTING,
    MachineState.READY,
    MachineState.RUNNING,
    MachineState.STOPPING,
)


class Desired(StrEnum):
    """What the control plane wants; nodes converge on it."""

    RUNNING = "running"
    # A warm pool's machine: made on its node from the pool's template snapshot and left
    # paused, its process not started, until a run takes it (model/pool.py).
    READY = "ready"
    SUSPENDED = "suspended"  # saved on its node, no process (micro-VMs only)
    STOPPED = "stopped"
    DESTROYED = "destroyed"


class OnTimeout(StrEnum):
    """What is done to a machine when its lifetime (`MachineSpec.timeout_s`) runs out."""

    STOP = "stop"
    SUSPEND = "suspend"  # micro-VMs only (check_suspendable)
    DESTROY = "destroy"

    @property
    def done(self) -> str:
        """The action as an event says it happened."""
        return {"stop": "stopped", "suspend": "suspended", "destroy": "destroyed"}[self.value]


class OnIdle(StrEnum):
    """What is done to a machine that had no connection to its published ports for its
    `MachineSpec.idle_s`."""

    STOP = "stop"
    # Micro-VMs only (check_suspendable): a new connection to a published port resumes it.
    SUSPEND = "suspend"

    @property
    def done(self) -> str:
        return {"stop": "stopped", "suspend": "suspended"}[self.value]


# The longest lifetime a machine is given, or extended to: longer is a typo, not a plan.
MAX_TIMEOUT = 366 * 86400.0


def check_timeout(seconds: float, what: str = "timeout") -> float:
    """`seconds` if it is a lifetime a machine can have (more than 0, at most MAX_TIMEOUT);
    Invalid saying why not, naming it as `what` (the field or option the user gave)."""
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN fails too
        size = "not a number" if math.isnan(seconds) else f"{seconds:g} s"
        raise Invalid(
            f"{what} must be more than 0 and at most {format_duration(MAX_TIMEOUT)}, not {size}"
        )
    return seconds


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"  # exit code other than 0, failed, or lost with its node
    ALWAYS = "always"


class Strategy(StrEnum):
    """How the scheduler chooses among nodes that can take a machine."""

    SPREAD = "spread"  # the emptiest node: room to grow, less lost with one node
    PACK = "pack"  # the fullest node that fits: whole nodes stay free for big machines


class GroupPolicy(StrEnum):
    """Where the machines of one group (in one project) go relative to each other."""

    NONE = "none"  # only spread across failure domains, as a preference
    AFFINITY = "affinity"  # all on one node
    ANTI_AFFINITY = "anti-affinity"  # never two on one node


def validate_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise Invalid(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise Invalid(f"label key {key!r} is invalid: [prefix/]name of letters, digits, '-_.'")
        if not _LABEL_VALUE.match(value):
            raise Invalid(f"label {key}={value!r}: values are up to 63 letters, digits, '-_.'")


MAX_ENV_ENTRY = 128 * 1024 - 1  # bytes of one NAME=value: Linux's MAX_ARG_STRLEN, less its NUL


def validate_env(env: Mapping[str, str]) -> None:
    """Environment variables a process can have: a name that is not empty and holds no '='
    (execve splits NAME=value at the first one), no NUL (it ends the entry), and each entry
    within what execve takes. Checked when a machine is created or an exec asked for, so a
    bad entry is refused then, not when the machine starts."""
    for name, value in env.items():
        if not name:
            raise Invalid(f"environment variable names cannot be empty (value {value[:40]!r})")
        if "=" in name:
            raise Invalid(f"environment variable name {name!r} contains '=', which ends a name")
        if "\0" in name or "\0" in value:
            raise Invalid(f"environment variable {name!r} contains NUL (\\x00)")
        if len(name.encode()) + 1 + len(value.encode()) > MAX_ENV_ENTRY:
            raise Invalid(f"environment variable {name!r} is over {MAX_ENV_ENTRY} bytes")


def env_entries(env: Mapping[str, str]) -> tuple[str, ...]:
    """The environment as a process gets it (KEY=VALUE entries, in order): how the model, the
    store, the node and the driver hold it. The public API's mapping converts here."""
    return tuple(f"{name}={value}" for name, value in env.items())


def env_dict(entries: Iterable[str]) -> dict[str, str]:
    """The entries back as the public API shows them (a name's last entry wins)."""
    return dict(entry.partition("=")[::2] for entry in entries)


@dataclass(frozen=True, slots=True)
class VolumeAttach:
    """A volume a machine has: mounted at `target` (a block device there for fs "none") from
    before its workload starts until it is destroyed. A volume is attached to one machine at a
    time (read-only too: ext4 is not a cluster file system, and even a read-only mount of a
    journaled one that another writes is unsafe)."""

    volume: str  # its id (what the caller named it by, name or id, until the service resolves it)
    target: str  # absolute path inside the machine
    read_only: bool = False
    name: str = ""  # the volume's name, for views (volumes are never renamed)

    def __post_init__(self) -> None:
        validate_volume_target(self.target)

    @staticmethod
    def parse(text: str) -> "VolumeAttach":
        """`-v`'s text: NAME:/PATH or NAME:/PATH:ro (or :rw), a volume by name or id."""
        ref, _, rest = text.partition(":")
        path, _, mode = rest.partition(":")
        if ref.startswith(("/", ".", "~")):  # a host directory, as Docker's -v takes
            raise Invalid(
                f"volume {text!r}: give a volume of the project by name (hutch volume ls), as "
                "NAME:/PATH[:ro]; a machine never mounts a directory of its node"
            )
        if not ref or not path:
            example = f"{ref or 'NAME'}:/data"
            raise Invalid(
                f"volume {text!r} needs the path it is mounted at in the machine: {example} "
                "(NAME:/PATH[:ro])"
            )
        if mode not in ("", "ro", "rw"):
            raise Invalid(f"volume {text!r}: after NAME:/PATH comes ro or rw, not {mode!r}")
        return VolumeAttach(ref, path, read_only=mode == "ro")


def check_volumes(volumes: "tuple[VolumeAttach, ...]") -> None:
    """At most MAX_VOLUMES, each volume once, paths that do not overlap."""
    if len(volumes) > MAX_VOLUMES:
        raise Invalid(f"a machine takes at most {MAX_VOLUMES} volumes, not {len(volumes)}")
    seen: set[str] = set()
    for i, v in enumerate(volumes):
        if v.volume in seen:
            raise Invalid(f"volume {v.name or v.volume} is given twice: a machine has each once")
        seen.add(v.volume)
        for other in volumes[i + 1 :]:
            a, b = v.target, other.target
            if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
                raise Invalid(f"volume paths {a} and {b} overlap")


# The least memory each runtime can run a machine in, checked when a machine is asked for (so a
# refusal leaves no machine behind) and again by the driver. The Debian cloud kernel does not
# boot in 64 MiB; 96 leaves room for a workload.
MIN_MEMORY_MIB = {"microvm": 96, "container": 16}
# The runtimes whose sandboxes can be suspended, snapshotted and cloned (`RuntimeDriver.suspend`,
# `.snapshot`): a micro-VM's whole state is its memory and devices; a container's is the host's.
SUSPENDABLE = ("microvm",)


def check_suspendable(runtime: str, what: str) -> None:
    """Invalid, saying which runtime can, unless machines of `runtime` can be `what`
    ("suspended", "snapshotted")."""
    if runtime not in SUSPENDABLE:
        raise Invalid(f"the {runtime} runtime cannot be {what}; micro-VMs (--runtime microvm) can")


@dataclass(frozen=True, slots=True)
class MachineSpec:
    image: str
    command: tuple[str, ...] | None = None  # None: the image's Cmd
    entrypoint: tuple[str, ...] | None = None  # None: the image's Entrypoint
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    cpus: int = 1
    memory_mib: int = 128
    disk_mib: int = 0  # writable scratch over the image; 0 = half the memory
    runtime: str = "microvm"
    restart: RestartPolicy = RestartPolicy.NO
    labels: Mapping[str, str] = field(default_factory=dict)
    auto_destroy: bool = False  # destroyed as soon as it ends
    # Placement: a group (a label value, shared by machines placed relative to each other),
    # the node labels it needs, and a strategy (None: the project's).
    group: str = ""
    group_policy: GroupPolicy = GroupPolicy.NONE
    constraints: Mapping[str, str] = field(default_factory=dict)
    strategy: Strategy | None = None
    # The main process's terminal and input (`hutch run -it`): a pseudo-terminal for its
    # stdin, stdout and stderr, and a stdin that attached clients write to (else /dev/null).
    tty: bool = False
    stdin: bool = False
    rows: int = 0  # the terminal's size when the process starts (0: 24 rows, 80 columns)
    cols: int = 0
    # A client will follow its output from the start (an attached `hutch run`): the node keeps
    # it for up to `log_hold` seconds, the workload waiting, until a first follower comes.
    hold_output: bool = False
    volumes: tuple[VolumeAttach, ...] = ()  # attached at creation, detached when destroyed
    # Its lifetime: seconds of running (suspended time does not count) after which
    # `on_timeout` is done to it; None: no limit. `Machine.extended_s` adds to it.
    timeout_s: float | None = None
    on_timeout: OnTimeout = OnTimeout.STOP
    # Seconds without a connection to its published ports after which `on_idle` is done to
    # it (the node measures, the leader acts); None: it never idles.
    idle_s: float | None = None
    on_idle: OnIdle = OnIdle.STOP
    # A machine snapshot's id (`hutch run --from`): every generation continues from it, on its
    # node, instead of booting the image (which is the snapshot's, as are cpus, memory, disk).
    from_snapshot: str = ""

    def __post_init__(self) -> None:
        parse_ref(self.image)
        check_volumes(self.volumes)
        validate_labels(self.labels)
        validate_labels(self.constraints)
        if self.group and not _LABEL_VALUE.match(self.group):
            raise Invalid(f"group {self.group!r}: up to 63 letters, digits, '-_.'")
        if self.group_policy is not GroupPolicy.NONE and not self.group:
            raise Invalid(f"group policy {self.group_policy} needs a group")
        if self.cpus < 1:
            raise Invalid("cpus must be at least 1")
        if self.memory_mib < 1:
            raise Invalid("memory must be positive")
        if self.disk_mib < 0:
            raise Invalid("disk cannot be negative")
        if not (0 <= self.rows <= 0xFFFF and 0 <= self.cols <= 0xFFFF):
            raise Invalid("a terminal's rows and columns are 0 to 65535")

    def check_new(self) -> None:
        """Raise Invalid for what no node could run, before a machine is made of it (not in
        __post_init__: machines recorded before a limit changed must still load)."""
        if self.memory_mib < (least := MIN_MEMORY_MIB.get(self.runtime, 1)):
            what = "a micro-VM" if self.runtime == "microvm" else f"the {self.runtime} runtime"
            raise Invalid(
                f"memory {self.memory_mib} MiB is too little: {what} needs at least {least} MiB"
            )
        if self.timeout_s is not None:
            check_timeout(self.timeout_s)
        if self.on_timeout is OnTimeout.SUSPEND:
            check_suspendable(self.runtime, "suspended")
        if self.idle_s is not None:
            check_timeout(self.idle_s, "idle")
            if self.on_idle is OnIdle.SUSPEND:
                check_suspendable(self.runtime, "suspended when idle")

    @property
    def scratch_mib(self) -> int:
        return scratch_mib(self.disk_mib, self.memory_mib)


# A machine's clock, over plain values: Machine's properties, and listings that read rows
# straight into documents (api/convert.py machine_docs), compute it here.


def lifetime(timeout_s: float | None, extended_s: float) -> float | None:
    return None if timeout_s is None else timeout_s + extended_s


def expires_at(lifetime_s: float | None, ran_s: float, running_since: float | None) -> float | None:
    if lifetime_s is None or running_since is None:
        return None
    return running_since + lifetime_s - ran_s


def time_left(
    lifetime_s: float | None, ran_s: float, running_since: float | None, now: float
) -> float | None:
    if lifetime_s is None:
        return None
    if running_since is not None:
        ran_s += max(0.0, now - running_since)
    return max(0.0, lifetime_s - ran_s)


def idle_at(
    idle_s: float | None, running_since: float | None, active_at: float | None
) -> float | None:
    if idle_s is None or running_since is None:
        return None
    return max(running_since, active_at or 0.0) + idle_s


@dataclass(frozen=True, slots=True)
class Machine:
    id: str
    project_id: str
    name: str
    spec: MachineSpec
    state: MachineState
    desired: Desired
    created_at: float
    updated_at: float
    node_id: str | None = None
    generation: int = 0  # bumped at every (re)start: the node runs sandbox f"{id}-{generation}"
    exit_code: int | None = None
    error: str = ""
    oom_killed: bool = False
    restarts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    stop_signal: str = ""  # of the last stop asked for ("" = the image's stop signal)
    stop_timeout: float = 10.0  # seconds from the stop signal to the kill
    start_after: float = 0.0  # a restart's backoff: the node waits until then
    # The image it got, once a node resolved its name: every later start runs this digest.
    image_digest: str = ""
    image_source: str = ""  # "project" (the project's own) or "catalogue" (the operator's)
    # Its lifetime's clock (see `entering`): seconds it ran before `running_since`, the instant
    # it last began running (None while it is not running), and what `extend` added.
    ran_s: float = 0.0
    running_since: float | None = None
    extended_s: float = 0.0
    # The warm pool that owns it (its template, or a pooled machine), hidden from listings;
    # "" for the project's own machines, and once a run has taken it.
    pool: str = ""
    # A pool's template snapshot this generation's sandbox is restored from, paused, and then
    # started as this machine (`RuntimeDriver.start(id, spec)`); a new generation boots afresh.
    pool_snapshot: str = ""
    # Its idleness (`MachineSpec.idle_s`): when its node last saw a connection to its published
    # ports (None: never), and whether it is suspended (or being suspended) for being idle, so
    # that its node resumes it on a new connection.
    active_at: float | None = None
    idled: bool = False
    version: int = 1  # optimistic concurrency: every update checks and bumps it

    @property
    def sandbox_id(self) -> str:
        return f"{self.id}-{self.generation}"

    @property
    def template(self) -> bool:
        """A warm pool's template: booted until its guest agent answers, its process not run,
        to be snapshotted for the pool's machines."""
        return bool(self.pool) and not self.pool_snapshot

    @property
    def lifetime_s(self) -> float | None:
        """Its timeout with what was added to it since it was last started; None: no limit."""
        return lifetime(self.spec.timeout_s, self.extended_s)

    @property
    def expires_at(self) -> float | None:
        """When its lifetime runs out if it keeps running; None if it has no timeout or is not
        running (then its clock stands still)."""
        return expires_at(self.lifetime_s, self.ran_s, self.running_since)

    def time_left(self, now: float) -> float | None:
        """Seconds of running left at `now` (0 once it ran out); None without a timeout."""
        return time_left(self.lifetime_s, self.ran_s, self.running_since, now)

    @property
    def idle_at(self) -> float | None:
        """When it idles if no connection comes: `idle_s` after the later of its last
        connection and the instant it last began running; None if it does not idle or is not
        running."""
        return idle_at(self.spec.idle_s, self.running_since, self.active_at)

    def entering(self, state: MachineState, now: float) -> "Machine":
        """The machine in `state` from `now`, its clock kept: only time spent running counts
        (starting, suspended, stopped or ended it stands still)."""
        running = state is MachineState.RUNNING
        if running and self.running_since is None:
            return replace(self, state=state, updated_at=now, running_since=now)
        if not running and self.running_since is not None:
            ran = self.ran_s + max(0.0, now - self.running_since)
            return replace(self, state=state, updated_at=now, ran_s=ran, running_since=None)
        return replace(self, state=state, updated_at=now)

    def anew(self) -> "Machine":
        """Its lifetime begun again (a start or restart asked for): nothing ran, nothing added."""
        return replace(self, ran_s=0.0, running_since=None, extended_s=0.0)


@dataclass(frozen=True, slots=True)
class Report:
    """What a node saw happen to one generation of a machine."""

    generation: int
    state: MachineState
    time: float
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    image_digest: str = ""  # with STARTING: the image the node resolved the machine's to
    image_source: str = ""
    resumed: bool = False  # with RUNNING: it continues where it was suspended


class NodeState(StrEnum):
    READY = "ready"
    UNREACHABLE = "unreachable"  # missed its heartbeats: its machines are lost


@dataclass(frozen=True, slots=True)
class Capacity:
    cpus: int
    memory_mib: int
    disk_mib: int


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    address: str  # base URL of the node agent's API
    runtimes: tuple[str, ...]
    accel: str
    capacity: Capacity
    allocated: Capacity  # the sum of what placed machines asked for (plus overheads)
    overhead_mib: Mapping[str, int]  # host memory per sandbox beyond its limit, by runtime
    labels: Mapping[str, str]
    state: NodeState
    created_at: float
    last_seen: float
    domain: str = ""  # failure domain (rack, zone): the machines of a group spread across them
    cordoned: bool = False  # runs what it has, takes nothing new
    version: int = 1


@dataclass(frozen=True, slots=True)
class MachineLine:
    """A machine as a long list shows it: a line of a table, read without the rest of it."""

    id: str
    name: str
    state: MachineState
    image: str
    cpus: int
    memory_mib: int
    created_at: float

    @staticmethod
    def of(m: Machine) -> "MachineLine":
        return MachineLine(m.id, m.name, m.state, m.spec.image, m.spec.cpus, m.spec.memory_mib,
                           m.created_at)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to an object in a project; every state change is one."""

    id: int  # increasing: clients resume a stream after the last id they saw
    project_id: str
    kind: str  # "machine.created", "machine.state", "machine.destroyed", ...
    object_id: str
    state: str
    message: str
    time: float
