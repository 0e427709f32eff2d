"""Machines, their logs and exec sessions, and events."""

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError

from hutch.model.errors import Invalid
from hutch.model.machine import (
    MAX_TIMEOUT,
    Desired,
    GroupPolicy,
    MachineState,
    OnIdle,
    OnTimeout,
    RestartPolicy,
    Strategy,
    validate_env,
)
from hutch.wire.common import Request, View
from hutch.wire.networks import AddressView, PortSpec, PortView


def _env(env: dict[str, str]) -> dict[str, str]:
    try:
        validate_env(env)
    except Invalid as e:
        raise ValueError(e.message) from None  # pydantic's 422, naming the field
    return env


Env = Annotated[dict[str, str], AfterValidator(_env)]


class VolumeSpec(Request):
    """A volume a machine has, from its creation until it is destroyed."""

    volume: str = Field(min_length=1, max_length=64, description="the project's, by name or id")
    path: str = Field(min_length=2, max_length=200, description="where it is mounted inside")
    read_only: bool = False


class VolumeAttachView(View):
    volume: str  # its name
    volume_id: str
    path: str
    read_only: bool = False


class MachineCreate(Request):
    image: str = Field("", max_length=512, description="required unless from_snapshot")
    name: str | None = Field(None, max_length=63)
    command: list[str] | None = Field(None, description="replaces the image's Cmd")
    entrypoint: list[str] | None = Field(None, description="replaces the image's Entrypoint")
    env: Env = {}
    workdir: str = ""
    user: str = ""
    cpus: int = Field(1, ge=1, le=256)
    memory_mib: int = Field(128, ge=1, le=1 << 22)
    disk_mib: int = Field(0, ge=0, le=1 << 24)
    runtime: Literal["microvm", "container"] = "microvm"
    restart: RestartPolicy = Field(RestartPolicy.NO, strict=False)
    labels: dict[str, str] = {}
    auto_destroy: bool = False
    start: bool = True
    group: str = Field("", max_length=63, description="machines placed relative to each other")
    group_policy: GroupPolicy = Field(
        GroupPolicy.NONE,
        strict=False,
        description="affinity: on the node of the group's other machines; anti-affinity: never",
    )
    constraints: dict[str, str] = Field({}, description="node labels the machine needs")
    strategy: Strategy | None = Field(
        None, strict=False, description="spread or pack; default: the project's (spread)"
    )
    tty: bool = Field(
        False, description="a pseudo-terminal for the command's stdin, stdout and stderr"
    )
    stdin: bool = Field(
        False, description="keep the command's stdin open for attached clients (else /dev/null)"
    )
    rows: int = Field(
        0, ge=0, le=0xFFFF, description="with tty: its size at start (0: 24 x 80); attach resizes"
    )
    cols: int = Field(0, ge=0, le=0xFFFF)
    hold_output: bool = Field(
        False,
        description="the caller will follow the output from the start: until a first follower "
        "comes (at most the node's log_hold seconds) none of it is dropped, the command waiting "
        "instead; else a machine nobody reads loses its oldest output beyond the log's bound",
    )
    networks: list[str] | None = Field(
        None,
        max_length=4,
        description="networks to join, by name or id (eth0 first); default: the project's "
        'default network, made on first use; ["none"]: no network',
    )
    ports: list[PortSpec] = Field(
        [], max_length=64, description="ports published on its node (a resource of the node)"
    )
    security_groups: list[str] = Field(
        [], max_length=16, description="security groups (the project's), by name or id"
    )
    volumes: list[VolumeSpec] = Field(
        [],
        max_length=16,
        description="the project's volumes, attached from its creation until it is destroyed "
        "(a volume to one machine at a time); it runs on their node",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT,
        description="seconds it may run (suspended, it does not count) before on_timeout is "
        "done to it; POST .../extend adds to it; default: no limit",
    )
    on_timeout: OnTimeout = Field(
        OnTimeout.STOP,
        strict=False,
        description="what its timeout does: stop, suspend (micro-VMs only) or destroy",
    )
    idle_s: float | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT,
        description="seconds without a connection to its published ports (it needs one) "
        "before on_idle is done to it; default: it never idles",
    )
    on_idle: OnIdle = Field(
        OnIdle.STOP,
        strict=False,
        description="what idling does: stop, or suspend (micro-VMs only; a new connection "
        "to a published TCP port resumes it)",
    )
    from_snapshot: str = Field(
        "",
        max_length=64,
        description="a machine snapshot (name or id) to continue from instead of booting: its "
        "image, shape, process and number of networks (cpus, memory_mib, disk_mib if given must "
        "match); placed on its node",
    )


class MachineView(View):
    id: str
    name: str
    project: str
    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] = {}
    workdir: str = ""
    user: str = ""
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    restart: RestartPolicy
    labels: dict[str, str] = {}
    auto_destroy: bool = False
    group: str = ""
    group_policy: GroupPolicy = GroupPolicy.NONE
    constraints: dict[str, str] = {}
    strategy: Strategy | None = None
    tty: bool = False
    stdin: bool = False
    rows: int = 0
    cols: int = 0
    hold_output: bool = False
    state: MachineState
    desired: Desired
    node: str | None = None
    exit_code: int | None = None
    error: str = ""
    oom_killed: bool = False
    restarts: int = 0
    # The image a node resolved `image` to, once it started: its digest, and whose name it was
    # ("project": the project's own; "catalogue": the operator's).
    image_digest: str = ""
    image_source: str = ""
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    networks: list[str] = []  # names, eth0 first
    addresses: list[AddressView] = []
    ports: list[PortView] = []
    security_groups: list[str] = []  # names
    dns: str = ""  # NAME.PROJECT.internal, on its networks (empty without one)
    volumes: list[VolumeAttachView] = []
    timeout_s: float | None = None
    on_timeout: OnTimeout = OnTimeout.STOP
    extended_s: float = 0.0  # what extend added since it was last started
    time_left_s: float | None = None  # of running, when it was read; None: no timeout
    expires_at: float | None = None  # when it times out if it keeps running; None: it is not
    idle_s: float | None = None
    on_idle: OnIdle = OnIdle.STOP
    active_at: float | None = None  # its node's last sight of a connection to its ports
    idle_at: float | None = None  # when it idles if no connection comes; None: it does not
    idled: bool = False  # suspended (or being suspended) for idling: a connection resumes it
    from_snapshot: str = ""  # the machine snapshot it continues from (its id)


class ExtendRequest(Request):
    seconds: float = Field(
        gt=0, le=MAX_TIMEOUT, description="seconds of running added to its time left"
    )


class Rejected(View):
    node: str
    reason: str  # the first filter that turned the node down


class PlacementView(View):
    """A dry run: where the machine would go now, and why each other node would not take it."""

    placed: bool
    node: str | None = None  # the chosen node's name
    node_id: str | None = None
    candidates: int = 0  # nodes that passed every filter
    rejected: list[Rejected] = []
    reason: str = ""  # when nothing fits: every node's reason in one line
    because: str = ""  # placed where it must be: why (its volumes are on that node)


class StopRequest(Request):
    signal: str = Field("", description="default: the image's stop signal, else SIGTERM")
    timeout: float = Field(10.0, ge=0, le=3600, description="seconds before the kill")


class KillRequest(Request):
    signal: str = "SIGKILL"


class WaitResult(View):
    machine: MachineView
    reached: bool  # False: the timeout passed first, or `final`
    final: bool = False  # it finished, and stays so until someone starts it again


class LogLine(View):
    """One chunk of output (many lines, up to 64 KiB), as a line of the NDJSON log stream; or,
    with `skipped`, how many bytes of the stream the log dropped here before anyone read them."""

    stream: Literal["stdout", "stderr"]
    time: float  # when the chunk's first byte was written
    data: str  # text, with undecodable bytes as U+FFFD; `data_b64` carries exact bytes
    data_b64: str | None = None
    skipped: int = Field(
        0, description="bytes of this stream missing here (the log dropped them); data is empty"
    )


class ExecStart(Request):
    """The first message of an exec session (a WebSocket)."""

    command: list[str] = Field(min_length=1)
    env: Env = {}
    workdir: str = ""
    user: str = ""
    stdin: bool = False
    tty: bool = Field(
        False, description="a pseudo-terminal: stdin, stdout and stderr are one terminal"
    )
    rows: int = Field(0, ge=0, le=0xFFFF, description="the terminal's size (0: 24 x 80)")
    cols: int = Field(0, ge=0, le=0xFFFF)

    @classmethod
    def first_message(cls, text: str) -> "ExecStart":
        """The session's first message, parsed; Invalid (saying why) if it is not one."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise Invalid(
                f"the first message must be an ExecStart: {e.errors()[0]['msg']}"
            ) from None


class EventView(View):
    id: int
    kind: str
    object: str
    state: str
    message: str = ""
    time: float
