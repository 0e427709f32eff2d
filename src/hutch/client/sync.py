"""`hutch.Client`: the blocking SDK over the controller's HTTP API (docs/api.md).

import hutch

with hutch.Client() as client:               # the current context, or HUTCH_URL/HUTCH_TOKEN
    m = client.machines.run("busybox", ["sh", "-c", "echo hello"], runtime="container")
    client.machines.wait(m)
    for line in client.machines.logs(m):
        print(line.stream, line.data, end="")  # stdout hello
"""

import builtins
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, TypeVar, Unpack

import httpx
from pydantic import BaseModel

from hutch.client import _core as core
from hutch.client._calls import (
    GROUPS,
    IMAGES,
    NETWORKS,
    NODES,
    POOLS,
    PROJECTS,
    SNAPSHOTS,
    VOLUMES,
    Call,
    listing,
)
from hutch.client._connection import Connection, Resource
from hutch.client._core import ArchiveSource, MachineOptions, MachineRef, Plan
from hutch.client.exec import AttachSession, ExecResult, ExecSession, attaching, opening
from hutch.model.tenancy import Role
from hutch.wire.billing import (
    BudgetView,
    CreditView,
    InvoiceView,
    PriceBookDoc,
    PricesView,
    UsageView,
)
from hutch.wire.common import Page
from hutch.wire.images import ImageRemoved, ImageView, PullEvent
from hutch.wire.machines import EventView, LogLine, MachineView, PlacementView
from hutch.wire.networks import NetworkView, SecurityGroupView
from hutch.wire.nodes import JoinTokenView, NodeView
from hutch.wire.pools import PoolView
from hutch.wire.snapshots import MachineSnapshotView
from hutch.wire.telemetry import MachineMetricsView
from hutch.wire.tenancy import ProjectView, QuotaReport, QuotaSpec, TokenCreated, TokenView
from hutch.wire.volumes import SnapshotView, VolumeView

T = TypeVar("T")
V = TypeVar("V", bound=BaseModel)


class Client(Connection[httpx.Client]):
    """A connection to a hutch controller.

    `url`, `token` and `project` default to HUTCH_URL, HUTCH_TOKEN and HUTCH_PROJECT, then to the
    current context (`hutch up` and `hutch login` save one); with none of them, the constructor
    raises hutch.model.errors.Invalid saying how to get one. `project` is where a system token
    acts (a project token acts in its own). `timeout` bounds each request, in seconds (long
    polls and streams wait as long as they need). Refusals raise `hutch.client.ApiError`
    subclasses (NotFound, Conflict, Forbidden, ...); a controller that cannot be reached
    raises `Unavailable`.

        with Client("http://127.0.0.1:7878", token, project="default") as client:
            for m in client.machines.list():   # also: client.images, .projects, .nodes
                print(m.name, m.state)
    """

    _transport = httpx.Client

    def _mount(self) -> None:
        self.machines = Machines(self)
        self.images = Images(self)
        self.projects = Projects(self)
        self.nodes = Nodes(self)
        self.networks = Networks(self)
        self.security_groups = SecurityGroups(self)
        self.volumes = Volumes(self)
        self.snapshots = Snapshots(self)
        self.pools = Pools(self)
        self.usage = Usage(self)
        self.invoices = Invoices(self)
        self.prices = Prices(self)

    def events(self, after: int = 0) -> Generator[EventView, None, None]:
        """The project's events after event id `after`, as they happen (a state change of a
        machine is one). It never ends by itself: `close()` it (or drop it) to hang up, and
        resume later with `after=last.id`.

            for event in client.events():
                print(event.object, event.state, event.message)
        """
        decoder = core.EventDecoder()
        for line in self._lines(core.events(after)):
            if (event := decoder.feed(line)) is not None:
                yield event

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """Any API call, for what the SDK does not wrap: the decoded JSON answer (None when
        empty); refusals raise like every call. No `project` is added to `params` for you.

            client.request("GET", "/v1/machines", params={"project": "default", "limit": "5"})
        """
        return self._run(core.raw(method, path, params, json))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transport: plans in, answers out ----------------------------------------------------------

    def _send(self, call: Call) -> bytes:
        with self._reaching():
            response = self._http.request(**self._endpoint.http_args(call))
        core.check(response.status_code, response.content)
        return response.content

    def _run(self, plan: Plan[T]) -> T:
        return core.finish(plan, self._send)

    def _paged(self, call: Call | None, kind: type[Page[V]]) -> Iterator[V]:
        while call is not None:
            items, call = self._run(core.page(call, kind))
            yield from items

    def _bytes(self, call: Call) -> Iterator[bytes]:
        with self._reaching(), self._http.stream(**self._endpoint.http_args(call)) as response:
            if response.status_code >= 400:
                core.check(response.status_code, response.read())
            yield from response.iter_bytes(core.CHUNK)

    def _lines(self, call: Call) -> Iterator[str]:
        with self._reaching(), self._http.stream(**self._endpoint.http_args(call)) as response:
            if response.status_code >= 400:
                core.check(response.status_code, response.read())
            yield from response.iter_lines()


class Machines(Resource[Client]):
    """`client.machines`: run OCI images, each in its own micro-VM (or container).

    A machine is referred to by its id (`m-...`), its name, or the MachineView itself.
    """

    def create(
        self,
        image: str = "",
        command: Sequence[str] | None = None,
        **options: Unpack[MachineOptions],
    ) -> MachineView:
        """Create a machine (and start it unless `start=False`); returns at once, `created`.
        `command` replaces the image's Cmd; `options` are MachineOptions: name, entrypoint,
        env, workdir, user, cpus, memory_mib, disk_mib, runtime, restart, labels, auto_destroy,
        start. Over quota: QuotaExceeded; no node can take it: NoCapacity (reasons per node).

            m = client.machines.create("nginx:1.27", name="web", memory_mib=256,
                                       labels={"app": "web"}, restart="on-failure")
        """
        return self._c._run(core.create(core.machine_create(image, command, options)))

    def run(
        self,
        image: str = "",
        command: Sequence[str] | None = None,
        **options: Unpack[MachineOptions],
    ) -> MachineView:
        """Create and start a machine; return once it runs (or, if it was quick, has ended),
        so its logs and exec are available. Takes the same options as `create`; `hold_output`
        is True unless given: the node keeps its output for a first follower (logs(follow=True)
        right after), so none of its start is lost (pass False for one nobody will follow).

            m = client.machines.run("busybox", ["sleep", "600"], runtime="container")
            print(client.machines.exec(m, ["uname", "-a"]).stdout)
        """
        return self._c._run(core.run(core.machine_create(image, command, options)))

    def explain(
        self,
        image: str = "",
        command: Sequence[str] | None = None,
        **options: Unpack[MachineOptions],
    ) -> PlacementView:
        """A dry run of `create`: the node the scheduler would choose now and, for every other
        node, the filter that turned it down. Creates nothing.

            plan = client.machines.explain("busybox", memory_mib=512, constraints={"disk": "ssd"})
            print(plan.node if plan.placed else plan.reason)
        """
        return self._c._run(core.explain(core.machine_create(image, command, options)))

    def list(
        self,
        state: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        all: bool = False,
        page_size: int | None = None,
    ) -> Iterator[MachineView]:
        """The project's machines, oldest first, fetching pages as you iterate. `state` keeps
        those in it (a state or several), `labels` those with all these labels, `all` adds
        the destroyed ones; `page_size` is how many each request fetches (server default 100,
        at most 200).

            running = [m.name for m in client.machines.list(state="running")]
        """
        return self._c._paged(listing(state, labels, all, page_size), Page[MachineView])

    def get(self, ref: MachineRef) -> MachineView:
        """The machine now (NotFound if it is not in the project)."""
        return self._c._run(core.machine("GET", ref))

    def start(self, ref: MachineRef) -> MachineView:
        """Start a machine that is not running (created stopped, exited or failed):
        a new generation of it. Conflict if it runs."""
        return self._c._run(core.machine("POST", ref, "start"))

    def stop(self, ref: MachineRef, signal: str = "", timeout: float = 10) -> MachineView:
        """Ask it to stop: `signal` (default: the image's stop signal, else SIGTERM), then a
        kill after `timeout` seconds. Returns at once (`stopping`); `wait()` for the end."""
        return self._c._run(core.stop(ref, signal, timeout))

    def metrics(
        self, ref: MachineRef, since: float | None = None, step: float | None = None
    ) -> MachineMetricsView:
        """The machine's history since `since` (epoch seconds; default: an hour ago), a point
        per `step` seconds (default: the finest the controller keeps for that span), oldest
        first. Counters are cumulative per generation: a rate is the difference of two points
        of one generation over their `time`."""
        return self._c._run(core.metrics(ref, since, step))

    def extend(self, ref: MachineRef, seconds: float) -> MachineView:
        """Give a machine run with a timeout (`timeout_s`) `seconds` more of running before
        it times out. Conflict if it has no timeout, or has ended (start it again: its whole
        timeout anew)."""
        return self._c._run(core.extend(ref, seconds))

    def suspend(
        self, ref: MachineRef, *, wait: bool = False, timeout: float | None = None
    ) -> MachineView:
        """Save a running micro-VM's memory and devices on its node and end its process: it
        keeps its disk and addresses, and its node gets its CPU and memory back. Returns at
        once (wanted suspended), or with `wait` once it is `suspended` (WaitTimeout after
        `timeout` seconds). Invalid for a container; Conflict unless it runs.

            client.machines.suspend("web", wait=True)
            client.machines.resume("web", wait=True)  # the same processes continue
        """
        until = "suspended" if wait else None
        return self._c._run(core.pause_or_continue(ref, "suspend", until, timeout))

    def resume(
        self, ref: MachineRef, *, wait: bool = False, timeout: float | None = None
    ) -> MachineView:
        """Continue a suspended machine where it was, on its node (`start` does the same);
        with `wait`, return once it runs. NoCapacity when its node has no room for it now."""
        until = "running" if wait else None
        return self._c._run(core.pause_or_continue(ref, "resume", until, timeout))

    def kill(self, ref: MachineRef, signal: str = "SIGKILL") -> MachineView:
        """Send a signal to the workload: SIGKILL ends the machine without grace, others are
        just delivered (it may live on)."""
        return self._c._run(core.kill(ref, signal))

    def restart(self, ref: MachineRef) -> MachineView:
        """Stop it if it runs, and start a new generation."""
        return self._c._run(core.machine("POST", ref, "restart"))

    def delete(self, ref: MachineRef, force: bool = False) -> None:
        """Destroy it and what it left on its node. A running machine is a Conflict unless
        `force` (then it is killed)."""
        self._c._run(core.delete(ref, force))

    def wait(
        self, ref: MachineRef, state: str = "finished", timeout: float | None = None
    ) -> MachineView:
        """Block until the machine is in `state` (a MachineState, or "finished": exited, failed
        or destroyed) and return it; WaitTimeout (a TimeoutError) once `timeout` seconds
        passed, None waits as long as it takes; Unreachable when it finished elsewhere.

            m = client.machines.wait("job", timeout=600)
            print(m.state, m.exit_code, m.error)
        """
        return self._c._run(core.wait(ref, state, timeout))

    def logs(
        self,
        ref: MachineRef,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> Generator[LogLine, None, None]:
        """Its output as LogLines (`stream`, `time`, `data`; exact bytes:
        `hutch.client.log_bytes(line)`), each a chunk of many lines: from the last `tail`
        lines, or the chunks since epoch seconds `since`; with `follow`, then what comes until
        the machine ends (a follower gets every byte: the machine waits for it). A line with
        `skipped` says that many bytes of its stream were dropped, unread, by the bounded log.

            for line in client.machines.logs(m, follow=True):
                (sys.stdout if line.stream == "stdout" else sys.stderr).write(line.data)
        """
        for line in self._c._lines(core.logs(ref, follow, tail, since)):
            if (parsed := core.log_line(line)) is not None:
                yield parsed

    def exec(
        self, ref: MachineRef, command: Sequence[str], **options: Unpack[core.ExecOptions]
    ) -> ExecResult:
        """Run `command` in the running machine and wait for it: its exit code and output.
        `stdin` is fed to it (then closed); `env` adds to the machine's environment.

            r = client.machines.exec(m, ["sh", "-c", "tr a-z A-Z"], stdin=b"hi")
            assert (r.exit_code, r.stdout) == (0, b"HI")
        """
        data = options.pop("stdin", None)
        rest: core.CommandOptions = options  # env, workdir, user
        with self.exec_stream(ref, command, stdin=data is not None, **rest) as session:
            return session.collect(data)

    def exec_stream(
        self, ref: MachineRef, command: Sequence[str], **options: Unpack[core.StreamOptions]
    ) -> ExecSession:
        """Start `command` in the running machine and return the live session: iterate it
        for output, `write()` to its stdin (if `stdin`), `signal()`, `wait()`. Close it when
        done (`with`): closing a session kills a command still running.

        With `tty`, the command gets a pseudo-terminal of `size` (rows, columns; default
        24 x 80): its output all comes as "stdout", what you `write()` is typed (b"\\x03" is
        Ctrl-C), and `resize(rows, cols)` follows your window.

            with client.machines.exec_stream(m, ["sh"], stdin=True, tty=True,
                                             size=(50, 132)) as s:
                s.write(b"stty size; exit 3\\r")
                output = b"".join(data for _, data in s)   # ... b'50 132\\r\\n' ...
                print(s.exit_code)                          # 3
        """
        how = opening(self._c._endpoint, ref, command, **options)
        return ExecSession.open(how)

    def attach(self, ref: MachineRef, *, size: tuple[int, int] | None = None) -> AttachSession:
        """Attach to the running machine's main process (a machine created with `tty` and/or
        `stdin`): `write()` to its stdin, `close_stdin()`, `resize(rows, cols)` its terminal
        (to `size` first, if given), `signal()` it; `wait()` returns its exit code when it ends.
        Its output is the machine's log: read it with `logs(m, follow=True)`. Closing the
        session leaves the machine running, its stdin open for the next attach.

            m = client.machines.create("busybox", ["sh"], tty=True, stdin=True)
            client.machines.wait(m, "running")
            with client.machines.attach(m, size=(50, 132)) as s:
                s.write(b"stty size; exit 3\r")
                print(s.wait())                              # 3
            print(b"".join(log_bytes(l) for l in client.machines.logs(m)))  # ... 50 132 ...
        """
        session = AttachSession.open(attaching(self._c._endpoint, ref))
        if size is not None:
            try:
                session.resize(*size)
            except BaseException:
                session.close()
                raise
        return session


class Images(Resource[Client]):
    """`client.images`: OCI images in the nodes' stores, the project's and the public ones."""

    def list(self) -> Iterator[ImageView]:
        """The images the project sees, newest first."""
        return self._c._paged(IMAGES, Page[ImageView])

    def get(self, ref: str) -> ImageView:
        """An image by name (`busybox`, `registry.example.com/app:1.2`) or digest."""
        return self._c._run(core.image(ref))

    def pull(
        self,
        ref: str,
        public: bool = False,
        progress: Callable[[PullEvent], object] | None = None,
    ) -> ImageView:
        """Pull an image from its registry onto every ready node; `progress` is called with
        each PullEvent (layer, status, done and total bytes). A failed pull raises PullFailed.

            image = client.images.pull("registry.example.com/app:1.2",
                                       progress=lambda e: print(e.status, e.done, e.total))
        """
        feed = core.PullFeed(progress)
        for line in self._c._lines(core.pull(ref, public)):
            feed.feed(line)
        return feed.result()

    def import_(
        self, source: ArchiveSource, names: Sequence[str] = (), public: bool = False
    ) -> builtins.list[ImageView]:
        """Import a `docker save` or OCI archive, or a root filesystem's tar (plain or
        compressed, like `docker import` takes: the controller packs it as a one-layer image),
        as a path, bytes or an open binary file; or an OCI layout directory or a root directory.
        `names` name the image. Returns the images it held.

            client.images.import_("app.tar", names=["app:1.2"])
            client.images.import_("rootfs.tar.gz", names=["deb:12"])
        """
        with core.archive(source) as chunks:
            return self._c._run(core.import_call(names, public, chunks))

    def delete(self, ref: str, *, public: bool = False, force: bool = False) -> ImageRemoved:
        """Remove the project's name for the image, or the image (NotFound if the project
        does not see it); with `public`, the catalogue's (a system token). Conflict while
        machines of the project that are not destroyed would lose it, unless `force`: then
        `machines` names them."""
        return self._c._run(core.delete_image(ref, public, force))


class Tokens(Resource[Client]):
    """`client.projects.tokens`: a project's API tokens (admin role). `project` defaults to the
    client's, else the token's own."""

    def list(self, project: str | None = None) -> Iterator[TokenView]:
        call = self._c._run(core.tokens(project, self._c.project))
        return self._c._paged(call, Page[TokenView])

    def create(
        self,
        project: str | None = None,
        *,
        role: Role | str = Role.MEMBER,
        name: str = "",
        expires_in: float | None = None,
    ) -> TokenCreated:
        """A new token with `role` (reader, member, admin), working for `expires_in` seconds
        (None: until revoked). Its `secret` is only ever shown here.

            token = client.projects.tokens.create("team-a", role="reader", name="ci")
            ci = Client(client.url, token.secret)
        """
        plan = core.create_token(project, self._c.project, role, name, expires_in)
        return self._c._run(plan)

    def revoke(self, token_id: str, project: str | None = None) -> None:
        """Revoke a token by its id (`t-...`): it stops working at once."""
        self._c._run(core.revoke_token(project, self._c.project, token_id))


class Projects(Resource[Client]):
    """`client.projects`: tenants. Creating and deleting them, and setting quotas, takes a
    system token; any token reads its own project."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.tokens = Tokens(client)

    def list(self) -> Iterator[ProjectView]:
        """Every project (system token), or the token's own."""
        return self._c._paged(PROJECTS, Page[ProjectView])

    def create(
        self, name: str, quota: QuotaSpec | None = None, strategy: str = "spread"
    ) -> ProjectView:
        """A new project (a DNS label), with an optional quota (default: unlimited) and how
        its machines are placed (`spread` across nodes, or `pack` them on few)."""
        return self._c._run(core.create_project(name, quota, strategy))

    def set_strategy(self, name: str, strategy: str) -> ProjectView:
        """Place the project's machines `spread` or `pack` (when a machine does not say)."""
        return self._c._run(core.set_strategy(name, strategy))

    def get(self, name: str) -> ProjectView:
        return self._c._run(core.get_project(name))

    def delete(self, name: str) -> None:
        """Delete an empty project (Conflict while it has machines)."""
        self._c._run(core.delete_project(name))

    def quota(self, name: str | None = None) -> QuotaReport:
        """The project's quota and what its machines use now."""
        return self._c._run(core.quota(name, self._c.project))

    def set_quota(self, name: str, **limits: Unpack[core.QuotaLimits]) -> QuotaReport:
        """Replace the project's quota (QuotaLimits): every limit left out (or None) is unlimited.

        client.projects.set_quota("team-a", machines=10, vcpus=8, memory_mib=8192)
        """
        return self._c._run(core.set_quota(name, limits))


class Nodes(Resource[Client]):
    """`client.nodes`: the hosts that run machines (system tokens)."""

    def list(self) -> Iterator[NodeView]:
        """Every node: its runtimes, capacity, what is allocated, its state."""
        return self._c._paged(NODES, Page[NodeView])

    def get(self, ref: str) -> NodeView:
        """A node by name or id."""
        return self._c._run(core.node("GET", ref))

    def cordon(self, ref: str) -> NodeView:
        """The node takes nothing new; what it runs stays."""
        return self._c._run(core.node("POST", ref, "cordon"))

    def uncordon(self, ref: str) -> NodeView:
        return self._c._run(core.node("POST", ref, "uncordon"))

    def drain(self, ref: str) -> NodeView:
        """Cordon it, and move the machines that should run to other nodes."""
        return self._c._run(core.node("POST", ref, "drain"))

    def remove(self, ref: str) -> None:
        """Forget a node that runs nothing (Conflict otherwise: drain it first)."""
        self._c._run(core.remove_node(ref))

    def join_token(self, ttl: float = 3600) -> JoinTokenView:
        """A token for `hutch agent --join-token`, valid for `ttl` seconds."""
        return self._c._run(core.join_token(ttl))


class Networks(Resource[Client]):
    """`client.networks`: the project's private networks (each dual-stack: an IPv4 subnet and
    an IPv6 /64). Machines join the project's `default` network unless told otherwise."""

    def list(self) -> Iterator[NetworkView]:
        return self._c._paged(NETWORKS, Page[NetworkView])

    def get(self, ref: str) -> NetworkView:
        return self._c._run(core.network(ref))

    def create(
        self,
        name: str,
        subnet: str = "",
        egress: str = "nat",
        egress_allow: Sequence[str] = (),
        *,
        subnet6: str = "",
    ) -> NetworkView:
        """A network; `subnet` an IPv4 CIDR of the project's (default: a /24 of the pool),
        `subnet6` an IPv6 /64 of fd00::/8 (default: a /64 of the controller's ULA /48);
        `egress` "nat", "deny" or "allow-list" (the CIDRs in `egress_allow`). Invalid for an
        overlapping, public or too small subnet, or an IPv6 one that is not a unique-local /64."""
        plan = core.create_network(name, subnet, egress, egress_allow, subnet6)
        return self._c._run(plan)

    def delete(self, ref: str) -> None:
        """Conflict while machines are on it."""
        self._c._run(core.delete_network(ref))


class SecurityGroups(Resource[Client]):
    """`client.security_groups`: named rules, attached to machines (`security_groups=[...]`)."""

    def list(self) -> Iterator[SecurityGroupView]:
        return self._c._paged(GROUPS, Page[SecurityGroupView])

    def get(self, ref: str) -> SecurityGroupView:
        return self._c._run(core.group(ref))

    def create(self, name: str) -> SecurityGroupView:
        return self._c._run(core.create_group(name))

    def delete(self, ref: str) -> None:
        """Conflict while live machines are in it, or other groups' rules name it."""
        self._c._run(core.delete_group(ref))

    def add_rule(
        self,
        ref: str,
        direction: str,
        protocol: str = "any",
        ports: str | int | tuple[int, int] = "",
        remote: str = "",
    ) -> SecurityGroupView:
        """Allow `direction` ("ingress"/"egress") traffic of `protocol` ("tcp", "udp",
        "icmp", "any") on `ports` (80, "8000-8080"; "": all) from/to `remote`, a CIDR or one
        of the project's groups by name. The group, the new rule last.

            client.security_groups.add_rule("web", "ingress", "tcp", 80, "0.0.0.0/0")
        """
        body = core.rule_create(direction, protocol, ports, remote)
        return self._c._run(core.add_rule(ref, body))

    def remove_rule(self, ref: str, rule_id: str) -> SecurityGroupView:
        return self._c._run(core.remove_rule(ref, rule_id))


class Volumes(Resource[Client]):
    """`client.volumes`: the project's persistent disks (ext4, or raw with `fs="none"`), on
    one node each, with copy-on-write snapshots and forks. Sizes are bytes or strings with
    binary units ("10G" is 10 GiB).

        db = client.volumes.create("db-data", "10G")
        client.volumes.snapshot("db-data", "before-migration")
        client.volumes.create("db-preview", source="db-data@before-migration")
    """

    def list(self) -> Iterator[VolumeView]:
        return self._c._paged(VOLUMES, Page[VolumeView])

    def get(self, ref: str) -> VolumeView:
        return self._c._run(core.volume(ref))

    def create(
        self,
        name: str,
        size: int | str = 0,
        *,
        fs: str = "ext4",
        node: str = "",
        source: str = "",
    ) -> VolumeView:
        """A volume of `size` on `node` (default: the ready node with the most room); with
        `source` ("VOLUME" or "VOLUME@SNAPSHOT"), a fork of it on its node (`size` 0: the
        source's). QuotaExceeded beyond the project's `volume_gib`; Conflict for a name taken."""
        return self._c._run(core.create_volume(name, size, fs, node, source))

    def delete(self, ref: str) -> None:
        """The volume and its snapshots; Conflict while a machine has it."""
        self._c._run(core.delete_volume(ref))

    def extend(self, ref: str, size: int | str) -> VolumeView:
        """Grow a detached volume (and its ext4) to `size`; a volume never shrinks."""
        return self._c._run(core.extend_volume(ref, size))

    def snapshots(self, ref: str) -> Iterator[SnapshotView]:
        return self._c._paged(core.snapshots_call(ref), Page[SnapshotView])

    def snapshot(self, ref: str, name: str = "") -> SnapshotView:
        """A point-in-time, copy-on-write snapshot (`name` default: from the time)."""
        return self._c._run(core.create_snapshot(ref, name))

    def delete_snapshot(self, ref: str, snapshot: str) -> None:
        self._c._run(core.delete_snapshot(ref, snapshot))

    def restore(self, ref: str, snapshot: str) -> VolumeView:
        """A detached volume's data (and size) as at `snapshot`."""
        return self._c._run(core.restore_volume(ref, snapshot))

    def export(self, ref: str, snapshot: str = "") -> Iterator[bytes]:
        """The volume (detached) or its snapshot as a sparse, checksummed stream, in chunks.

        with open("db.hvol", "wb") as f:
            for chunk in client.volumes.export("db-data"):
                f.write(chunk)
        """
        return self._c._bytes(core.export_call(ref, snapshot))

    def import_(
        self, name: str, source: "str | os.PathLike[str] | IO[bytes]", *, node: str = ""
    ) -> VolumeView:
        """A new volume `name` from an export (a path or an open binary file)."""
        with core.volume_source(source) as chunks:
            return self._c._run(core.import_volume(name, node, chunks))


class Snapshots(Resource[Client]):
    """`client.snapshots`: machine snapshots, a running micro-VM's memory, devices and disk kept
    on its node; new machines continue from one (`machines.run(from_snapshot=...)`), each
    with its own name, MAC, addresses, hostname, machine-id and fresh entropy.

        client.snapshots.create("warm", name="tmpl")
        clone = client.machines.run(from_snapshot="tmpl", name="c1")
    """

    def list(self) -> Iterator[MachineSnapshotView]:
        return self._c._paged(SNAPSHOTS, Page[MachineSnapshotView])

    def get(self, ref: str) -> MachineSnapshotView:
        return self._c._run(core.machine_snapshot(ref))

    def create(self, machine: MachineRef, name: str = "") -> MachineSnapshotView:
        """A snapshot of the running micro-VM `machine` (its workload pauses for the copy,
        then runs on); `name` default: from the time."""
        return self._c._run(core.create_machine_snapshot(machine, name))

    def delete(self, ref: str) -> None:
        """The snapshot and its files; Conflict while machines continue from it."""
        self._c._run(core.delete_machine_snapshot(ref))


class Pools(Resource[Client]):
    """`client.pools`: warm pools, micro-VMs of one image and shape kept restored and paused,
    that `machines.run` of that image and shape (on the default network, with no ports,
    security groups, volumes or snapshot) takes instead of booting one::

        client.pools.set("busybox", min_ready=2, memory_mib=256)
        client.machines.run("busybox", memory_mib=256, command=["echo", "hi"])  # from the pool
    """

    def set(
        self, image: str, *, min_ready: int, cpus: int = 1, memory_mib: int = 128,
        disk_mib: int = 0,
    ) -> PoolView:  # fmt: skip
        """The project's pool of `image` and this shape, made or updated to keep `min_ready`
        machines ready (0: none, the pool stays)."""
        return self._c._run(
            core.set_pool(image, min_ready, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib)
        )

    def list(self) -> Iterator[PoolView]:
        return self._c._paged(POOLS, Page[PoolView])

    def get(self, ref: str) -> PoolView:
        """By id, or by image when the project has one pool of it."""
        return self._c._run(core.pool(ref))

    def delete(self, ref: str) -> None:
        """The pool goes, and its machines with it."""
        self._c._run(core.delete_pool(ref))


class Usage(Resource[Client]):
    """`client.usage`: what the project used (the usage ledger), in [since, until) (epoch
    seconds or ISO 8601 dates), summed, or `by` "machine", "label" or "day"::

        for row in client.usage.get(since="2026-12-01", by="machine").items:
            print(row.group, row.vcpu_seconds, row.egress_bytes)
    """

    def get(
        self, since: core.Instant | None = None, until: core.Instant | None = None,
        by: str | None = None,
    ) -> UsageView:  # fmt: skip
        return self._c._run(core.usage(since, until, by))

    def csv(
        self, since: core.Instant | None = None, until: core.Instant | None = None,
        by: str | None = None,
    ) -> str:  # fmt: skip
        """The same as CSV (a header line, then a row per group)."""
        return self._c._run(core.text(core.usage_call(since, until, by, "csv")))


class Invoices(Resource[Client]):
    """`client.invoices`: the project's invoices, one a period, closed at its end and never
    changed after (a correction is a credit line on a later one); `get("draft")` is the
    current period's, still open."""

    def list(self) -> Iterator[InvoiceView]:
        """Closed invoices, newest first."""
        return self._c._paged(core.INVOICES, Page[InvoiceView])

    def get(self, ref: str) -> InvoiceView:
        return self._c._run(core.invoice(ref))

    def html(self, ref: str) -> str:
        """The invoice as a page that prints."""
        return self._c._run(core.text(core.invoice_html(ref)))

    def credit(self, project: str, amount: str, reason: str) -> CreditView:
        """A credit on `project`'s next invoice (system tokens only)."""
        return self._c._run(core.credit(project, amount, reason))


class Prices(Resource[Client]):
    """`client.prices`: the price book (system tokens set it) and a project's budget."""

    def get(self) -> PricesView | PriceBookDoc:
        """The project's effective prices when the client acts in a project, else (a system
        token with no project) the whole book."""
        return self._c._run(core.prices())

    def set(self, book: Mapping[str, Any]) -> PriceBookDoc:
        """Replace the book: {"currency", "rates", "plans", "plan", "projects", "labels"}, prices
        as decimal strings (see docs/billing.md)."""
        return self._c._run(core.set_prices(book))

    def budget(self, project: str | None = None) -> BudgetView:
        """The project's budget (default: the client's project, or the token's)."""
        return self._c._run(core.budget(project, self._c.project))

    def set_budget(self, project: str, amount: str, *, stop: bool = False) -> BudgetView:
        return self._c._run(core.set_budget(project, amount, stop))

    def delete_budget(self, project: str) -> None:
        self._c._run(core.delete_budget(project))
