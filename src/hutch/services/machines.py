"""Machines: create (quota, a placement check), lifecycle requests, node reports, waiting.

The control plane records what is wanted (`desired`, `generation`) and what nodes say happened
(`state`); nodes converge on the first and report the second. Every state change is an event.
A generation to run starts without a node: the scheduler (`services/scheduling.py`, on the
leading controller) places it and claims the node's share. A machine holds that share while it
is active (placed and not finished), and gives it back when the generation ends.
"""

import collections
import signal as _signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from websockets.asyncio.client import ClientConnection

from hutch.images.store import is_digest_or_id
from hutch.model.errors import (
    Conflict,
    HutchError,
    Invalid,
    NoCapacity,
    NotFound,
    QuotaExceeded,
    TooManyRequests,
    Unavailable,
)
from hutch.model.image import names_registry, parse_ref
from hutch.model.machine import (
    ACTIVE,
    MAX_TIMEOUT,
    NOT_STARTED,
    Capacity,
    Desired,
    Event,
    GroupPolicy,
    Machine,
    MachineLine,
    MachineSpec,
    MachineState,
    Node,
    NodeState,
    OnIdle,
    OnTimeout,
    Report,
    RestartPolicy,
    Strategy,
    VolumeAttach,
    check_suspendable,
    check_timeout,
    check_volumes,
)
from hutch.model.network import PortMapping
from hutch.model.pool import Pool, PoolShape, PoolState
from hutch.model.sandbox import parse_signal
from hutch.model.snapshot import SnapshotState
from hutch.model.tenancy import Principal, Project, Usage, validate_name
from hutch.model.units import format_duration
from hutch.model.usage import started
from hutch.model.volume import Volume, VolumeState
from hutch.placement import (
    Context,
    Placement,
    Rejection,
    Request,
    free,
    limit,
    need,
    place,
    plus,
)
from hutch.placement.filters import fits, lacks_labels
from hutch.services.feeds import Feeds
from hutch.services.ids import new_id
from hutch.services.images import Images
from hutch.services.networks import MachineNet, Networks, Wiring, bump_neighbours, wirings
from hutch.services.nodelink import NodeLink
from hutch.services.notify import POLL, POOLS, Notifier, keys_of, machine_key, node_key
from hutch.services.policy import Action, Policy
from hutch.services.refusals import missing
from hutch.store.base import Claim, NewEvent, Records, Store, Tx

MAX_WAIT = 300.0
# How long an exec or attach waits for a machine still booting (a cold boot, a pull), and how
# many of a project's may wait at once.
SESSION_WAIT = 120.0
SESSION_WAITERS = 16
RESTART_BACKOFF_MAX = 30.0
FINISHED = tuple(s for s in MachineState if s.finished)
# What a refused exec or attach suggests, by the machine's state.
_NEXT = {MachineState.SUSPENDED.value: ": resume it first"} | {
    s.value: ": start it first" for s in FINISHED if s is not MachineState.DESTROYED
}


class Asks(Protocol):
    """What placing a machine reads of it: its MachineSpec, or the scheduler's lean row of a
    pending machine (`store.base.Pending`), which names these fields alike."""

    @property
    def cpus(self) -> int: ...
    @property
    def memory_mib(self) -> int: ...
    @property
    def scratch_mib(self) -> int: ...
    @property
    def runtime(self) -> str: ...
    @property
    def constraints(self) -> Mapping[str, str]: ...
    @property
    def strategy(self) -> Strategy | None: ...
    @property
    def group(self) -> str: ...
    @property
    def group_policy(self) -> GroupPolicy: ...
    @property
    def volumes(self) -> tuple[VolumeAttach, ...]: ...
    @property
    def from_snapshot(self) -> str: ...


def request_of(
    spec: Asks,
    project: Project | None = None,
    ports: Sequence[PortMapping] = (),
    pin: tuple[str, str] = ("", ""),
) -> Request:
    """What placing the machine asks (`project`: for its default strategy; `ports`: those it
    publishes, a resource of the node; `pin`: the node its volumes are on, and why: `pin_of`)."""
    return Request(
        spec.cpus,
        spec.memory_mib,
        spec.scratch_mib,
        spec.runtime,
        labels=spec.constraints,
        strategy=spec.strategy or (project.strategy if project else Strategy.SPREAD),
        group=spec.group,
        group_policy=spec.group_policy,
        ports=frozenset((p.host_port, p.protocol) for p in ports),
        node=pin[0],
        node_why=pin[1],
    )


async def pin_of(tx: Tx, spec: Asks) -> tuple[str, str]:
    """The node a machine with volumes runs on (theirs: attaching checked they share one), or
    a clone of a machine snapshot (the snapshot's), and why, in the user's words; ("", "") for
    a machine that may run anywhere."""
    if spec.from_snapshot:
        try:
            snap = await tx.snapshots.by_id(spec.from_snapshot)
        except NotFound:
            return "none", "its snapshot is gone"
        try:
            where = (await tx.nodes.get(snap.node_id)).name
        except NotFound:
            where = snap.node_id
        return snap.node_id, f"snapshot {snap.name} is on node {where}"
    if not spec.volumes:
        return "", ""
    found = await tx.volumes.by_ids([v.volume for v in spec.volumes])
    node_id = next((v.node_id for v in found.values() if v.node_id), None)
    if node_id is None:
        return "none", "its volumes are on no node"
    try:
        where = (await tx.nodes.get(node_id)).name
    except NotFound:
        where = node_id
    names = [v.name for v in found.values()]
    if len(names) == 1:
        return node_id, f"volume {names[0]} is on node {where}"
    return node_id, f"volumes {', '.join(names)} are on node {where}"


async def attachable(
    tx: Tx, project: Project, spec: MachineSpec, machine_id: str = ""
) -> tuple[VolumeAttach, ...]:
    """The machine's volumes, by id and name, if it may have them now: each is the project's,
    made (available), attached to no machine that is not destroyed (one machine at a time,
    read-only too), on one node with the others, and, for a container, one whose file system
    the node may mount. Conflict, Invalid or NotFound saying why not."""
    resolved: list[tuple[VolumeAttach, Volume]] = []
    for want in spec.volumes:
        with missing(f"no volume {want.volume!r} in project {project.name}"):
            v = await tx.volumes.get(project.id, want.volume)
        if v.machine_id is not None and v.machine_id != machine_id:
            try:
                holder = await tx.machines.by_id(v.machine_id)
            except NotFound:
                holder = None
            if holder is not None and holder.state is not MachineState.DESTROYED:
                raise Conflict(
                    f"volume {v.name} is attached to machine {holder.name} ({holder.state}): a "
                    "volume is attached to one machine at a time, read-only too (ext4 is not a "
                    f"cluster file system); destroy {holder.name} first"
                )
        elif v.state is not VolumeState.AVAILABLE and v.machine_id is None:
            raise Conflict(f"volume {v.name} is {v.state}" + (f": {v.error}" if v.error else ""))
        if v.busy(time.time()):
            raise Conflict(f"volume {v.name} is being {v.operation}: attach it once that is done")
        if spec.runtime == "container" and v.untrusted and v.fs != "none":
            raise Conflict(
                f"volume {v.name} may hold a file system a tenant crafted (it was imported, or "
                "written by a micro-VM, or comes from such a volume): a container's volume is "
                "mounted by the node's own kernel, which mounts only file systems hutch made; "
                "a micro-VM can take it (--runtime microvm)"
            )
        resolved.append((replace(want, volume=v.id, name=v.name), v))
    nodes = {v.node_id for _, v in resolved}
    if len(nodes) > 1:
        where = {n.id: n.name for n in await tx.nodes.list()}
        each = ", ".join(
            f"{v.name} on {where.get(v.node_id or '', v.node_id)}" for _, v in resolved
        )
        raise Invalid(
            f"a machine's volumes must all be on one node (the machine runs there): {each}"
        )
    if nodes and spec.constraints and (node_id := nodes.pop()):
        node = await tx.nodes.get(node_id)
        if why := lacks_labels(spec.constraints, node):
            raise Invalid(
                f"volume {resolved[0][1].name} is on node {node.name}, which {why}: a machine "
                "runs on its volumes' node only"
            )
    attach = tuple(a for a, _ in resolved)
    check_volumes(attach)  # one volume named twice, by name and by id
    return attach


def usage_of(spec: MachineSpec) -> Usage:
    return Usage(1, spec.cpus, spec.memory_mib, spec.scratch_mib)


def holds_capacity(m: Machine) -> bool:
    """Placed, and active or suspended: deleting a machine does not give its share back, its
    end does."""
    return m.node_id is not None and (m.state in ACTIVE or m.state is MachineState.SUSPENDED)


NOTHING = Capacity(0, 0, 0)


def share_of(m: Machine, node: Node) -> Capacity:
    """What the machine holds of its node: what it asked for while active; while suspended
    no CPU or memory (no process runs) but its disk and its saved memory's room on that disk
    (its memory's size, the most the sparse copy takes); nothing unplaced or ended."""
    if not holds_capacity(m):
        return NOTHING
    full = need(request_of(m.spec), node)
    return full if m.state in ACTIVE else Capacity(0, 0, full.disk_mib + m.spec.memory_mib)


# A claim that always succeeds: for what a node has already written to its disk.
UNBOUNDED = Capacity(2**31 - 1, 2**31 - 1, 2**31 - 1)


def _less(a: Capacity, b: Capacity) -> Capacity:
    return Capacity(
        max(a.cpus - b.cpus, 0), max(a.memory_mib - b.memory_mib, 0),
        max(a.disk_mib - b.disk_mib, 0),
    )  # fmt: skip


class Machines:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        notifier: Notifier,
        link: NodeLink,
        images: Images,
        *,
        networks: Networks | None = None,
    ) -> None:
        self.networks = networks or Networks(store, policy)
        self.store = store
        self.policy = policy
        self.notifier = notifier
        self.link = link
        self.images = images
        self.feeds = Feeds(store, notifier)
        self._booting: collections.Counter[str] = collections.Counter()  # sessions, by project

    # -- tenant requests --------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        project: Project,
        spec: MachineSpec,
        name: str | None = None,
        start: bool = True,
        *,
        net: MachineNet | None = None,
    ) -> tuple[Machine, Wiring]:
        """The new machine, and its wiring as `wiring` would read it (made in the same
        transaction). `net`: its networks, published ports and security groups (None: the
        project's default network, nothing published, no group)."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        spec.check_new()
        net = net or MachineNet()
        if spec.idle_s is not None and not net.ports:
            raise Invalid(
                "a machine idles when no connection comes to its published ports, and this "
                "one publishes none: publish a port (-p HOST:PORT) or leave idle out"
            )
        await self.networks.resolve(project, net)
        resolved = await self.check_image_source(principal, project, spec.image)
        if spec.volumes:  # refused now if they cannot be had (checked again when attached)
            async with self.store.read() as tx:
                spec = replace(spec, volumes=await attachable(tx, project, spec))
        digest = await self._snapshot_digest(project, spec)
        if name:
            validate_name(name, "machine")
        if start:  # in one read, outside the writer: a pool that may give it, and where it goes
            async with self.store.read() as tx:
                pool = await _pool_for(tx, project, spec, net)
                decision = await _place(tx, spec, project, net)
            if (
                pool is not None
                and await self._same_image(principal, project, pool, resolved)
                and (taken := await self._take_pooled(project, pool, spec, name))
            ):
                return taken
            # A refusal now rather than a machine waiting for ever.
            if isinstance(decision, Rejection) and await self._give_way(spec, project, net, name):
                async with self.store.read() as tx:
                    decision = await _place(tx, spec, project, net)
            if isinstance(decision, Rejection):
                raise NoCapacity(f"no node can take this machine: {decision.explain()}")
        machine_id = new_id("m")
        now = time.time()
        machine = Machine(
            id=machine_id,
            project_id=project.id,
            name=name or machine_id,
            spec=spec,
            state=MachineState.CREATED,
            desired=Desired.RUNNING if start else Desired.STOPPED,
            created_at=now,
            updated_at=now,
            generation=1 if start else 0,
            image_digest=digest,
        )
        async with self.store.write() as tx:
            # The project's lock, held; its pools' machines give way to this one if need be.
            gave_way = await self._quota_giving_way(tx, project, usage_of(spec), name)
            if spec.volumes:
                await _attach(tx, project, machine)
            await tx.machines.create(machine)
            wiring = await self.networks.join(tx, project, machine.id, net)
            await tx.events.append(
                [NewEvent(project.id, "machine.created", machine.id, machine.state, "", now)]
            )
        self._wake(machine)
        if gave_way:
            self.notifier.notify(POOLS)  # to say why it is not full
        return machine, wiring

    async def _snapshot_digest(self, project: Project, spec: MachineSpec) -> str:
        """The image a clone runs (its snapshot's, by digest); "" for a machine booted from its
        image. Conflict for a snapshot not taken yet."""
        if not spec.from_snapshot:
            return ""
        async with self.store.read() as tx:
            with missing(f"no snapshot {spec.from_snapshot!r} in project {project.name}"):
                snap = await tx.snapshots.get(project.id, spec.from_snapshot)
        if snap.state is not SnapshotState.READY:
            raise Conflict(f"snapshot {snap.name} is {snap.state}: wait until it is ready")
        return snap.image_digest

    # -- warm pools (services/pools.py keeps them filled) ----------------------------------------

    async def _same_image(
        self, principal: Principal, project: Project, pool: Pool, digest: str
    ) -> bool:
        """Whether the machine's image (`digest`, what its name means now, if known) is the
        one `pool`'s machines run."""
        if not digest:  # not asked on the way (a registry's name)
            try:
                digest = (await self.images.lookup(principal, project, pool.shape.image)).id
            except HutchError:
                return False  # no node to ask: the machine boots, and its node resolves it
        return digest == pool.image_digest

    async def _take_pooled(
        self, project: Project, pool: Pool, spec: MachineSpec, name: str | None
    ) -> tuple[Machine, Wiring] | None:
        """A ready machine of `pool`, made the new machine (`spec`, `name`) in one transaction:
        two runs never take the same one; it, and its wiring. Its node starts it as this
        machine. None when the pool has none ready."""
        now = time.time()
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)  # two takes of one project never interleave
            ready = [
                m for m in await tx.machines.pooled(project.id)
                if m.pool == pool.id and m.state is MachineState.READY
                and m.desired is Desired.READY
            ]  # fmt: skip
            if not ready:
                return None
            pooled = ready[0]
            taken = replace(
                pooled,
                name=name or pooled.id,  # validated by create
                spec=spec,
                pool="",
                desired=Desired.RUNNING,
                created_at=now,
            )
            why = f"from pool {pool.id}"
            await tx.events.append(
                [NewEvent(project.id, "machine.created", taken.id, MachineState.CREATED, why, now)]
            )
            taken = await self._transition(tx, taken, MachineState.STARTING, why)
            wiring = (await wirings(tx, [taken.id]))[taken.id]
        self._wake(taken)
        self.notifier.notify(POOLS)  # a refill follows
        return taken, wiring

    async def _quota_giving_way(
        self, tx: Tx, project: Project, adding: Usage, name: str | None
    ) -> bool:
        """_check_quota, after destroying as many of the project's pooled machines as it takes
        for `adding` to fit: the project's own machines come first. Whether any went."""
        pooled: list[Machine] | None = None  # read only when the quota is reached
        went = False
        while True:
            try:
                await _check_quota(tx, project, adding)
            except QuotaExceeded:
                if pooled is None:
                    pooled = [
                        m for m in await tx.machines.pooled(project.id) if not m.state.finished
                    ]
                if not pooled:
                    raise
                why = f"given way to machine {name or 'new'}: project {project.name}'s quota"
                await self.destroy_pooled(tx, pooled.pop(), why)
                went = True
            else:
                return went

    async def _give_way(
        self, spec: MachineSpec, project: Project, net: MachineNet, name: str | None
    ) -> bool:
        """Make room for a machine no node can take now by destroying pooled machines (of any
        project: a pool is a cache) on a node that takes it once they are gone. Whether any
        went. QuotaExceeded first (nothing gone) for a machine over its project's quota even
        once the project's own pooled machines are gone: another project's pool never empties
        for a machine that is then refused."""
        async with self.store.write() as tx:
            await self._quota_giving_way(tx, project, usage_of(spec), name)
            pooled = [m for m in await tx.machines.pooled() if m.node_id and m.state in ACTIVE]
            if not pooled:
                return False
            nodes = {n.id: n for n in await tx.nodes.list()}
            freed: dict[str, Capacity] = {}
            for m in pooled:
                if (node := nodes.get(m.node_id or "")) is not None:
                    freed[node.id] = plus(freed.get(node.id, NOTHING), share_of(m, node))
            emptied = [
                replace(n, allocated=_less(n.allocated, freed.get(n.id, NOTHING)))
                for n in nodes.values()
            ]
            ports = net.ports
            taken = await tx.networks.ports_taken() if ports else {}
            members = (
                (await tx.machines.group_members(project.id, [spec.group]))[spec.group]
                if spec.group
                else {}
            )
            context = Context.of(members, {n.id: n for n in emptied}, ports=taken)
            request = request_of(spec, project, ports, await pin_of(tx, spec))
            decision = place(request, emptied, context)
            if not isinstance(decision, Placement):
                return False
            node_id = decision.node.id
            gone = False
            for m in (m for m in pooled if m.node_id == node_id):
                node = await tx.nodes.get(node_id)
                if fits(request, node, context) is None:
                    break
                why = f"given way to machine {name or 'new'}: node {node.name} was full"
                await self.destroy_pooled(tx, m, why)
                gone = True
        if gone:
            self.notifier.notify(POOLS)  # to say why it is not full
        return gone

    async def add_to_pool(self, pool: Pool, project: Project) -> Machine | str:
        """A new machine for `pool`: its template while it has no snapshot (placed where the
        scheduler would put it), else a machine restored from that snapshot on its node, left
        paused (Desired.READY). Only from room left over: nothing when machines wait for a
        node, the project is at its quota or the node is full; then why not, in words."""
        template = not pool.snapshot_id
        shape = pool.shape
        spec = MachineSpec(
            image=shape.image, cpus=shape.cpus, memory_mib=shape.memory_mib,
            disk_mib=shape.disk_mib, runtime=shape.runtime,
        )  # fmt: skip
        net = MachineNet()
        await self.networks.resolve(project, net)
        now = time.time()
        async with self.store.write() as tx:
            if await tx.machines.pending(1):
                return "machines wait for a node: they come first"
            try:
                await _check_quota(tx, project, usage_of(spec))
            except QuotaExceeded as e:
                return e.message
            if template:
                decision = await _place(tx, spec, project, net)
                if isinstance(decision, Rejection):
                    return f"no node can take its template: {decision.explain()}"
                node = decision.node
            else:
                node = await tx.nodes.get(pool.node_id)
                if node.cordoned or node.state is not NodeState.READY:
                    how = "cordoned" if node.cordoned else node.state.value
                    return f"its node {node.name} is {how}"
            want = need(request_of(spec, project), node)
            if not await tx.nodes.claim([Claim(node.id, want, limit(node))]):
                return f"node {node.name} has no room for more"
            machine_id = new_id("m")
            m = Machine(
                id=machine_id, project_id=project.id, name=machine_id, spec=spec,
                state=MachineState.CREATED,
                desired=Desired.RUNNING if template else Desired.READY,
                created_at=now, updated_at=now, node_id=node.id, generation=1,
                image_digest=pool.image_digest, pool=pool.id, pool_snapshot=pool.snapshot_id,
            )  # fmt: skip
            await tx.machines.create(m)
            await self.networks.join(tx, project, m.id, net)
            what = "template" if template else "machine"
            await tx.events.append([
                NewEvent(project.id, "machine.created", m.id, m.state,
                         f"{what} of pool {pool.id}", now)
            ])  # fmt: skip
            await tx.nodes.bump_revisions([node.id])
            await bump_neighbours(tx, [m.id])
        self._wake(m)
        return m

    async def destroy_pooled(self, tx: Tx, m: Machine, why: str) -> Machine:
        """A pool's machine destroyed now: its share of its node and of its project's quota is
        free at once (its node destroys the sandbox it no longer has an assignment for)."""
        return await self._transition(
            tx, replace(m, desired=Desired.DESTROYED), MachineState.DESTROYED, why
        )

    async def check_image_source(self, principal: Principal, project: Project, image: str) -> str:
        """Refused now, rather than a machine failing later: an image that no registry gives
        (a digest, an id, a name without a registry, as a typo is) and that the project and the
        catalogue lack (NotFound); an image from a registry nodes may not pull from, unless the
        project already has it, imported under that name (Forbidden). Only a reference that
        names an allowed registry is pulled on demand. The digest `image` means when a node
        said it on the way, or a few seconds before (`Images.lookup`; "" when none was asked
        or none could answer)."""
        if is_digest_or_id(image) or not names_registry(image):
            try:
                return (await self.images.lookup(principal, project, image)).id
            except (NoCapacity, Unavailable):
                return ""  # no node to ask now: the machine waits for one, which decides
            except NotFound:
                if is_digest_or_id(image):
                    raise
                ref = parse_ref(image)
                raise NotFound(
                    f"no image {image!r} in project {project.name} or the catalogue "
                    "(`hutch image ls` lists them; GET /v1/images): a name without a registry "
                    f"is not pulled; pull it by its full name first, e.g. "
                    f"`hutch image pull {ref}`"
                ) from None
        registry = parse_ref(image).registry
        if self.images.registries.allowed(registry):
            return ""
        try:
            return (await self.images.lookup(principal, project, image)).id
        except (NotFound, NoCapacity):
            self.images.registries.check(registry)
        return ""

    async def explain(
        self,
        principal: Principal,
        project: Project,
        spec: MachineSpec,
        net: MachineNet | None = None,
    ) -> Placement | Rejection:
        """Where a machine would go now, and why every other node would not take it."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        spec.check_new()
        net = net or MachineNet()
        await self.networks.resolve(project, net)
        async with self.store.read() as tx:
            if spec.volumes:
                spec = replace(spec, volumes=await attachable(tx, project, spec))
            return await _place(tx, spec, project, net)

    async def wiring(self, machines: Sequence[Machine]) -> dict[str, Wiring]:
        """The machines' addresses, published ports and security groups, for their views
        (the caller read the machines, so may see these)."""
        async with self.store.read() as tx:
            return await wirings(tx, [m.id for m in machines])

    async def get(self, principal: Principal, project: Project, ref: str) -> Machine:
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        async with self.store.read() as tx:
            return await _get(tx, project, ref)

    async def page(
        self,
        principal: Principal,
        project: Project,
        *,
        states: tuple[MachineState, ...] = (),
        labels: Mapping[str, str] | None = None,
        include_destroyed: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[Records, str | None]:
        """A page of the project's machines as records, their wiring with them
        (MachineRepo.records), and the cursor of the next page (None on the last)."""
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        if not states and not include_destroyed:
            states = tuple(s for s in MachineState if s is not MachineState.DESTROYED)
        async with self.store.read() as tx:
            return await tx.machines.records(
                project.id, states=states, labels=labels, limit=limit, cursor=cursor
            )

    async def listing(
        self, principal: Principal, project: Project
    ) -> tuple[list[MachineLine], int]:
        """Every machine of the project but the destroyed, as lines of a list, and the number
        of its newest event before they were read: the events after it tell every change since
        (a live list)."""
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        states = tuple(s for s in MachineState if s is not MachineState.DESTROYED)
        async with self.store.read() as tx:
            last = await tx.events.last(project.id)
            return await tx.machines.lines(project.id, states), last

    async def history(
        self, principal: Principal, project: Project, ref: str, limit: int = 50
    ) -> tuple[Machine, list[Event], int]:
        """The machine, its newest `limit` events (newest first), and the number of the
        project's newest event before they were read (as `listing`)."""
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        async with self.store.read() as tx:
            last = await tx.events.last(project.id)
            m = await _get(tx, project, ref)
            return m, await tx.events.of_object(project.id, m.id, limit), last

    async def several(
        self, principal: Principal, project: Project, ids: Sequence[str]
    ) -> list[Machine]:
        """The machines of `ids` the project still has (purged ones are left out)."""
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        found = []
        async with self.store.read() as tx:
            for machine_id in ids:
                try:
                    found.append(await tx.machines.get(project.id, machine_id))
                except NotFound:
                    continue
        return found

    async def start(self, principal: Principal, project: Project, ref: str) -> Machine:
        """A new generation of a machine that is not running (created stopped, exited, failed);
        a suspended one (or one being suspended) is resumed instead: the same machine goes on."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        gave_way = False
        async with self.store.write() as tx:
            m = await _get_kept(tx, project, ref)
            if m.desired is Desired.SUSPENDED or m.state is MachineState.SUSPENDED:
                m = await self._resume(tx, project, m)
            else:
                if m.state not in FINISHED and m.desired is Desired.RUNNING:
                    raise Conflict(f"machine {m.name} is {m.state}: nothing to start")
                m = await self._new_generation(tx, m.anew(), restarted=False)
                # An ended machine held none of it; the project's pools give way.
                gave_way = await self._quota_giving_way(tx, project, Usage(), m.name)
        self._wake(m)
        if gave_way:
            self.notifier.notify(POOLS)
        return m

    async def suspend(self, principal: Principal, project: Project, ref: str) -> Machine:
        """Ask the machine's node to save its memory and devices and end its process: it keeps
        its disk and addresses on that node, and gives back its CPU and memory once the node
        says it is suspended. Invalid for a runtime that cannot, or a machine with read-write
        volumes; Conflict unless running."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        async with self.store.write() as tx:
            m = await _get_kept(tx, project, ref)
            check_suspendable(m.spec.runtime, "suspended")
            if writable := [v.name or v.volume for v in m.spec.volumes if not v.read_only]:
                raise Invalid(
                    f"machine {m.name} has read-write volumes ({', '.join(writable)}), which a "
                    "suspended micro-VM cannot keep (its node could not reopen them locked): "
                    "stop it instead"
                )
            if m.desired is Desired.SUSPENDED:
                return m  # suspended, or being suspended
            if m.state is not MachineState.RUNNING or m.desired is not Desired.RUNNING:
                raise Conflict(
                    f"machine {m.name} is {m.state} (wanted {m.desired}): only a running machine "
                    "is suspended"
                )
            m = await self._transition(
                tx, replace(m, desired=Desired.SUSPENDED), m.state, "suspend requested"
            )
        self._wake(m)
        return m

    async def resume(self, principal: Principal, project: Project, ref: str) -> Machine:
        """Continue a suspended machine on its node, where it was: its CPU and memory are
        claimed there again (NoCapacity, saying why, when the node is full). A machine still
        being suspended runs on. Conflict unless suspended."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        async with self.store.write() as tx:
            m = await _get_kept(tx, project, ref)
            check_suspendable(m.spec.runtime, "suspended")
            m = await self._resume(tx, project, m)
        self._wake(m)
        return m

    async def _resume(self, tx: Tx, project: Project, m: Machine, why: str = "") -> Machine:
        if m.time_left(time.time()) == 0:  # it would be suspended again at once
            raise Conflict(
                f"machine {m.name} has run its whole timeout "
                f"({format_duration(m.lifetime_s or 0)}): give it more time first "
                f"(hutch machine extend {m.name} DURATION), then resume it"
            )
        if m.state is MachineState.RUNNING and m.desired is Desired.SUSPENDED:
            # Its node has not suspended it yet: it runs on (a suspend under way is cancelled).
            return await self._transition(
                tx, replace(m, desired=Desired.RUNNING), m.state, why or "resume requested"
            )
        if m.state is not MachineState.SUSPENDED:
            raise Conflict(f"machine {m.name} is {m.state}, not suspended")
        assert m.node_id is not None  # a node suspended it
        node = await tx.nodes.get(m.node_id)
        want = _less(need(request_of(m.spec), node), share_of(m, node))
        # Its memory, counted as disk while saved there (MachineRepo.usage), is memory again.
        await _check_quota(tx, project, Usage(0, want.cpus, m.spec.memory_mib, -m.spec.memory_mib))
        if not await tx.nodes.claim([Claim(node.id, want, limit(node))]):
            room = free(node)
            raise NoCapacity(
                f"node {node.name} is full: resuming machine {m.name} needs {want.cpus} vCPU(s) "
                f"and {want.memory_mib} MiB there, and it has {max(room.cpus, 0)} vCPU(s) and "
                f"{max(room.memory_mib, 0)} MiB free. A suspended machine resumes on its own "
                "node only: stop or suspend machines there, or resume it later"
            )
        return await self._transition(
            tx, replace(m, desired=Desired.RUNNING), MachineState.STARTING, why or "resuming"
        )

    async def restart(self, principal: Principal, project: Project, ref: str) -> Machine:
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        async with self.store.write() as tx:
            m = await _get_kept(tx, project, ref)
            m = await self._new_generation(tx, m.anew(), restarted=False)
            gave_way = await self._quota_giving_way(tx, project, Usage(), m.name)
        self._wake(m)
        if gave_way:
            self.notifier.notify(POOLS)
        return m

    async def extend(
        self, principal: Principal, project: Project, ref: str, seconds: float
    ) -> Machine:
        """`seconds` more of running for a machine with a timeout, before it ends."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        check_timeout(seconds, "an extension")
        async with self.store.write() as tx:
            m = await _get(tx, project, ref)
            if m.spec.timeout_s is None:
                raise Conflict(f"machine {m.name} has no timeout to extend: it runs until stopped")
            if m.state.finished or m.desired not in (Desired.RUNNING, Desired.SUSPENDED):
                status = m.state if m.state.finished else f"to be {m.desired}"
                raise Conflict(
                    f"machine {m.name} is {status}: only a machine that runs (or is suspended) "
                    "can be extended; starting it again gives it its whole timeout"
                )
            left = m.time_left(time.time()) or 0.0
            if left + seconds > MAX_TIMEOUT:
                raise Invalid(
                    f"machine {m.name} has {format_duration(left)} left: "
                    f"{format_duration(seconds)} more is over the longest lifetime, "
                    f"{format_duration(MAX_TIMEOUT)}"
                )
            m = await tx.machines.update(replace(m, extended_s=m.extended_s + seconds))
        self._wake(m)
        return m

    async def time_out(self, now: float, limit: int = 100) -> int:
        """The leader's: do to every running machine whose lifetime ran out by `now` what its
        spec says (`on_timeout`), an event saying why. How many it acted on."""
        async with self.store.read() as tx:  # most looks find nothing: no writer's lock then
            if not await tx.machines.expired(now, 1):
                return 0
        async with self.store.write() as tx:
            acted = [await self._time_out(tx, m) for m in await tx.machines.expired(now, limit)]
        for m in acted:
            self._wake(m)
        return len(acted)

    async def _time_out(
        self, tx: Tx, m: Machine, action: OnTimeout | None = None, failed: str = ""
    ) -> Machine:
        """Do `action` (None: the spec's on_timeout) to a machine whose lifetime ran out;
        `failed`: what the spec's action came to, when it did not happen."""
        action = action or m.spec.on_timeout
        why = f"timed out after {format_duration(m.lifetime_s or 0.0)}: "
        why += f"{failed}; {action.done}" if failed else action.done
        if action is OnTimeout.SUSPEND:  # it runs until its node reports it suspended
            return await self._transition(tx, replace(m, desired=Desired.SUSPENDED), m.state, why)
        wanted = Desired.STOPPED if action is OnTimeout.STOP else Desired.DESTROYED
        # Stopped as `hutch stop` does by default: its image's stop signal, a kill 10 s later.
        m = replace(m, desired=wanted, stop_signal="", stop_timeout=10.0)
        return await self._transition(tx, m, MachineState.STOPPING, why)

    async def idle_out(self, now: float, limit: int = 100) -> int:
        """The leader's: do to every running machine that idled by `now` (no connection to
        its published ports for its `idle_s`) what its spec says (`on_idle`), an event saying
        why. How many it acted on."""
        async with self.store.read() as tx:  # most looks find nothing: no writer's lock then
            if not await tx.machines.idle(now, 1):
                return 0
        async with self.store.write() as tx:
            acted = [await self._idle_out(tx, m) for m in await tx.machines.idle(now, limit)]
        for m in acted:
            self._wake(m)
        return len(acted)

    async def _idle_out(self, tx: Tx, m: Machine) -> Machine:
        action = m.spec.on_idle
        why = f"idle for {format_duration(m.spec.idle_s or 0.0)}: {action.done}"
        if action is OnIdle.SUSPEND:  # it runs until its node reports it suspended
            m = replace(m, desired=Desired.SUSPENDED, idled=True)
            return await self._transition(tx, m, m.state, why)
        m = replace(m, desired=Desired.STOPPED, stop_signal="", stop_timeout=10.0)
        return await self._transition(tx, m, MachineState.STOPPING, why)

    async def activity(self, node: Node, seen: Mapping[str, float]) -> None:
        """A node saw connections to these machines' published ports, last at these times
        (machine id -> epoch seconds): their idle clocks start again from then. Machines
        not on the node, or seen earlier than last recorded, are left alone."""
        async with self.store.write() as tx:
            for machine_id, at in sorted(seen.items()):
                try:
                    m = await tx.machines.by_id(machine_id)
                except NotFound:
                    continue  # destroyed and purged meanwhile
                if m.node_id == node.id and at > (m.active_at or 0.0):
                    await tx.machines.update(replace(m, active_at=at))

    async def wake(self, node: Node, machine_id: str, generation: int, port: int) -> Machine:
        """A connection came to port `port` of a machine that idled to suspended: resume it
        (NoCapacity, QuotaExceeded as a resume's). A machine that runs, or is wanted running,
        is left as it is; one that is not on the node is NotFound."""
        async with self.store.write() as tx:
            m = await tx.machines.by_id(machine_id)
            if m.node_id != node.id or m.generation != generation:
                raise NotFound(f"no machine {machine_id} generation {generation} on this node")
            if not (m.idled and m.desired is Desired.SUSPENDED):
                return m
            project = await tx.projects.get(m.project_id)
            m = await self._resume(tx, project, m, f"woken by a connection to port {port}")
        self._wake(m)
        return m

    async def stop(
        self, principal: Principal, project: Project, ref: str, sig: str = "", timeout: float = 10.0
    ) -> Machine:
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        if sig:
            parse_signal(sig)
        async with self.store.write() as tx:
            m = await _get_kept(tx, project, ref)
            if m.state in FINISHED or m.desired is Desired.STOPPED:
                return m  # already stopped or stopping: nothing to do
            # A suspended machine has no process to stop: it ends now (its node drops its
            # saved state).
            suspended = m.state is MachineState.SUSPENDED
            m = await self._transition(
                tx,
                replace(m, desired=Desired.STOPPED, stop_signal=sig, stop_timeout=timeout),
                MachineState.EXITED if m.node_id is None or suspended else MachineState.STOPPING,
                "stopped while suspended" if suspended else "stop requested",
            )
        self._wake(m)
        return m

    async def stop_project(self, project_id: str, why: str) -> int:
        """The leader's (a budget spent): every machine of the project that runs, or is wanted
        running, stopped as `hutch stop` does by default, an event saying why. How many."""
        stopped = []
        async with self.store.write() as tx:
            cursor = None
            while True:
                page, cursor = await tx.machines.list(
                    project_id, states=(*ACTIVE, MachineState.SUSPENDED), limit=200, cursor=cursor
                )
                for m in page:
                    if m.desired is Desired.STOPPED:
                        continue
                    suspended = m.state is MachineState.SUSPENDED
                    to = MachineState.EXITED if m.node_id is None or suspended else (
                        MachineState.STOPPING)  # fmt: skip
                    wanted = replace(m, desired=Desired.STOPPED, stop_signal="", stop_timeout=10.0)
                    stopped.append(await self._transition(tx, wanted, to, why))
                if cursor is None:
                    break
        for m in stopped:
            self._wake(m)
        return len(stopped)

    async def kill(self, principal: Principal, project: Project, ref: str, sig: str) -> Machine:
        """SIGKILL (the default) ends the machine: a stop without grace. Other signals are
        delivered to the workload through its node, and the machine may live on."""
        number = parse_signal(sig or "SIGKILL")
        if number == _signal.SIGKILL:
            return await self.stop(principal, project, ref, "SIGKILL", 0.0)
        m, node = await self.locate(principal, project, ref, Action.MACHINE_WRITE)
        await self.link.signal(node, m.sandbox_id, _signal.Signals(number).name)
        return m

    async def locate(
        self, principal: Principal, project: Project, ref: str, action: Action
    ) -> tuple[Machine, Node]:
        """A running machine and its node, for calls that go to the node (logs, exec, kill)."""
        self.policy.require(principal, action, project.id)
        async with self.store.read() as tx:
            m = await _get(tx, project, ref)
            if m.node_id is None:
                raise Conflict(f"machine {m.name} has never run")
            return m, await tx.nodes.get(m.node_id)

    async def logs(
        self,
        principal: Principal,
        project: Project,
        ref: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncIterator[bytes]:
        """The machine's log as NDJSON, in the chunks its node sends. What the node refuses is
        raised here, before any output; a sandbox it does not have (it failed before it was
        made, or is gone) has no output."""
        m, node = await self.locate(principal, project, ref, Action.MACHINE_READ)
        params = {"follow": str(follow).lower()}
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = str(since)
        stream = self.link.logs(node, m.sandbox_id, params)
        try:
            first = await anext(stream, None)
        except NotFound:
            first = None
        return _starting_with(first, stream)

    async def session(
        self, principal: Principal, project: Project, ref: str, *, attach: bool
    ) -> tuple[Machine, Node]:
        """A running machine and its node, for an exec (or `attach`) session into it. One on
        its way to running (`run -d` then `exec`, or a shell opened as the page shows it
        starting) is waited for, up to `SESSION_WAIT` seconds, by at most `SESSION_WAITERS`
        sessions of a project at once: each polls the store (changes made by another
        controller are seen no other way)."""
        self.policy.require(principal, Action.MACHINE_EXEC, project.id)
        async with self.store.read() as tx:
            m = await _get(tx, project, ref)
        if m.state in NOT_STARTED and m.desired is Desired.RUNNING:
            if self._booting[project.id] >= SESSION_WAITERS:
                raise TooManyRequests(
                    f"{SESSION_WAITERS} sessions of project {project.name} already wait for "
                    "their machines to boot: try again once they run"
                )
            self._booting[project.id] += 1
            try:
                deadline = time.monotonic() + SESSION_WAIT
                while m.state in NOT_STARTED and m.desired is Desired.RUNNING:
                    if (left := deadline - time.monotonic()) <= 0:
                        break
                    await self.notifier.wait(machine_key(m.id), min(left, POLL))
                    async with self.store.read() as tx:
                        m = await _get(tx, project, m.id)
            finally:
                self._booting[project.id] -= 1
                if not self._booting[project.id]:
                    del self._booting[project.id]
        m, node = await self.locate(principal, project, m.id, Action.MACHINE_EXEC)
        if m.state is not MachineState.RUNNING or m.desired is Desired.DESTROYED:
            refusal = Conflict if attach else Invalid
            being = "being destroyed" if m.desired is Desired.DESTROYED else m.state
            raise refusal(f"machine {m.name} is {being}, not running{_NEXT.get(str(being), '')}")
        return m, node

    def sessions_waiting(self, project_id: str) -> int:
        """How many of the project's sessions wait here for their machines to boot."""
        return self._booting[project_id]

    async def connect(self, m: Machine, node: Node, *, attach: bool) -> ClientConnection:
        """The session's WebSocket to the node (from `session`): an exec, whose ExecStart the
        caller sends first, or an attach to the main process; the caller relays it."""
        if attach:
            return await self.link.attach(node, m.sandbox_id)
        return await self.link.exec(node, m.sandbox_id)

    async def delete(self, principal: Principal, project: Project, ref: str, force: bool) -> None:
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        async with self.store.write() as tx:
            m = await _get(tx, project, ref)
            if m.state not in FINISHED and m.desired is not Desired.STOPPED and not force:
                raise Conflict(f"machine {m.name} is {m.state}: stop it first, or force")
            if m.desired is Desired.DESTROYED:
                return
            m = replace(m, desired=Desired.DESTROYED)
            if (
                m.node_id is None
                or m.state is MachineState.DESTROYED
                or (m.state in FINISHED and m.generation == 0)
            ):
                await self._transition(tx, m, MachineState.DESTROYED, "destroyed")
            else:
                m = await tx.machines.update(m)
                assert m.node_id is not None
                await tx.nodes.bump_revisions([m.node_id])
        self._wake(m)

    async def wait(
        self, principal: Principal, project: Project, ref: str, target: str, timeout: float
    ) -> tuple[Machine, bool, bool]:
        """Until the machine reaches `target` (a state, or "finished"), `timeout` passes, or it
        finished elsewhere and can no longer get there: (machine, reached, final)."""
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        wanted = _targets(target)
        deadline = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT)
        while True:
            async with self.store.read() as tx:
                m = await _get(tx, project, ref)
            if m.state in wanted:
                return m, True, False
            if _beyond(m, wanted):
                return m, False, True
            left = deadline - time.monotonic()
            if left <= 0:
                return m, False, False
            await self.notifier.wait(machine_key(m.id), min(left, 0.5))

    async def events(
        self, principal: Principal, project: Project, after: int
    ) -> AsyncIterator[list[Event]]:
        """Batches of the project's events after `after`, forever (the caller stops)."""
        self.policy.require(principal, Action.EVENT_READ, project.id)
        with self.feeds.follow(project.id) as feed:  # one poll for all of the project's streams
            while True:
                async with self.store.read() as tx:
                    events = await tx.events.since(project.id, after)
                if events:
                    after = events[-1].id
                    yield events
                else:
                    await feed.beyond(after)

    # -- node reports -----------------------------------------------------------------------------

    async def report(self, node: Node, machine_id: str, report: Report) -> Machine:
        """What a node saw happen to a machine's sandbox. Reports about another node's machine
        are NotFound; about an older generation, ignored (that sandbox is being replaced),
        and so is a second end of one generation (the first stands)."""
        state = report.state
        async with self.store.write() as tx:
            try:
                m = await tx.machines.by_id(machine_id)
            except NotFound:
                raise NotFound(f"no machine {machine_id} on this node") from None
            if m.node_id != node.id:
                raise NotFound(f"no machine {machine_id} on this node")
            if report.generation != m.generation:
                return m  # another sandbox's
            if state is m.state is MachineState.RUNNING and m.desired is Desired.SUSPENDED:
                # Its node could not suspend it (report.error says why).
                why = report.error or "not suspended"  # the node says "not suspended: ..."
                if m.time_left(time.time()) == 0:  # as its timeout said: it must not run on
                    m = await self._time_out(tx, m, OnTimeout.STOP, why)
                else:  # it runs on
                    m = await self._transition(tx, replace(m, desired=Desired.RUNNING), state, why)
            elif state is m.state is MachineState.RUNNING and report.error:
                # Resumed while its node was suspending it: the node says the suspend was
                # cancelled (or failed anyway), and it ran on.
                m = await self._transition(tx, m, state, report.error)
            elif m.state in (MachineState.DESTROYED, state):
                return m  # said before (a restarted agent repeats itself)
            elif state is MachineState.DESTROYED:
                if m.desired is not Desired.DESTROYED:
                    return m  # an old sandbox the node cleaned up; the machine lives on
                m = await self._transition(tx, m, MachineState.DESTROYED, "destroyed")
            elif state in (MachineState.EXITED, MachineState.FAILED):
                if m.state in FINISHED:
                    return m  # this generation ended already: its first end stands
                m = await self._finished(tx, m, report)
            elif state is MachineState.READY:
                if m.desired is not Desired.READY or m.state not in ACTIVE:
                    return m  # taken (its node starts it next), or destroyed meanwhile
                m = await self._transition(tx, m, state, f"ready in pool {m.pool}")
            elif state is MachineState.SUSPENDED:
                if m.state is not MachineState.RUNNING or m.desired is not Desired.SUSPENDED:
                    return m  # resumed, stopped or ended meanwhile: its node follows that next
                # Its saved memory is on its node's disk now, whatever room was left there
                # (leaving SUSPENDED gives it back with the rest of `share_of`).
                saved = Capacity(0, 0, m.spec.memory_mib)
                await tx.nodes.claim([Claim(node.id, saved, UNBOUNDED)])
                m = await self._transition(tx, m, state, "suspended")
            elif state in (MachineState.STARTING, MachineState.RUNNING):
                if m.state in FINISHED or m.state is MachineState.SUSPENDED:
                    return m  # a stale report (only a resume, which claims, runs it again)
                fresh = state is MachineState.RUNNING and not report.resumed
                m = replace(m, started_at=report.time if fresh else m.started_at)
                if report.image_digest and not m.image_digest:
                    m = replace(
                        m, image_digest=report.image_digest, image_source=report.image_source
                    )
                m = await self._transition(tx, m, state, "resumed" if report.resumed else "")
                if fresh:  # metered here too: a generation may end before its first sample
                    await tx.usage.add([started(m.id, m.generation, m.project_id,
                                                m.spec.labels, report.time)])  # fmt: skip
            else:
                raise Invalid(f"a node cannot report state {state}")
        self._wake(m)
        if m.pool:
            self.notifier.notify(POOLS)
        return m

    async def lost_with(self, node: Node) -> int:
        """The node stopped answering: its active machines are lost, and leave it (when it
        comes back, their sandboxes are not its any more, and its agent destroys them). Those
        whose restart policy says so run again elsewhere. How many were lost."""

        def losing(m: Machine) -> bool:
            return m.desired is Desired.DESTROYED or holds_capacity(m)

        async with self.store.read() as tx:  # most looks at a dead node find it emptied
            if not any(losing(m) for m in await tx.machines.on_node(node.id)):
                return 0
        woken: list[Machine] = []
        async with self.store.write() as tx:
            on_node = [m for m in await tx.machines.on_node(node.id) if losing(m)]
            # It may still run them: their addresses stay theirs until it is fenced.
            await tx.networks.fence([m.id for m in on_node], node.id)
            for placed in on_node:
                await self._release(tx, placed, None, node)
                gone = replace(placed, node_id=None, finished_at=time.time())
                if placed.desired is Desired.DESTROYED:  # nothing left to keep
                    gone = await self._transition(tx, gone, MachineState.DESTROYED, "")
                else:
                    why = f"lost with node {node.name}"
                    if placed.spec.volumes:  # its data is there: it waits for that node
                        names = ", ".join(v.name or v.volume for v in placed.spec.volumes)
                        why += (
                            f"; its volumes ({names}) are on node {node.name}, so it is not "
                            "placed elsewhere: start it again once that node is back"
                        )
                    gone = replace(gone, error=why)
                    gone = await self._transition(tx, gone, MachineState.LOST, why)
                    if (
                        gone.desired is Desired.RUNNING
                        and not gone.spec.volumes
                        and _restarts(gone, MachineState.LOST)
                    ):
                        gone = await self._new_generation(tx, gone, restarted=True)
                woken.append(gone)
        for m in woken:
            self._wake(m)
        return len(woken)

    async def drain(self, node: Node) -> int:
        """Move every machine that should run off the node (cordoned already): each starts a
        new generation that the scheduler places elsewhere, and the node destroys the old
        sandbox. Machines stopped or finished stay, and so do machines with volumes (their data
        is on this node: they run nowhere else). Warm pools' machines there are destroyed (their
        pools refill there once it is uncordoned). How many were moved."""
        moved: list[Machine] = []
        async with self.store.write() as tx:
            for m in await tx.machines.on_node(node.id):
                if m.pool:  # a cache: it goes, and its pool refills once the node is back
                    await self.destroy_pooled(tx, m, f"node {node.name} is drained")
                elif m.desired is Desired.RUNNING and m.state in ACTIVE and not m.spec.volumes:
                    moved.append(await self._new_generation(tx, m, restarted=False, why="drained"))
        for m in moved:
            self._wake(m)
        self.notifier.notify(node_key(node.id), POOLS)
        return len(moved)

    async def _finished(self, tx: Tx, m: Machine, report: Report) -> Machine:
        m = replace(
            m,
            exit_code=report.exit_code,
            oom_killed=report.oom_killed,
            error=report.error,
            finished_at=report.time,
        )
        message = report.error or f"exit code {report.exit_code}"
        if report.oom_killed:
            message += ", out of memory"
        m = await self._transition(tx, m, report.state, message)
        if m.desired is Desired.RUNNING and _restarts(m, report.state):
            return await self._new_generation(tx, m, restarted=True)
        node_id = m.node_id
        if m.spec.auto_destroy and m.desired is not Desired.DESTROYED and node_id is not None:
            m = await tx.machines.update(replace(m, desired=Desired.DESTROYED))
            await tx.nodes.bump_revisions([node_id])
        return m

    # -- internals --------------------------------------------------------------------------------

    async def _release(
        self, tx: Tx, m: Machine, state: MachineState | None = None, node: Node | None = None
    ) -> None:
        """Give back what the machine holds of its node beyond what it holds in `state` (None:
        all of it); `node`: when the caller has it."""
        if not holds_capacity(m):
            return
        assert m.node_id is not None
        if node is None:
            try:
                node = await tx.nodes.get(m.node_id)
            except NotFound:
                return
        kept = share_of(replace(m, state=state), node) if state is not None else NOTHING
        if (less := _less(share_of(m, node), kept)) != NOTHING:
            await tx.nodes.release(node.id, less)

    async def _new_generation(
        self, tx: Tx, m: Machine, *, restarted: bool, why: str = ""
    ) -> Machine:
        await self._release(tx, m)
        restarts = m.restarts + 1 if restarted else m.restarts
        backoff = min(2.0 ** (restarts - 1), RESTART_BACKOFF_MAX) if restarted else 0.0
        old_node = m.node_id
        m = replace(
            m,
            node_id=None,  # the scheduler places the new generation
            desired=Desired.RUNNING,
            generation=m.generation + 1,
            restarts=restarts,
            exit_code=None,
            error="",
            oom_killed=False,
            finished_at=None,
            start_after=time.time() + backoff if restarted else 0.0,
            pool_snapshot="",  # taken from a pool, it boots afresh from now on
        )
        message = f"restart {restarts} (policy {m.spec.restart})" if restarted else "start"
        message = f"{message}: {why}" if why else message
        m = await self._transition(tx, m, MachineState.CREATED, message)
        if old_node:
            await tx.nodes.bump_revisions([old_node])  # it must drop the old sandbox
        return m

    async def _transition(self, tx: Tx, m: Machine, state: MachineState, message: str) -> Machine:
        """Record `state` (and whatever else changed in `m`), give back capacity when an
        active machine ends or is suspended, log the event, and tell its node."""
        await self._release(tx, m, state)
        now = time.time()
        if m.desired is not Desired.SUSPENDED:  # it idled to suspended no more: nothing wakes it
            m = replace(m, idled=False)
        m = await tx.machines.update(m.entering(state, now))
        await tx.events.append([NewEvent(m.project_id, "machine.state", m.id, state, message, now)])
        if state is MachineState.DESTROYED or m.node_id is None:
            # Gone, or off its node (lost, or a new generation waiting to be placed): the
            # nodes of its networks drop it from their peers (before its addresses go).
            await bump_neighbours(tx, [m.id])
        if state is MachineState.DESTROYED:
            await tx.networks.release(m.id)
            if m.spec.volumes:  # the data stays; the volumes may go to another machine now
                await tx.volumes.detach(m.id)
        if m.node_id is not None:
            await tx.nodes.bump_revisions([m.node_id])
        return m

    def _wake(self, m: Machine) -> None:
        self.notifier.notify(*keys_of(m))


async def _check_quota(tx: Tx, project: Project, adding: Usage | None = None) -> None:
    """QuotaExceeded if what the project's machines hold (see MachineRepo.usage), plus `adding`,
    is over its quota. Locks the project row: quota checks of one project never interleave."""
    quota = (await tx.projects.lock(project.id)).quota
    usage = (await tx.machines.usage(project.id)).plus(adding or Usage())
    if (over := usage.exceeds(quota)) is not None:
        raise QuotaExceeded(
            f"project {project.name} is at its quota: {over}. Running machines hold it (ended "
            "ones do not): stop some, or ask for a larger quota"
        )


async def _pool_for(tx: Tx, project: Project, spec: MachineSpec, net: MachineNet) -> Pool | None:
    """The project's ready pool a new machine of `spec` may be taken from if it runs the same
    image (`Machines._same_image`): one of its image name, shape and runtime, for a
    machine on the default network that publishes nothing, in no security group, with no
    volumes and not from a snapshot (a pooled machine was made with none of those), and with
    no node labels or group policy to meet (its node was chosen without them)."""
    if (
        spec.volumes or spec.from_snapshot or net.networks is not None or net.ports
        or net.security_groups or spec.constraints or spec.group_policy is not GroupPolicy.NONE
    ):  # fmt: skip
        return None
    try:
        shape = PoolShape(spec.image, spec.cpus, spec.memory_mib, spec.disk_mib, spec.runtime)
    except Invalid:
        return None  # no pool could have it
    pool = await tx.pools.by_shape(project.id, shape)
    return pool if pool is not None and pool.state is PoolState.READY else None


async def _place(
    tx: Tx, spec: MachineSpec, project: Project, net: MachineNet | None = None
) -> Placement | Rejection:
    """The rule over every node, as the scheduler would apply it now."""
    ports = net.ports if net else ()
    taken = await tx.networks.ports_taken() if ports else {}
    members = (
        (await tx.machines.group_members(project.id, [spec.group]))[spec.group]
        if spec.group
        else {}
    )
    nodes = await tx.nodes.list()
    context = Context.of(members, {n.id: n for n in nodes}, ports=taken)
    return place(request_of(spec, project, ports, await pin_of(tx, spec)), nodes, context)


async def _attach(tx: Tx, project: Project, m: Machine) -> None:
    """Attach the machine's volumes to it (the caller holds the project's lock, so two machines
    cannot both get one). A micro-VM that writes a volume marks it untrusted: root in the guest
    writes its blocks as it likes, so no node's kernel mounts it after that."""
    attach = await attachable(tx, project, m.spec, m.id)
    found = await tx.volumes.by_ids([a.volume for a in attach])
    for a in attach:
        v = found[a.volume]
        crafted = v.untrusted or (m.spec.runtime == "microvm" and not a.read_only)
        await tx.volumes.update(
            replace(v, machine_id=m.id, state=VolumeState.ATTACHED, untrusted=crafted)
        )


async def _get(tx: Tx, project: Project, ref: str) -> Machine:
    with missing(f"no machine {ref!r} in project {project.name}"):
        return await tx.machines.get(project.id, ref)


async def _get_kept(tx: Tx, project: Project, ref: str) -> Machine:
    """The machine, to start, stop or restart: Conflict once it is to be destroyed."""
    m = await _get(tx, project, ref)
    if m.desired is Desired.DESTROYED:
        raise Conflict(f"machine {m.name} is being destroyed")
    return m


def _targets(target: str) -> tuple[MachineState, ...]:
    if target == "finished":
        return FINISHED
    try:
        return (MachineState(target),)
    except ValueError:
        raise Invalid(
            f"cannot wait for {target!r}: use a state ({', '.join(MachineState)}) or finished"
        ) from None


def _beyond(m: Machine, wanted: tuple[MachineState, ...]) -> bool:
    """Whether a finished machine stays where it is: only someone starting it again, or its
    destruction under way, takes it elsewhere (a restart policy acts before it shows finished)."""
    if not m.state.finished:
        return False
    return not (MachineState.DESTROYED in wanted and m.desired is Desired.DESTROYED)


def _restarts(m: Machine, state: MachineState) -> bool:
    if m.spec.restart is RestartPolicy.ALWAYS:
        return True
    failed = state in (MachineState.FAILED, MachineState.LOST) or (m.exit_code or 0) != 0
    return m.spec.restart is RestartPolicy.ON_FAILURE and failed


async def _starting_with(
    first: bytes | None, rest: AsyncGenerator[bytes, None]
) -> AsyncIterator[bytes]:
    """`first`, then `rest`; nothing at all when `first` is None. `rest` is closed with it, so
    that the node's stream ends as soon as its reader does."""
    try:
        if first is None:
            return
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()
