"""Nodes, and the agents' own API (under /agent/v1, with node credentials)."""

from pydantic import Field

from hutch.model.machine import Desired, MachineState, NodeState
from hutch.wire.common import INT32_MAX, Count, Request, View


class CapacityView(View):
    cpus: int
    memory_mib: int
    disk_mib: int


class NodeView(View):
    id: str
    name: str
    address: str
    runtimes: list[str]
    accel: str
    capacity: CapacityView
    allocated: CapacityView
    labels: dict[str, str]
    domain: str = ""
    state: NodeState
    cordoned: bool = False
    overhead_mib: dict[str, int] = {}
    created_at: float
    last_seen: float


class NodeRegister(Request):
    name: str = Field(min_length=1, max_length=63)
    address: str = Field(min_length=1, max_length=255, description="the agent's API base URL")
    runtimes: list[str]
    accel: str
    cpus: int = Field(ge=1, le=INT32_MAX)
    memory_mib: int = Field(ge=1, le=INT32_MAX)
    disk_mib: Count
    overhead_mib: dict[str, Count] = {}
    labels: dict[str, str] = {}
    domain: str = Field("", max_length=63, description="failure domain: rack, zone, ...")


JOIN_PREFIX = "hjt"


def join_token_parts(token: str) -> tuple[str, int, str, str] | None:
    """A join token is hjt.<expires>.<nonce>.<mac>[.<CA pin>]: (signed body, expires, mac,
    pin), or None when `token` is not one (a plain join secret, say)."""
    parts = token.split(".")
    if (
        len(parts) not in (4, 5)
        or parts[0] != JOIN_PREFIX
        or not (parts[1].isascii() and parts[1].isdigit())
    ):
        return None
    return ".".join(parts[:3]), int(parts[1]), parts[3], parts[4] if len(parts) == 5 else ""


class JoinTokenRequest(Request):
    ttl: float = Field(3600.0, gt=0, le=86400, description="seconds it may be used for")


class JoinToken(View):
    token: str  # for `hutch agent --join-token`; carries the CA pin when the API is HTTPS
    expires_at: float
    ca_pin: str = ""  # sha256 of the CA's public key


class Heartbeat(Request):
    address: str = Field(min_length=1, max_length=255, description="the agent's API URL now")


class NodeRegistered(View):
    node_id: str
    credential: str  # the node's own bearer token for this API
    controller_key: str  # what the controller presents when it calls the node's API


class SignalRequest(Request):
    signal: str


class Assignment(View):
    """A machine as its node must run it: the desired state of one sandbox."""

    machine: str
    project: str  # the project's id: the node's image store keys names by it
    generation: int
    sandbox: str  # the sandbox id: machine id and generation
    desired: Desired
    state: MachineState  # as the controller last recorded it
    image: str
    image_digest: str = ""  # what an earlier start resolved `image` to: run exactly that
    # What the project's images may take (bytes: max_stored, max_unpacked), for a pull on demand.
    image_limits: dict[str, int] = {}
    command: list[str] | None
    entrypoint: list[str] | None
    env: dict[str, str]
    workdir: str
    user: str
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    tty: bool = False  # the main process's terminal and stdin (`hutch run -it`)
    stdin: bool = False
    rows: int = 0  # the terminal's size at start (0: 24 x 80)
    cols: int = 0
    stop_signal: str = ""
    stop_timeout: float = 10.0
    start_after: float = 0.0  # epoch seconds: a restart's backoff


class Assignments(View):
    revision: int  # pass as `after` to wait for the next change
    machines: list[Assignment]


class MachineReport(Request):
    """What a node saw happen to one of its sandboxes."""

    generation: Count
    state: MachineState = Field(strict=False)
    exit_code: int | None = Field(None, ge=-INT32_MAX - 1, le=INT32_MAX)
    oom_killed: bool = False
    error: str = ""
    time: float
    image_digest: str = ""  # with starting: the image `image` resolved to, and whose it was
    image_source: str = ""
