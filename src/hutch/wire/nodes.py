"""Nodes, and the agents' own API (under /agent/v1, with node credentials)."""

import hmac
import secrets
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from hutch.model.errors import Invalid
from hutch.model.machine import Desired, MachineState, NodeState
from hutch.wire.common import INT32_MAX, Count, Request, View
from hutch.wire.networks import GroupRules, NicView, PeerView, PortView


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


@dataclass(frozen=True, slots=True)
class JoinToken:
    """What `hutch agent --join-token` carries: hjt.<expires>.<nonce>.<mac>[.<CA pin>]. The
    controller signs the first three (so nothing is stored: any controller sharing the
    controller secret checks it); the pin, when the API is HTTPS, lets the agent trust the CA."""

    expires: int  # epoch seconds
    nonce: str  # random hex: two tokens made in the same second differ
    mac: str  # HMAC-SHA256 of `signed`, in hex, under the controller secret
    ca_pin: str = ""  # sha256 of the CA's public key ("" over plain HTTP)

    PREFIX: ClassVar[str] = "hjt"

    @classmethod
    def issue(cls, key: bytes, expires: int, ca_pin: str = "") -> "JoinToken":
        """A new token, signed with `key`, valid until `expires`."""
        nonce = secrets.token_hex(8)
        return cls(expires, nonce, _join_mac(key, cls._body(expires, nonce)), ca_pin)

    @classmethod
    def parse(cls, text: str) -> "JoinToken":
        """The token `text` is, or Invalid saying why it is not one (a plain join secret, say).
        The signature is not checked here: see `signed_by`."""
        parts = text.split(".")
        if parts[0] != cls.PREFIX:
            raise Invalid(f"a join token starts with {cls.PREFIX}.")
        if len(parts) not in (4, 5):
            raise Invalid(
                f"a join token has 4 or 5 parts ({cls.PREFIX}.EXPIRES.NONCE.MAC[.PIN]), "
                f"not {len(parts)}"
            )
        if not (parts[1].isascii() and parts[1].isdigit()):
            raise Invalid(f"a join token's expiry is a number of seconds, not {parts[1][:20]!r}")
        return cls(int(parts[1]), parts[2], parts[3], parts[4] if len(parts) == 5 else "")

    @classmethod
    def _body(cls, expires: int, nonce: str) -> str:
        return f"{cls.PREFIX}.{expires}.{nonce}"

    @property
    def signed(self) -> str:
        """The part the MAC covers."""
        return self._body(self.expires, self.nonce)

    def signed_by(self, key: bytes) -> bool:
        """Whether `key` made this token (in constant time)."""
        return hmac.compare_digest(self.mac, _join_mac(key, self.signed))

    def encode(self) -> str:
        token = f"{self.signed}.{self.mac}"
        return f"{token}.{self.ca_pin}" if self.ca_pin else token


def _join_mac(key: bytes, body: str) -> str:
    return hmac.new(key, f"join:{body}".encode(), "sha256").hexdigest()


class JoinTokenRequest(Request):
    ttl: float = Field(3600.0, gt=0, le=86400, description="seconds it may be used for")


class JoinTokenView(View):
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


class VolumeAssignment(View):
    """A volume the sandbox gets (SandboxSpec.volumes): the node's backend says where it is."""

    volume_id: str
    name: str = ""
    target: str
    read_only: bool = False


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
    env: list[str]  # KEY=VALUE, as the process gets them
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
    hold_output: bool = False  # a client follows from the start: hold output for it (log_hold)
    stop_signal: str = ""
    stop_timeout: float = 10.0
    start_after: float = 0.0  # epoch seconds: a restart's backoff
    hostname: str = ""  # the machine's name
    networks: list[NicView] = []  # its NICs, eth0 first (SandboxSpec.networks)
    ports: list[PortView] = []  # published on the node, to eth0's addresses
    security_groups: list[str] = []  # ids, in Assignments.groups
    volumes: list[VolumeAssignment] = []  # on this node's storage backend, in order
    # A machine snapshot of this node's (its id) to continue from instead of booting the image.
    from_snapshot: str = ""
    # A warm pool's template: booted until its guest agent answers, no process run
    # (SandboxSpec.template), to be snapshotted.
    template: bool = False
    # A pool's template snapshot of this node's (its id) the sandbox is restored from, paused:
    # left so while desired is ready, then started as this machine (driver.start(id, spec)).
    pool_snapshot: str = ""
    # Seconds without a connection after which it idles (None: never): the node reports the
    # connections it sees to its published ports (`Activity`).
    idle_s: float | None = None
    # Suspended for idling: a new TCP connection to a published port is held by the node,
    # which asks for a resume (`Wake`) and hands the connection on once the guest answers.
    idled: bool = False


class Assignments(View):
    revision: int  # pass as `after` to wait for the next change
    machines: list[Assignment]
    groups: list[GroupRules] = []  # the security groups the machines are in, or rules name
    peers: list[PeerView] = []  # every placed machine on the networks the node hosts
    # The addresses (IP literals) of every node of the cluster and of the controllers it knows:
    # no machine may reach them, not even through NAT. (Agents that predate it ignore it.)
    infrastructure: list[str] = []


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
    resumed: bool = False  # with running: it continues where it was suspended


class Activity(Request):
    """Machines of the node's (by id) that had connections to their published ports, and
    when it saw them last."""

    machines: dict[str, float] = Field(max_length=100_000)


class Wake(Request):
    """A connection came to a machine's published port while it was suspended for idling."""

    generation: Count
    port: int = Field(ge=1, le=65535, description="the published (host) port")
