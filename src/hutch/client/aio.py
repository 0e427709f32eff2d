"""`hutch.AsyncClient`: the asyncio SDK. The same API as `hutch.Client` (see its docstrings),
with coroutines and async iterators:

    async with hutch.AsyncClient() as client:
        m = await client.machines.run("busybox", ["sh", "-c", "echo hello"])
        await client.machines.wait(m)
        async for line in client.machines.logs(m):
            print(line.data, end="")
"""

import asyncio
import builtins
import os
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import IO, Any, Generic, TypeVar, Unpack

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
from hutch.client.exec import (
    AsyncAttachSession,
    AsyncExecSession,
    ExecResult,
    OpeningSession,
    attaching,
    opening,
)
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


class AsyncListing(Generic[T]):
    """What a listing of AsyncClient returns (as `Client`'s returns an iterator): `await` it for
    a list, or `async for` over it to take the items as the pages arrive.

        images = await client.images.list()
        async for m in client.machines.list(state="running"): ...

    An iteration left early holds a connection until `aclose()` (or `contextlib.aclosing`)."""

    def __init__(self, items: AsyncGenerator[T, None]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncGenerator[T, None]:
        return self._items

    def __await__(self) -> Generator[Any, None, builtins.list[T]]:
        return self._collect().__await__()

    async def _collect(self) -> builtins.list[T]:
        async with aclosing(self._items) as items:
            return [item async for item in items]

    async def aclose(self) -> None:
        await self._items.aclose()


class AsyncClient(Connection[httpx.AsyncClient]):
    """A connection to a hutch controller, for asyncio; arguments as for `hutch.Client`."""

    _transport = httpx.AsyncClient

    def _mount(self) -> None:
        self.machines = AsyncMachines(self)
        self.images = AsyncImages(self)
        self.projects = AsyncProjects(self)
        self.nodes = AsyncNodes(self)
        self.networks = AsyncNetworks(self)
        self.volumes = AsyncVolumes(self)
        self.snapshots = AsyncSnapshots(self)
        self.pools = AsyncPools(self)
        self.usage = AsyncUsage(self)
        self.invoices = AsyncInvoices(self)
        self.prices = AsyncPrices(self)
        self.security_groups = AsyncSecurityGroups(self)

    async def events(self, after: int = 0) -> AsyncGenerator[EventView, None]:
        """The project's events after `after`, as they happen; never ends by itself. To stop
        early, iterate inside `contextlib.aclosing(client.events())` (as for every async
        iterator of this API that holds a connection)."""
        decoder = core.EventDecoder()
        async with aclosing(self._lines(core.events(after))) as lines:
            async for line in lines:
                if (event := decoder.feed(line)) is not None:
                    yield event

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """Any API call: the decoded JSON answer (see Client.request)."""
        return await self._run(core.raw(method, path, params, json))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- transport: plans in, answers out ----------------------------------------------------------

    async def _send(self, call: Call) -> bytes:
        with self._reaching():
            response = await self._http.request(**self._endpoint.http_args(call))
        core.check(response.status_code, response.content)
        return response.content

    async def _run(self, plan: Plan[T]) -> T:
        try:
            call = next(plan)
            while True:
                call = plan.send(await self._send(call))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _paged(self, call: Call | None, kind: type[Page[V]]) -> AsyncGenerator[V, None]:
        while call is not None:
            items, call = await self._run(core.page(call, kind))
            for item in items:
                yield item

    async def _bytes(self, call: Call) -> AsyncGenerator[bytes, None]:
        with self._reaching():
            async with self._http.stream(**self._endpoint.http_args(call)) as response:
                if response.status_code >= 400:
                    core.check(response.status_code, await response.aread())
                async for chunk in response.aiter_bytes(core.CHUNK):
                    yield chunk

    async def _lines(self, call: Call) -> AsyncGenerator[str, None]:
        with self._reaching():
            async with self._http.stream(**self._endpoint.http_args(call)) as response:
                if response.status_code >= 400:
                    core.check(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    yield line


class AsyncMachines(Resource[AsyncClient]):
    """`client.machines` of AsyncClient (see hutch.client.sync.Machines)."""

    async def create(
        self,
        image: str = "",
        command: Sequence[str] | None = None,
        **options: Unpack[MachineOptions],
    ) -> MachineView:
        return await self._c._run(core.create(core.machine_create(image, command, options)))

    async def run(
        self,
        image: str = "",
        command: Sequence[str] | None = None,
        **options: Unpack[MachineOptions],
    ) -> MachineView:
        return await self._c._run(core.run(core.machine_create(image, command, options)))

    def list(
        self,
        state: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        all: bool = False,
        page_size: int | None = None,
    ) -> AsyncListing[MachineView]:
        return AsyncListing(
            self._c._paged(listing(state, labels, all, page_size), Page[MachineView])
        )

    async def explain(
        self,
        image: str = "",
        command: Sequence[str] | None = None,
        **options: Unpack[MachineOptions],
    ) -> PlacementView:
        return await self._c._run(core.explain(core.machine_create(image, command, options)))

    async def get(self, ref: MachineRef) -> MachineView:
        return await self._c._run(core.machine("GET", ref))

    async def start(self, ref: MachineRef) -> MachineView:
        return await self._c._run(core.machine("POST", ref, "start"))

    async def stop(self, ref: MachineRef, signal: str = "", timeout: float = 10) -> MachineView:
        return await self._c._run(core.stop(ref, signal, timeout))

    async def metrics(
        self, ref: MachineRef, since: float | None = None, step: float | None = None
    ) -> MachineMetricsView:
        """The machine's history since `since` (epoch seconds; default: an hour ago), a point
        per `step` seconds (default: the finest the controller keeps for that span), oldest
        first. Counters are cumulative per generation: a rate is the difference of two points
        of one generation over their `time`."""
        return await self._c._run(core.metrics(ref, since, step))

    async def extend(self, ref: MachineRef, seconds: float) -> MachineView:
        return await self._c._run(core.extend(ref, seconds))

    async def suspend(
        self, ref: MachineRef, *, wait: bool = False, timeout: float | None = None
    ) -> MachineView:
        until = "suspended" if wait else None
        return await self._c._run(core.pause_or_continue(ref, "suspend", until, timeout))

    async def resume(
        self, ref: MachineRef, *, wait: bool = False, timeout: float | None = None
    ) -> MachineView:
        until = "running" if wait else None
        return await self._c._run(core.pause_or_continue(ref, "resume", until, timeout))

    async def kill(self, ref: MachineRef, signal: str = "SIGKILL") -> MachineView:
        return await self._c._run(core.kill(ref, signal))

    async def restart(self, ref: MachineRef) -> MachineView:
        return await self._c._run(core.machine("POST", ref, "restart"))

    async def delete(self, ref: MachineRef, force: bool = False) -> None:
        await self._c._run(core.delete(ref, force))

    async def wait(
        self, ref: MachineRef, state: str = "finished", timeout: float | None = None
    ) -> MachineView:
        return await self._c._run(core.wait(ref, state, timeout))

    def logs(
        self,
        ref: MachineRef,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncListing[LogLine]:
        return AsyncListing(self._logs(ref, follow, tail, since))

    async def _logs(
        self, ref: MachineRef, follow: bool, tail: int | None, since: float | None
    ) -> AsyncGenerator[LogLine, None]:
        async with aclosing(self._c._lines(core.logs(ref, follow, tail, since))) as lines:
            async for line in lines:
                if (parsed := core.log_line(line)) is not None:
                    yield parsed

    async def exec(
        self, ref: MachineRef, command: Sequence[str], **options: Unpack[core.ExecOptions]
    ) -> ExecResult:
        data = options.pop("stdin", None)
        rest: core.CommandOptions = options  # env, workdir, user
        async with self.exec_stream(ref, command, stdin=data is not None, **rest) as session:
            return await session.collect(data)

    def exec_stream(
        self, ref: MachineRef, command: Sequence[str], **options: Unpack[core.StreamOptions]
    ) -> OpeningSession[AsyncExecSession]:
        """`await` it for an AsyncExecSession, or `async with` it to close the session after."""
        how = opening(self._c._endpoint, ref, command, **options)
        return OpeningSession(lambda: AsyncExecSession.open(how))

    def attach(
        self, ref: MachineRef, *, size: tuple[int, int] | None = None
    ) -> OpeningSession[AsyncAttachSession]:
        """`await` it for an AsyncAttachSession (see Machines.attach), or `async with` it to
        close the session after (which leaves the machine running)."""
        how = attaching(self._c._endpoint, ref)

        async def open_() -> AsyncAttachSession:
            session = await AsyncAttachSession.open(how)
            if size is not None:
                try:
                    await session.resize(*size)
                except BaseException:
                    await session.close()
                    raise
            return session

        return OpeningSession(open_)


class AsyncImages(Resource[AsyncClient]):
    """`client.images` of AsyncClient (see hutch.client.sync.Images)."""

    def list(self) -> AsyncListing[ImageView]:
        return AsyncListing(self._c._paged(IMAGES, Page[ImageView]))

    async def get(self, ref: str) -> ImageView:
        return await self._c._run(core.image(ref))

    async def pull(
        self,
        ref: str,
        public: bool = False,
        progress: Callable[[PullEvent], object] | None = None,
    ) -> ImageView:
        feed = core.PullFeed(progress)
        async with aclosing(self._c._lines(core.pull(ref, public))) as lines:
            async for line in lines:
                feed.feed(line)
        return feed.result()

    async def import_(
        self, source: ArchiveSource, names: Sequence[str] = (), public: bool = False
    ) -> builtins.list[ImageView]:
        archive = core.archive(source)
        # Reading files and tarring a layout directory block: done in threads.
        chunks = await asyncio.to_thread(archive.__enter__)
        try:
            return await self._c._run(core.import_call(names, public, _threaded(chunks)))
        finally:
            await asyncio.to_thread(archive.__exit__, None, None, None)

    async def delete(self, ref: str, *, public: bool = False, force: bool = False) -> ImageRemoved:
        return await self._c._run(core.delete_image(ref, public, force))


async def _threaded(chunks: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


class AsyncTokens(Resource[AsyncClient]):
    """`client.projects.tokens` of AsyncClient (see hutch.client.sync.Tokens)."""

    def list(self, project: str | None = None) -> AsyncListing[TokenView]:
        return AsyncListing(self._list(project))

    async def _list(self, project: str | None) -> AsyncGenerator[TokenView, None]:
        call = await self._c._run(core.tokens(project, self._c.project))
        async with aclosing(self._c._paged(call, Page[TokenView])) as tokens:
            async for token in tokens:
                yield token

    async def create(
        self,
        project: str | None = None,
        *,
        role: Role | str = Role.MEMBER,
        name: str = "",
        expires_in: float | None = None,
    ) -> TokenCreated:
        plan = core.create_token(project, self._c.project, role, name, expires_in)
        return await self._c._run(plan)

    async def revoke(self, token_id: str, project: str | None = None) -> None:
        await self._c._run(core.revoke_token(project, self._c.project, token_id))


class AsyncProjects(Resource[AsyncClient]):
    """`client.projects` of AsyncClient (see hutch.client.sync.Projects)."""

    def __init__(self, client: AsyncClient) -> None:
        super().__init__(client)
        self.tokens = AsyncTokens(client)

    def list(self) -> AsyncListing[ProjectView]:
        return AsyncListing(self._c._paged(PROJECTS, Page[ProjectView]))

    async def create(
        self, name: str, quota: QuotaSpec | None = None, strategy: str = "spread"
    ) -> ProjectView:
        return await self._c._run(core.create_project(name, quota, strategy))

    async def set_strategy(self, name: str, strategy: str) -> ProjectView:
        return await self._c._run(core.set_strategy(name, strategy))

    async def get(self, name: str) -> ProjectView:
        return await self._c._run(core.get_project(name))

    async def delete(self, name: str) -> None:
        await self._c._run(core.delete_project(name))

    async def quota(self, name: str | None = None) -> QuotaReport:
        return await self._c._run(core.quota(name, self._c.project))

    async def set_quota(self, name: str, **limits: Unpack[core.QuotaLimits]) -> QuotaReport:
        return await self._c._run(core.set_quota(name, limits))


class AsyncNodes(Resource[AsyncClient]):
    """`client.nodes` of AsyncClient."""

    def list(self) -> AsyncListing[NodeView]:
        return AsyncListing(self._c._paged(NODES, Page[NodeView]))

    async def get(self, ref: str) -> NodeView:
        return await self._c._run(core.node("GET", ref))

    async def cordon(self, ref: str) -> NodeView:
        return await self._c._run(core.node("POST", ref, "cordon"))

    async def uncordon(self, ref: str) -> NodeView:
        return await self._c._run(core.node("POST", ref, "uncordon"))

    async def drain(self, ref: str) -> NodeView:
        return await self._c._run(core.node("POST", ref, "drain"))

    async def remove(self, ref: str) -> None:
        await self._c._run(core.remove_node(ref))

    async def join_token(self, ttl: float = 3600) -> JoinTokenView:
        return await self._c._run(core.join_token(ttl))


class AsyncNetworks(Resource[AsyncClient]):
    """`client.networks` of AsyncClient (see hutch.client.sync.Networks)."""

    def list(self) -> AsyncListing[NetworkView]:
        return AsyncListing(self._c._paged(NETWORKS, Page[NetworkView]))

    async def get(self, ref: str) -> NetworkView:
        return await self._c._run(core.network(ref))

    async def create(
        self,
        name: str,
        subnet: str = "",
        egress: str = "nat",
        egress_allow: Sequence[str] = (),
        *,
        subnet6: str = "",
    ) -> NetworkView:
        plan = core.create_network(name, subnet, egress, egress_allow, subnet6)
        return await self._c._run(plan)

    async def delete(self, ref: str) -> None:
        await self._c._run(core.delete_network(ref))


class AsyncSecurityGroups(Resource[AsyncClient]):
    """`client.security_groups` of AsyncClient (see hutch.client.sync.SecurityGroups)."""

    def list(self) -> AsyncListing[SecurityGroupView]:
        return AsyncListing(self._c._paged(GROUPS, Page[SecurityGroupView]))

    async def get(self, ref: str) -> SecurityGroupView:
        return await self._c._run(core.group(ref))

    async def create(self, name: str) -> SecurityGroupView:
        return await self._c._run(core.create_group(name))

    async def delete(self, ref: str) -> None:
        await self._c._run(core.delete_group(ref))

    async def add_rule(
        self,
        ref: str,
        direction: str,
        protocol: str = "any",
        ports: str | int | tuple[int, int] = "",
        remote: str = "",
    ) -> SecurityGroupView:
        body = core.rule_create(direction, protocol, ports, remote)
        return await self._c._run(core.add_rule(ref, body))

    async def remove_rule(self, ref: str, rule_id: str) -> SecurityGroupView:
        return await self._c._run(core.remove_rule(ref, rule_id))


class AsyncVolumes(Resource[AsyncClient]):
    """`client.volumes` of AsyncClient (see hutch.client.sync.Volumes)."""

    def list(self) -> AsyncListing[VolumeView]:
        return AsyncListing(self._c._paged(VOLUMES, Page[VolumeView]))

    async def get(self, ref: str) -> VolumeView:
        return await self._c._run(core.volume(ref))

    async def create(
        self, name: str, size: int | str = 0, *, fs: str = "ext4", node: str = "", source: str = ""
    ) -> VolumeView:
        return await self._c._run(core.create_volume(name, size, fs, node, source))

    async def delete(self, ref: str) -> None:
        await self._c._run(core.delete_volume(ref))

    async def extend(self, ref: str, size: int | str) -> VolumeView:
        return await self._c._run(core.extend_volume(ref, size))

    def snapshots(self, ref: str) -> AsyncListing[SnapshotView]:
        return AsyncListing(self._c._paged(core.snapshots_call(ref), Page[SnapshotView]))

    async def snapshot(self, ref: str, name: str = "") -> SnapshotView:
        return await self._c._run(core.create_snapshot(ref, name))

    async def delete_snapshot(self, ref: str, snapshot: str) -> None:
        await self._c._run(core.delete_snapshot(ref, snapshot))

    async def restore(self, ref: str, snapshot: str) -> VolumeView:
        return await self._c._run(core.restore_volume(ref, snapshot))

    def export(self, ref: str, snapshot: str = "") -> AsyncGenerator[bytes, None]:
        return self._c._bytes(core.export_call(ref, snapshot))

    async def import_(
        self, name: str, source: "str | os.PathLike[str] | IO[bytes]", *, node: str = ""
    ) -> VolumeView:
        opened = core.volume_source(source)
        chunks = await asyncio.to_thread(opened.__enter__)
        try:
            return await self._c._run(core.import_volume(name, node, _threaded(chunks)))
        finally:
            await asyncio.to_thread(opened.__exit__, None, None, None)


class AsyncSnapshots(Resource[AsyncClient]):
    """`client.snapshots` of AsyncClient (see hutch.client.sync.Snapshots)."""

    def list(self) -> AsyncListing[MachineSnapshotView]:
        return AsyncListing(self._c._paged(SNAPSHOTS, Page[MachineSnapshotView]))

    async def get(self, ref: str) -> MachineSnapshotView:
        return await self._c._run(core.machine_snapshot(ref))

    async def create(self, machine: MachineRef, name: str = "") -> MachineSnapshotView:
        return await self._c._run(core.create_machine_snapshot(machine, name))

    async def delete(self, ref: str) -> None:
        await self._c._run(core.delete_machine_snapshot(ref))


class AsyncPools(Resource[AsyncClient]):
    """`client.pools` of AsyncClient (see hutch.client.sync.Pools)."""

    async def set(
        self, image: str, *, min_ready: int, cpus: int = 1, memory_mib: int = 128,
        disk_mib: int = 0,
    ) -> PoolView:  # fmt: skip
        return await self._c._run(
            core.set_pool(image, min_ready, cpus=cpus, memory_mib=memory_mib, disk_mib=disk_mib)
        )

    def list(self) -> AsyncListing[PoolView]:
        return AsyncListing(self._c._paged(POOLS, Page[PoolView]))

    async def get(self, ref: str) -> PoolView:
        return await self._c._run(core.pool(ref))

    async def delete(self, ref: str) -> None:
        await self._c._run(core.delete_pool(ref))


class AsyncUsage(Resource[AsyncClient]):
    """`client.usage` of AsyncClient (see hutch.client.sync.Usage)."""

    async def get(
        self, since: core.Instant | None = None, until: core.Instant | None = None,
        by: str | None = None,
    ) -> UsageView:  # fmt: skip
        return await self._c._run(core.usage(since, until, by))

    async def csv(
        self, since: core.Instant | None = None, until: core.Instant | None = None,
        by: str | None = None,
    ) -> str:  # fmt: skip
        return await self._c._run(core.text(core.usage_call(since, until, by, "csv")))


class AsyncInvoices(Resource[AsyncClient]):
    """`client.invoices` of AsyncClient (see hutch.client.sync.Invoices)."""

    def list(self) -> AsyncListing[InvoiceView]:
        return AsyncListing(self._c._paged(core.INVOICES, Page[InvoiceView]))

    async def get(self, ref: str) -> InvoiceView:
        return await self._c._run(core.invoice(ref))

    async def html(self, ref: str) -> str:
        return await self._c._run(core.text(core.invoice_html(ref)))

    async def credit(self, project: str, amount: str, reason: str) -> CreditView:
        return await self._c._run(core.credit(project, amount, reason))


class AsyncPrices(Resource[AsyncClient]):
    """`client.prices` of AsyncClient (see hutch.client.sync.Prices)."""

    async def get(self) -> PricesView | PriceBookDoc:
        return await self._c._run(core.prices())

    async def set(self, book: Mapping[str, Any]) -> PriceBookDoc:
        return await self._c._run(core.set_prices(book))

    async def budget(self, project: str | None = None) -> BudgetView:
        """The project's budget (default: the client's project, or the token's)."""
        return await self._c._run(core.budget(project, self._c.project))

    async def set_budget(self, project: str, amount: str, *, stop: bool = False) -> BudgetView:
        return await self._c._run(core.set_budget(project, amount, stop))

    async def delete_budget(self, project: str) -> None:
        await self._c._run(core.delete_budget(project))
