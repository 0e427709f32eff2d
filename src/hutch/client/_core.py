"""What `Client` and `AsyncClient` share: every operation as data, every answer parsed once.

An operation is a *plan*: a generator that yields `Call`s and receives each answer's body, then
returns the result (or raises). The sync and async clients only drive plans (send a call, feed
back the body) and stream lines, so the two cannot drift apart:

    def get(ref):
        body = yield Call("GET", f"/v1/machines/{ref}", scoped=True)
        return MachineView.model_validate_json(body)
"""

import base64
import contextlib
import ipaddress
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeAlias, TypedDict, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from hutch.client._calls import PROJECTS, Call, next_page
from hutch.client.errors import (
    Invalid,
    PullFailed,
    StartFailed,
    Unavailable,
    Unreachable,
    WaitTimeout,
    error_for,
)
from hutch.model.addressing import Rule
from hutch.model.errors import Invalid as ModelInvalid
from hutch.model.machine import NOT_STARTED, MachineState, RestartPolicy, VolumeAttach
from hutch.model.network import PortMapping
from hutch.model.tenancy import Role
from hutch.model.volume import parse_size
from hutch.wire.billing import (
    BudgetSet,
    BudgetView,
    CreditCreate,
    CreditView,
    InvoiceView,
    PriceBookDoc,
    PricesView,
    UsageView,
)
from hutch.wire.common import Page, Problem, Request
from hutch.wire.images import ImagePull, ImageRemoved, ImageView, PullEvent
from hutch.wire.machines import (
    EventView,
    ExtendRequest,
    KillRequest,
    LogLine,
    MachineCreate,
    MachineView,
    PlacementView,
    StopRequest,
    VolumeSpec,
    WaitResult,
)
from hutch.wire.networks import (
    NetworkCreate,
    NetworkView,
    PortSpec,
    RuleCreate,
    SecurityGroupCreate,
    SecurityGroupView,
)
from hutch.wire.nodes import JoinTokenRequest, JoinTokenView, NodeView
from hutch.wire.pools import PoolSet, PoolView
from hutch.wire.snapshots import MachineSnapshotCreate, MachineSnapshotView
from hutch.wire.telemetry import MachineMetricsView
from hutch.wire.tenancy import (
    ProjectCreate,
    ProjectView,
    QuotaReport,
    QuotaSpec,
    StrategySpec,
    TokenCreate,
    TokenCreated,
)
from hutch.wire.volumes import (
    SnapshotCreate,
    SnapshotView,
    VolumeCreate,
    VolumeExtend,
    VolumeView,
)

T = TypeVar("T")
V = TypeVar("V", bound=BaseModel)
R = TypeVar("R", bound=Request)

MAX_WAIT = 300.0  # the server holds a wait at most this long; longer waits loop
CHUNK = 1 << 16

Plan: TypeAlias = Generator["Call", bytes, T]
MachineRef: TypeAlias = str | MachineView  # a machine's id or name, or the machine itself
ArchiveSource: TypeAlias = str | os.PathLike[str] | bytes | IO[bytes]


def check(status: int, body: bytes) -> None:
    """Raise the error a problem+json answer stands for; nothing below 400."""
    if status < 400:
        return
    try:
        problem = Problem.model_validate_json(body)
    except ValidationError:
        raise error_for(status, "", body.decode(errors="replace")[:300]) from None
    raise error_for(status, problem.title, problem.detail, problem.param)


def finish(plan: Plan[T], answer: Callable[[Call], bytes]) -> T:
    """Run `plan`, answering its calls with `answer` (the sync client's driver)."""
    try:
        call = next(plan)
        while True:
            call = plan.send(answer(call))
    except StopIteration as done:
        result: T = done.value
        return result


def build(model: type[R], **fields: Any) -> R:
    """A request body, refused here exactly as the server would (422) when it is invalid."""
    try:
        return model(**fields)
    except ValidationError as e:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or model.__name__}: {err['msg']}"
            for err in e.errors()
        )
        raise Invalid(detail, 422, "Does not match the schema") from None


def argv(command: Sequence[str] | None, what: str = "command") -> list[str] | None:
    # A str is a Sequence[str] too: refuse it rather than run each character as an argument.
    if isinstance(command, str):
        raise Invalid(f"{what} is a list of arguments, e.g. ['sh', '-c', 'echo hi'], not a string")
    return None if command is None else list(command)


def ref_of(ref: MachineRef) -> str:
    return ref.id if isinstance(ref, MachineView) else ref


def _machine(ref: MachineRef, action: str = "") -> str:
    return f"/v1/machines/{quote(ref_of(ref), safe='')}" + (f"/{action}" if action else "")


# -- pages --------------------------------------------------------------------------------------


def page(call: Call, kind: type[Page[V]]) -> Plan[tuple[list[V], Call | None]]:
    """One page of a listing, and the call for the next page (None after the last)."""
    result = kind.model_validate_json((yield call))
    return result.items, next_page(call, result.next)


# -- machines -----------------------------------------------------------------------------------


class MachineOptions(TypedDict, total=False):
    """How to run a machine (MachineCreate); what is left out takes the server's default."""

    name: str  # unique in the project; default: the machine's id
    entrypoint: Sequence[str]  # replaces the image's Entrypoint (and drops its Cmd)
    env: Mapping[str, str]  # added to the image's Env
    workdir: str  # default: the image's WorkingDir
    user: str  # USER[:GROUP] or UID[:GID]; default: the image's User
    cpus: int  # vCPUs (default 1)
    memory_mib: int  # RAM of the VM, or the container's limit (default 128)
    disk_mib: int  # writable space over the image (default: half the memory)
    runtime: str  # "microvm" (default: a VM each) or "container" (crun, for trusted code)
    restart: RestartPolicy | str  # "no" (default), "on-failure", "always"
    labels: Mapping[str, str]  # for filtering: machines.list(labels={...})
    auto_destroy: bool  # destroyed as soon as it ends
    start: bool  # False: record it without starting it (start it later)
    group: str  # machines placed relative to each other (see group_policy)
    group_policy: str  # "affinity" (on the group's node) or "anti-affinity" (never two on one)
    constraints: Mapping[str, str]  # node labels it needs
    strategy: str  # "spread" or "pack"; default: the project's
    tty: bool  # a pseudo-terminal for the command (attach to type into it: Machines.attach)
    stdin: bool  # keep the command's stdin open for attached clients
    rows: int  # with tty: the terminal's size at start (default 24 x 80)
    cols: int
    # The caller follows the output from the start (logs(follow=True) right after): the node
    # keeps it until a first follower comes (at most its log_hold seconds), the command
    # waiting, instead of dropping the oldest. `run` sets it unless given; `create` does not.
    hold_output: bool
    networks: Sequence[str]  # networks by name (eth0 first); default: "default"; ["none"]
    ports: Sequence[str | Mapping[str, Any]]  # "[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]" or PortSpec
    security_groups: Sequence[str]  # the project's security groups, by name
    # The project's volumes: "NAME:/PATH[:ro]" or VolumeSpec's fields ({"volume", "path",
    # "read_only"}); attached until the machine is destroyed, one machine at a time.
    volumes: Sequence[str | Mapping[str, Any]]
    # Seconds it may run (time suspended does not count) before `on_timeout` ("stop", the
    # default, "suspend" for micro-VMs, or "destroy") is done to it; Machines.extend adds.
    timeout_s: float
    on_timeout: str
    # Seconds without a connection to its published ports (it needs one) before `on_idle`
    # ("stop", the default, or "suspend" for micro-VMs: a connection resumes it) is done.
    idle_s: float
    on_idle: str
    # A machine snapshot (name or id) to continue from instead of booting an image (give no
    # image then): its image, shape, process and networks; it runs on the snapshot's node.
    from_snapshot: str


class CommandOptions(TypedDict, total=False):
    """How a command runs in a machine: what `exec` and `exec_stream` both take."""

    env: Mapping[str, str] | None  # added to the machine's environment
    workdir: str  # default: the machine's
    user: str  # USER[:GROUP] or UID[:GID]; default: the machine's


class ExecOptions(CommandOptions, total=False):
    """The keyword arguments of `Machines.exec`, besides the command."""

    stdin: bytes | None  # fed to the command, then closed


class StreamOptions(CommandOptions, total=False):
    """The keyword arguments of `Machines.exec_stream`, besides the command."""

    stdin: bool  # the session may write() to the command's stdin
    tty: bool  # a pseudo-terminal
    size: tuple[int, int] | None  # rows, columns (default 24 x 80)


def machine_create(
    image: str, command: Sequence[str] | None, options: MachineOptions
) -> MachineCreate:
    fields: dict[str, Any] = {**options, **({"image": image} if image else {})}
    if command is not None:
        fields["command"] = argv(command)
    if "entrypoint" in options:
        fields["entrypoint"] = argv(options["entrypoint"], "entrypoint")
    for key in ("env", "labels", "constraints"):
        if key in fields:
            fields[key] = dict(fields[key])
    for key in ("networks", "security_groups"):
        if key in fields:
            fields[key] = [fields[key]] if isinstance(fields[key], str) else list(fields[key])
    if "ports" in fields:
        fields["ports"] = [port_spec(p) for p in fields["ports"]]
    if "volumes" in fields:
        vols = fields["volumes"]
        fields["volumes"] = [volume_spec(v) for v in ([vols] if isinstance(vols, str) else vols)]
    return build(MachineCreate, **fields)


def volume_spec(volume: str | Mapping[str, Any]) -> VolumeSpec:
    """A volume to attach from `-v`'s text (NAME:/PATH or NAME:/PATH:ro) or its fields."""
    if not isinstance(volume, str):
        return build(VolumeSpec, **volume)
    try:
        v = VolumeAttach.parse(volume)
    except ModelInvalid as e:
        raise Invalid(e.message) from None
    return build(VolumeSpec, volume=v.volume, path=v.target, read_only=v.read_only)


def port_spec(port: str | Mapping[str, Any]) -> PortSpec:
    """A published port from `-p`'s text ([HOST_IP:]HOST_PORT:PORT[/tcp|/udp]) or its fields."""
    if not isinstance(port, str):
        return build(PortSpec, **port)
    try:
        p = PortMapping.parse(port)
    except ModelInvalid as e:
        raise Invalid(e.message) from None
    return build(PortSpec, host_port=p.host_port, port=p.port, protocol=p.protocol,
                 host_ip=p.host_ip)  # fmt: skip


# -- networks and security groups ---------------------------------------------------------------


def _network(ref: str) -> str:
    return f"/v1/networks/{quote(ref, safe='')}"


def _group(ref: str, *rest: str) -> str:
    return "/".join(
        (f"/v1/security-groups/{quote(ref, safe='')}", *(quote(r, safe="") for r in rest))
    )


def create_network(
    name: str, subnet: str, egress: str, egress_allow: Sequence[str], subnet6: str
) -> Plan[NetworkView]:
    body = build(NetworkCreate, name=name, subnet=subnet, subnet6=subnet6, egress=egress,
                 egress_allow=list(egress_allow))  # fmt: skip
    return NetworkView.model_validate_json(
        (yield Call("POST", "/v1/networks", body=body, scoped=True))
    )


def network(ref: str) -> Plan[NetworkView]:
    return NetworkView.model_validate_json((yield Call("GET", _network(ref), scoped=True)))


def delete_network(ref: str) -> Plan[None]:
    yield Call("DELETE", _network(ref), scoped=True)


def create_group(name: str) -> Plan[SecurityGroupView]:
    body = build(SecurityGroupCreate, name=name)
    call = Call("POST", "/v1/security-groups", body=body, scoped=True)
    return SecurityGroupView.model_validate_json((yield call))


def group(ref: str) -> Plan[SecurityGroupView]:
    return SecurityGroupView.model_validate_json((yield Call("GET", _group(ref), scoped=True)))


def delete_group(ref: str) -> Plan[None]:
    yield Call("DELETE", _group(ref), scoped=True)


def add_rule(ref: str, body: RuleCreate) -> Plan[SecurityGroupView]:
    call = Call("POST", _group(ref, "rules"), body=body, scoped=True)
    return SecurityGroupView.model_validate_json((yield call))


def remove_rule(ref: str, rule_id: str) -> Plan[SecurityGroupView]:
    call = Call("DELETE", _group(ref, "rules", rule_id), scoped=True)
    return SecurityGroupView.model_validate_json((yield call))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_prefix(text: str) -> int:
    return ipaddress.ip_address(text).max_prefixlen


def rule_create(
    direction: str,
    protocol: str = "any",
    ports: str | int | tuple[int, int] = "",
    remote: str = "",
) -> RuleCreate:
    """A rule from its parts: `ports` 80, "8000-8080" or (low, high) ("": all); `remote` a
    CIDR (it has a '/') or a security group's name."""
    if isinstance(ports, tuple):
        low, high = ports
    else:
        try:
            low, high = Rule.parse_ports(str(ports))
        except ModelInvalid as e:
            raise Invalid(e.message) from None
    if not remote:
        raise Invalid("a rule needs a remote: a CIDR ('0.0.0.0/0' for anyone) or a security group")
    if "/" not in remote and _is_address(remote):
        alone = f"{remote}/{_host_prefix(remote)}"
        raise Invalid(f"remote {remote!r} is an address, not a CIDR: {alone!r} for it alone")
    where = {"remote_cidr": remote} if "/" in remote else {"remote_group": remote}
    return build(RuleCreate, direction=direction, protocol=protocol, port_min=low,
                 port_max=high, **where)  # fmt: skip


def create(body: MachineCreate) -> Plan[MachineView]:
    return MachineView.model_validate_json(
        (yield Call("POST", "/v1/machines", body=body, scoped=True))
    )


def explain(body: MachineCreate) -> Plan[PlacementView]:
    """A dry run: where the machine would go, and why the other nodes would not take it."""
    call = Call("POST", "/v1/machines", params=(("dry_run", "true"),), body=body, scoped=True)
    return PlacementView.model_validate_json((yield call))


def node(method: str, ref: str, action: str = "") -> Plan[NodeView]:
    path = f"/v1/nodes/{quote(ref, safe='')}" + (f"/{action}" if action else "")
    return NodeView.model_validate_json((yield Call(method, path)))


def remove_node(ref: str) -> Plan[None]:
    yield Call("DELETE", f"/v1/nodes/{quote(ref, safe='')}")


def join_token(ttl: float) -> Plan[JoinTokenView]:
    body = build(JoinTokenRequest, ttl=ttl)
    made = yield Call("POST", "/v1/nodes/join-tokens", body=body)
    return JoinTokenView.model_validate_json(made)


def run(body: MachineCreate) -> Plan[MachineView]:
    """Create and start; return once the machine has started (see wait). A machine that could
    not start raises StartFailed (it is left, failed, for `inspect`)."""
    update: dict[str, Any] = {"start": True}
    if "hold_output" not in body.model_fields_set:
        update["hold_output"] = True  # run, then follow its logs: none of the start is lost
    machine = yield from create(body.model_copy(update=update))
    if machine.state in NOT_STARTED:
        machine = yield from wait(machine.id, "started", None)
    if machine.state is MachineState.FAILED:
        why = f": {machine.error}" if machine.error else ""
        raise StartFailed(f"machine {machine.name} failed to start{why}", machine)
    return machine


def machine(
    method: str,
    ref: MachineRef,
    action: str = "",
    body: Request | None = None,
    params: tuple[tuple[str, str], ...] = (),
) -> Plan[MachineView]:
    """A request about one machine that answers the machine (get, start, stop, kill, ...)."""
    call = Call(method, _machine(ref, action), params=params, body=body, scoped=True)
    return MachineView.model_validate_json((yield call))


def stop(ref: MachineRef, signal: str, timeout: float) -> Plan[MachineView]:
    return machine("POST", ref, "stop", build(StopRequest, signal=signal, timeout=timeout))


def extend(ref: MachineRef, seconds: float) -> Plan[MachineView]:
    return machine("POST", ref, "extend", build(ExtendRequest, seconds=seconds))


def pause_or_continue(
    ref: MachineRef, action: str, until: str | None, timeout: float | None
) -> Plan[MachineView]:
    """`suspend` or `resume` the machine; with `until`, then wait for that state."""
    m = yield from machine("POST", ref, action)
    if until is None or m.state == until:
        return m
    return (yield from wait(m.id, until, timeout))


def kill(ref: MachineRef, signal: str) -> Plan[MachineView]:
    return machine("POST", ref, "kill", build(KillRequest, signal=signal))


def metrics(
    ref: MachineRef, since: float | None = None, step: float | None = None
) -> Plan[MachineMetricsView]:
    """The machine's metric history (cumulative counters per point)."""
    params = tuple((k, str(v)) for k, v in (("since", since), ("step", step)) if v is not None)
    call = Call("GET", _machine(ref, "metrics"), params=params, scoped=True)
    return MachineMetricsView.model_validate_json((yield call))


def delete(ref: MachineRef, force: bool) -> Plan[None]:
    params = (("force", "true"),) if force else ()
    yield Call("DELETE", _machine(ref), params=params, scoped=True)


def _wait_once(ref: MachineRef, state: str, timeout: float) -> Plan[WaitResult]:
    params = (("state", str(state)), ("timeout", f"{timeout:.3f}"))
    call = Call("GET", _machine(ref, "wait"), params=params, scoped=True, hold=timeout)
    return WaitResult.model_validate_json((yield call))


def wait(
    ref: MachineRef,
    state: str,
    timeout: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> Plan[MachineView]:
    """Wait for `state` past the server's cap, until `timeout` (None: for ever). `state` is a
    MachineState, "finished" (exited, failed or destroyed), or "started": running or beyond,
    when its logs and exec are there (a machine that ran and ended has started too)."""
    deadline = None if timeout is None else clock() + timeout
    server_state = MachineState.RUNNING if state == "started" else state
    while True:
        left = MAX_WAIT if deadline is None else min(max(deadline - clock(), 0.0), MAX_WAIT)
        result = yield from _wait_once(ref, server_state, left)
        m = result.machine
        if result.reached or (state == "started" and m.state not in NOT_STARTED):
            return m
        if result.final:
            raise Unreachable(f"machine {m.name} is {m.state} and will not be {state}")
        if deadline is not None and clock() >= deadline:
            raise WaitTimeout(f"machine {m.name} is {m.state}, not {state}, after {timeout:g} s")


def logs(ref: MachineRef, follow: bool, tail: int | None, since: float | None) -> Call:
    params = [("follow", "true" if follow else "false")]
    if tail is not None:
        params.append(("tail", str(tail)))
    if since is not None:
        params.append(("since", repr(since)))
    return Call(
        "GET",
        _machine(ref, "logs"),
        params=tuple(params),
        scoped=True,
        hold=None if follow else 0.0,
    )


def log_line(line: str) -> LogLine | None:
    return LogLine.model_validate_json(line) if line else None


def log_bytes(line: LogLine) -> bytes:
    """The exact bytes of a log line (`data` is text, with U+FFFD for undecodable bytes)."""
    return base64.b64decode(line.data_b64) if line.data_b64 is not None else line.data.encode()


# -- events -------------------------------------------------------------------------------------


def events(after: int) -> Call:
    return Call("GET", "/v1/events", params=(("after", str(after)),), scoped=True, hold=None)


class EventDecoder:
    """Server-sent events to EventViews, fed one line at a time (comments are keepalives)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> EventView | None:
        if not line:  # a blank line ends an event
            data, self._data = self._data, []
            return EventView.model_validate_json("\n".join(data)) if data else None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None


# -- images -------------------------------------------------------------------------------------


def _image(ref: str) -> str:
    return f"/v1/images/{quote(ref, safe='')}"


def image(ref: str) -> Plan[ImageView]:
    return ImageView.model_validate_json((yield Call("GET", _image(ref), scoped=True)))


def delete_image(ref: str, public: bool, force: bool = False) -> Plan[ImageRemoved]:
    params = (*((("public", "true"),) if public else ()), *((("force", "true"),) if force else ()))
    body = yield Call("DELETE", _image(ref), params=params, scoped=True)
    return ImageRemoved.model_validate_json(body)


def pull(ref: str, public: bool) -> Call:
    body = build(ImagePull, ref=ref, public=public)
    return Call("POST", "/v1/images/pull", body=body, scoped=True, hold=None)


class PullFeed:
    """A pull's NDJSON stream: progress events to `progress`, then the image (or the error)."""

    def __init__(self, progress: Callable[[PullEvent], object] | None) -> None:
        self._progress = progress
        self._image: ImageView | None = None

    def feed(self, line: str) -> None:
        if not line:
            return
        event = PullEvent.model_validate_json(line)
        if event.error is not None:
            raise PullFailed(event.error, 502, "Pull failed")
        if event.image is not None:
            self._image = event.image  # each node sends one: they are the same image
        elif self._progress is not None:
            self._progress(event)

    def result(self) -> ImageView:
        if self._image is None:
            raise Unavailable("the pull ended without an image: see the controller's log")
        return self._image


def import_call(names: Sequence[str], public: bool, content: object) -> Plan[list[ImageView]]:
    if isinstance(names, str):
        names = [names]
    params = (*(("name", n) for n in names), ("public", "true" if public else "false"))
    call = Call("POST", "/v1/images/import", params=params, content=content, scoped=True, hold=None)
    return [ImageView.model_validate(i) for i in json.loads((yield call))]


@contextlib.contextmanager
def archive(source: ArchiveSource) -> Iterator[Iterator[bytes]]:
    """The bytes of an image archive, in chunks: from a file, a directory (an OCI layout, sent
    as an OCI archive; a root directory, sent as its tar, which the controller packs), bytes,
    or an open binary file."""
    if isinstance(source, bytes):
        yield iter((source,))
        return
    if not isinstance(source, str | os.PathLike):
        yield _chunks(source)
        return
    path = Path(source)
    if path.is_dir():
        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w") as tar:
                for child in sorted(path.iterdir()):
                    tar.add(child, arcname=child.name)
            spool.seek(0)
            yield _chunks(spool)
        return
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise Invalid(f"{path} does not exist") from None
    with f:
        yield _chunks(f)


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


# -- machine snapshots ---------------------------------------------------------------------------


def _machine_snapshot(ref: str) -> str:
    return f"/v1/snapshots/{quote(ref, safe='')}"


def create_machine_snapshot(machine: MachineRef, name: str) -> Plan[MachineSnapshotView]:
    body = build(MachineSnapshotCreate, machine=ref_of(machine), name=name)
    call = Call("POST", "/v1/snapshots", body=body, scoped=True, hold=None)
    return MachineSnapshotView.model_validate_json((yield call))


def machine_snapshot(ref: str) -> Plan[MachineSnapshotView]:
    call = Call("GET", _machine_snapshot(ref), scoped=True)
    return MachineSnapshotView.model_validate_json((yield call))


def delete_machine_snapshot(ref: str) -> Plan[None]:
    yield Call("DELETE", _machine_snapshot(ref), scoped=True, hold=None)


# -- warm pools ---------------------------------------------------------------------------------


def _pool(ref: str) -> str:
    return f"/v1/pools/{quote(ref, safe='')}"


def set_pool(image: str, min_ready: int, **shape: Any) -> Plan[PoolView]:
    body = build(PoolSet, image=image, min_ready=min_ready, **shape)
    call = Call("PUT", "/v1/pools", body=body, scoped=True, hold=None)
    return PoolView.model_validate_json((yield call))


def pool(ref: str) -> Plan[PoolView]:
    return PoolView.model_validate_json((yield Call("GET", _pool(ref), scoped=True)))


def delete_pool(ref: str) -> Plan[None]:
    yield Call("DELETE", _pool(ref), scoped=True, hold=None)


# -- prices, usage, invoices, budgets ----------------------------------------------------------

Instant: TypeAlias = float | str  # epoch seconds, or an ISO 8601 date or time


def usage_call(
    since: Instant | None, until: Instant | None, by: str | None, format: str = "json"
) -> Call:
    params = [(k, str(v)) for k, v in (("since", since), ("until", until), ("by", by)) if v]
    return Call("GET", "/v1/usage", params=(*params, ("format", format)), scoped=True)


def usage(since: Instant | None, until: Instant | None, by: str | None) -> Plan[UsageView]:
    return UsageView.model_validate_json((yield usage_call(since, until, by)))


def text(call: Call) -> Plan[str]:
    """The answer to `call` as text (CSV, HTML)."""
    return (yield call).decode()


def _invoice(ref: str) -> str:
    return f"/v1/invoices/{quote(ref, safe='')}"


INVOICES = Call("GET", "/v1/invoices", scoped=True)


def invoice(ref: str) -> Plan[InvoiceView]:
    return InvoiceView.model_validate_json((yield Call("GET", _invoice(ref), scoped=True)))


def invoice_html(ref: str) -> Call:
    return Call("GET", _invoice(ref), params=(("format", "html"),), scoped=True)


def prices() -> Plan[PricesView | PriceBookDoc]:
    """A project's effective prices when the client acts in one, else the whole book."""
    body = yield Call("GET", "/v1/prices", scoped=True)
    doc = json.loads(body)
    return PricesView.model_validate(doc) if "units" in doc else PriceBookDoc.model_validate(doc)


def set_prices(book: Mapping[str, Any]) -> Plan[PriceBookDoc]:
    body = build(PriceBookDoc, **book)
    return PriceBookDoc.model_validate_json((yield Call("PUT", "/v1/prices", body=body)))


def credit(project: str, amount: str, reason: str) -> Plan[CreditView]:
    body = build(CreditCreate, amount=amount, reason=reason)
    return CreditView.model_validate_json((yield Call("POST", _project(project, "credits"),
                                                      body=body)))  # fmt: skip


def budget(name: str | None, default: str | None) -> Plan[BudgetView]:
    project = yield from project_name(name, default)
    return BudgetView.model_validate_json((yield Call("GET", _project(project, "budget"))))


def set_budget(project: str, amount: str, stop: bool) -> Plan[BudgetView]:
    body = build(BudgetSet, amount=amount, stop=stop)
    return BudgetView.model_validate_json((yield Call("PUT", _project(project, "budget"),
                                                      body=body)))  # fmt: skip


def delete_budget(project: str) -> Plan[None]:
    yield Call("DELETE", _project(project, "budget"))


# -- volumes ------------------------------------------------------------------------------------


def _volume(ref: str, *rest: str) -> str:
    return "/".join((f"/v1/volumes/{quote(ref, safe='')}", *(quote(r, safe="") for r in rest)))


def size_bytes(size: int | str) -> int:
    """Bytes of `size`: an int as it is, a string like "10G" (binary units: G is GiB)."""
    if isinstance(size, int):
        return size
    try:
        return parse_size(size)
    except ModelInvalid as e:
        raise Invalid(e.message, 400, "Invalid") from None


def create_volume(name: str, size: int | str, fs: str, node: str, source: str) -> Plan[VolumeView]:
    body = build(VolumeCreate, name=name, size_bytes=size_bytes(size) if size else 0, fs=fs,
                 node=node, source=source)  # fmt: skip
    call = Call("POST", "/v1/volumes", body=body, scoped=True, hold=None)
    return VolumeView.model_validate_json((yield call))


def volume(ref: str) -> Plan[VolumeView]:
    return VolumeView.model_validate_json((yield Call("GET", _volume(ref), scoped=True)))


def delete_volume(ref: str) -> Plan[None]:
    yield Call("DELETE", _volume(ref), scoped=True, hold=None)


def extend_volume(ref: str, size: int | str) -> Plan[VolumeView]:
    body = build(VolumeExtend, size_bytes=size_bytes(size))
    call = Call("POST", _volume(ref, "extend"), body=body, scoped=True, hold=None)
    return VolumeView.model_validate_json((yield call))


def snapshots_call(ref: str) -> Call:
    return Call("GET", _volume(ref, "snapshots"), scoped=True)


def create_snapshot(ref: str, name: str) -> Plan[SnapshotView]:
    body = build(SnapshotCreate, name=name) if name else build(SnapshotCreate)
    call = Call("POST", _volume(ref, "snapshots"), body=body, scoped=True, hold=None)
    return SnapshotView.model_validate_json((yield call))


def delete_snapshot(ref: str, snap: str) -> Plan[None]:
    yield Call("DELETE", _volume(ref, "snapshots", snap), scoped=True, hold=None)


def restore_volume(ref: str, snap: str) -> Plan[VolumeView]:
    call = Call("POST", _volume(ref, "snapshots", snap, "restore"), scoped=True, hold=None)
    return VolumeView.model_validate_json((yield call))


def export_call(ref: str, snapshot: str = "") -> Call:
    params = (("snapshot", snapshot),) if snapshot else ()
    return Call("GET", _volume(ref, "export"), params=params, scoped=True, hold=None)


def import_volume(name: str, node: str, content: object) -> Plan[VolumeView]:
    params = (("name", name), *((("node", node),) if node else ()))
    call = Call("POST", "/v1/volumes/import", params=params, content=content, scoped=True,
                hold=None)  # fmt: skip
    return VolumeView.model_validate_json((yield call))


@contextlib.contextmanager
def volume_source(source: "str | os.PathLike[str] | IO[bytes]") -> Iterator[Iterator[bytes]]:
    """The chunks of an export: from a path or an open binary file."""
    if not isinstance(source, str | os.PathLike):
        yield _chunks(source)
        return
    try:
        f = Path(source).open("rb")  # noqa: SIM115 - closed below, after the check
    except FileNotFoundError:
        raise Invalid(f"{source} does not exist") from None
    with f:
        yield _chunks(f)


# -- projects, quotas, tokens, nodes ------------------------------------------------------------


def _project(name: str, what: str = "") -> str:
    return f"/v1/projects/{quote(name, safe='')}" + (f"/{what}" if what else "")


def project_name(name: str | None, default: str | None) -> Plan[str]:
    """The project a call is about: the one given, else the client's, else the token's own
    (a project token sees exactly one project)."""
    if chosen := name or default:
        return chosen
    projects, _ = yield from page(PROJECTS, Page[ProjectView])
    if len(projects) != 1:
        raise Invalid("name a project: this token sees several (or none)")
    return projects[0].name


def create_project(name: str, quota: QuotaSpec | None, strategy: str) -> Plan[ProjectView]:
    body = build(ProjectCreate, name=name, strategy=strategy, **({"quota": quota} if quota else {}))
    return ProjectView.model_validate_json((yield Call("POST", "/v1/projects", body=body)))


def get_project(name: str) -> Plan[ProjectView]:
    return ProjectView.model_validate_json((yield Call("GET", _project(name))))


def delete_project(name: str) -> Plan[None]:
    yield Call("DELETE", _project(name))


def quota(name: str | None, default: str | None) -> Plan[QuotaReport]:
    project = yield from project_name(name, default)
    return QuotaReport.model_validate_json((yield Call("GET", _project(project, "quota"))))


def set_strategy(name: str, strategy: str) -> Plan[ProjectView]:
    call = Call("PUT", _project(name, "strategy"), body=build(StrategySpec, strategy=strategy))
    return ProjectView.model_validate_json((yield call))


class QuotaLimits(TypedDict, total=False):
    """A project's limits (`Projects.set_quota`): each one left out or None is unlimited."""

    machines: int | None
    vcpus: int | None
    memory_mib: int | None
    disk_mib: int | None
    images_mib: int | None  # its images on each node, as stored
    images_unpacked_mib: int | None  # the same, unpacked
    volume_gib: int | None  # the sum of its volumes' sizes
    snapshot_gib: int | None  # the sum of its volume and machine snapshots' sizes


def set_quota(name: str, limits: QuotaLimits) -> Plan[QuotaReport]:
    spec = build(QuotaSpec, **limits)
    call = Call("PUT", _project(name, "quota"), body=spec)
    return QuotaReport.model_validate_json((yield call))


def tokens(name: str | None, default: str | None) -> Plan[Call]:
    project = yield from project_name(name, default)
    return Call("GET", _project(project, "tokens"))


def create_token(
    name: str | None, default: str | None, role: Role | str, label: str, expires_in: float | None
) -> Plan[TokenCreated]:
    body = build(TokenCreate, role=role, name=label, expires_in=expires_in)
    project = yield from project_name(name, default)
    call = Call("POST", _project(project, "tokens"), body=body)
    return TokenCreated.model_validate_json((yield call))


def revoke_token(name: str | None, default: str | None, token_id: str) -> Plan[None]:
    project = yield from project_name(name, default)
    yield Call("DELETE", _project(project, f"tokens/{quote(token_id, safe='')}"))


def raw(method: str, path: str, params: Mapping[str, str] | None, body: Any) -> Plan[Any]:
    answer = yield Call(method, path, params=tuple((params or {}).items()), json=body)
    return json.loads(answer) if answer else None
