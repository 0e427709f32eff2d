"""The control plane's store: repositories per aggregate, bound to one transaction.

Every query about a tenant's objects takes the project id, so a project can only ever see its
own (another project's machine is NotFound, never Forbidden). Updates are compare-and-set on a
`version` column: Conflict when someone else changed the row first. A node's allocation changes
only by conditional increments (`nodes.claim()`, `nodes.release()`), so claims never overbook a
node and never conflict with its heartbeats. `Store.write()` serialises writers where it
matters: on SQLite with BEGIN IMMEDIATE (one writer at a time), on PostgreSQL with row locks
taken through `projects.lock()` and `nodes.lock()`.
"""

import builtins
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, Protocol

from hutch.model.addressing import Address, Network, Rule, SecurityGroup, ShownWiring
from hutch.model.machine import (
    Capacity,
    Event,
    GroupPolicy,
    Machine,
    MachineLine,
    MachineState,
    Node,
    Strategy,
    VolumeAttach,
)
from hutch.model.metrics import MetricPoint
from hutch.model.network import PortMapping
from hutch.model.pool import Pool, PoolShape
from hutch.model.prices import Budget, Credit, Invoice, PriceBook
from hutch.model.snapshot import MachineSnapshot
from hutch.model.tenancy import Project, Quota, Session, Token, Usage
from hutch.model.usage import By, Held, Hour, Owner, UsageMark, UsageRecord, UsageTotal
from hutch.model.volume import Snapshot, Volume

MAX_PAGE = 200  # machines per `MachineRepo.list` page at most, whatever the caller asks
MAX_POINTS = 2000  # metric points per `MetricRepo.history` at most


class Claim(NamedTuple):
    """Capacity to add to a node's allocation, as long as it stays within `limit`."""

    node_id: str
    want: Capacity
    limit: Capacity


class Records(NamedTuple):
    """Machines as MachineRepo.records reads them: a row per machine, its values in the order
    of `fields`."""

    fields: tuple[str, ...]
    rows: Sequence[Sequence[Any]]


class Pending(NamedTuple):
    """A machine waiting for a node as the scheduler reads it (`MachineRepo.pending`): what
    placing it asks, named as in its MachineSpec, not the whole row (a page is a thousand)."""

    id: str
    project_id: str
    created_at: float
    error: str  # why it waited at the last round
    image: str
    cpus: int
    memory_mib: int
    scratch_mib: int
    runtime: str
    constraints: Mapping[str, str]
    strategy: Strategy | None
    group: str
    group_policy: GroupPolicy
    volumes: tuple[VolumeAttach, ...]
    from_snapshot: str


class NewEvent(NamedTuple):
    project_id: str
    kind: str
    object_id: str
    state: str
    message: str
    time: float


class ProjectRepo(Protocol):
    async def create(self, project: Project) -> None:
        """Conflict if the name is taken."""

    async def get(self, project_id: str) -> Project:
        """NotFound if there is no such project."""

    async def by_name(self, name: str) -> Project:
        """NotFound if there is no such project."""

    async def list(self) -> builtins.list[Project]: ...

    async def set_strategy(self, project_id: str, strategy: Strategy) -> Project: ...

    async def set_quota(self, project_id: str, quota: Quota) -> Project: ...

    async def delete(self, project_id: str) -> None:
        """Conflict while it has machines that are not destroyed, or images."""

    async def lock(self, project_id: str) -> Project:
        """The project, its row held until the transaction ends (quota checks cannot
        interleave); NotFound if there is no such project."""


class TokenRepo(Protocol):
    async def create(self, token: Token, secret_hash: str) -> None: ...

    async def by_hash(self, secret_hash: str) -> Token | None: ...

    async def get(self, token_id: str) -> Token:
        """NotFound if there is no such token."""

    async def list(self, project_id: str | None) -> builtins.list[Token]:
        """The project's tokens (None: the system tokens)."""

    async def revoke(self, token_id: str, at: float) -> Token: ...

    async def usable(
        self, token_ids: Sequence[str], project_ids: Sequence[str], now: float
    ) -> tuple[builtins.set[str], builtins.set[str]]:
        """In one statement: those of `token_ids` that are neither revoked nor expired at
        `now`, and those of `project_ids` that still exist (for open streams, services/streams)."""


class SessionRepo(Protocol):
    """Dashboard sessions, by the sha256 of their cookie's secret."""

    async def create(self, session: Session) -> None:
        """NotFound if its token does not exist."""

    async def get(self, session_id: str) -> Session | None:
        """The session, expired or not (the caller checks)."""

    async def choose(self, session_id: str, project_id: str) -> None:
        """The project it acts in from now on (a system token's choice)."""

    async def delete(self, session_id: str) -> None:
        """Ended (signed out); nothing if there is no such session."""

    async def end_token(self, token_id: str) -> int:
        """End every session of the token (revoked): how many."""

    async def prune(self, now: float) -> int:
        """Delete the sessions expired at `now`: how many."""

    async def keep_newest(self, token_id: str, keep: int) -> int:
        """Delete the token's sessions but its `keep` newest: how many."""


class MachineRepo(Protocol):
    async def create(self, machine: Machine) -> None:
        """Conflict if the project already has a machine of that name (destroyed ones aside)."""

    async def create_many(self, machines: Sequence[Machine]) -> None:
        """The rows `create` writes for each, in one batched statement (a bulk load); a broken
        constraint refuses them all, as Conflict, without saying which."""

    async def get(self, project_id: str, ref: str) -> Machine:
        """By id or by name, within the project; NotFound otherwise."""

    async def list(
        self,
        project_id: str,
        *,
        states: Sequence[MachineState] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Machine], str | None]:
        """Oldest first, at most `limit` (and at most MAX_PAGE) machines; the second value is
        the cursor of the next page (None: last page)."""

    async def records(
        self,
        project_id: str,
        *,
        states: Sequence[MachineState] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[Records, str | None]:
        """The page `list` reads, each machine as its record: its fields and its spec's, as
        stored (JSON's types, enums as their values, volumes as dicts of VolumeAttach's
        fields), but for the bookkeeping no view shows (version, generation, pool, stop
        signal...); and its wiring, read with it: "addresses" ([position, network, network
        id, mac, ip4, ip6]), "ports" ([host port, port, protocol, host ip]) and
        "security_groups" ([position, name]), each a list in no particular order. A listing
        writes these straight to its documents: making Machine objects of them, or even a
        dict per row, cost more than the rest of the request."""

    async def lines(
        self, project_id: str, states: Sequence[MachineState]
    ) -> builtins.list[MachineLine]:
        """Every machine of the project in one of `states` (warm pools' aside), oldest first,
        as lines of a list: one statement, no pages."""

    async def update(self, machine: Machine) -> Machine:
        """Write `machine` if the stored version is `machine.version`; return it with the
        version bumped. Conflict if the row changed in between, NotFound if it is gone."""

    async def usage(self, project_id: str) -> Usage:
        """What the project's machines hold, or will hold once placed, on their nodes: those
        in an ACTIVE state (created, starting, running, stopping) and placed or wanted running.
        Ended machines (exited, failed, lost, destroyed) hold nothing, as on their nodes;
        suspended ones count, and hold their disk, but no CPU or memory."""

    async def on_node(self, node_id: str) -> builtins.list[Machine]:
        """Every machine placed on the node that is not destroyed (for the node's agent)."""

    async def by_id(self, machine_id: str) -> Machine:
        """Any project's machine by id: only for node reports, which name the machine."""

    async def pending(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> builtins.list[Pending]:
        """Machines to place (no node, wanted running, created), oldest first, after the
        (created_at, id) given; on PostgreSQL locked to the transaction, skipping those
        another transaction holds."""

    async def place(self, placed: Sequence[tuple[str, str]], at: float) -> None:
        """Set the node of pending machines: (machine id, node id) pairs."""

    async def still_pending(self, why: Sequence[tuple[str, str]], at: float) -> None:
        """Say why pending machines wait (their `error`): (machine id, why) pairs."""

    async def group_members(
        self, project_id: str, groups: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """For each of the project's groups: node id -> its active machines there."""

    async def image_holders(self, project_id: str, images: Sequence[str]) -> dict[str, set[str]]:
        """For each image name: the nodes where the project's machines of it are placed (so
        those nodes hold the image)."""

    async def pooled(self, project_id: str | None = None) -> builtins.list[Machine]:
        """The warm pools' machines (`Machine.pool`) that are not destroyed, of the project
        (None: of every project), oldest first."""

    async def expired(self, now: float, limit: int) -> builtins.list[Machine]:
        """At most `limit` machines running and wanted running whose lifetime ran out by `now`
        (`Machine.expires_at`), the first to run out first."""

    async def idle(self, now: float, limit: int) -> builtins.list[Machine]:
        """At most `limit` machines running and wanted running that idled by `now`
        (`Machine.idle_at`), the first to idle first."""

    async def purge(self, destroyed_before: float, limit: int) -> int:
        """Delete at most `limit` machines destroyed (last changed) before `destroyed_before`,
        oldest first, and their events: how many went. Nothing references a machine's row but
        its events; a machine in any other state is never purged."""


class NodeRepo(Protocol):
    async def create(self, node: Node, credential_hash: str) -> None:
        """Conflict if the name is taken."""

    async def create_many(self, nodes: Sequence[tuple[Node, str]]) -> None:
        """(node, credential hash) pairs, as `create` writes each, in one batched statement;
        a broken constraint refuses them all, as Conflict, without saying which."""

    async def get(self, node_id: str) -> Node: ...

    async def changed(
        self, known: Mapping[str, Node]
    ) -> tuple[builtins.list[Node], builtins.set[str]]:
        """What differs from `known` (node id -> the node as read before): the nodes that are
        new, updated (their version moved) or whose allocation changed, and the ids of known
        nodes that are gone. It reads versions and allocations, and whole rows only for new
        and updated nodes: a cheap refresh of a snapshot of many nodes."""

    async def by_credential(self, credential_hash: str) -> Node | None: ...

    async def list(self) -> builtins.list[Node]: ...

    async def update(self, node: Node) -> Node:
        """Compare-and-set on `node.version`, as MachineRepo.update; the allocation is left
        as it is (see claim and release)."""

    async def lock(self, node_id: str) -> Node:
        """The node, its row held until the transaction ends; NotFound if there is none."""

    async def delete(self, node_id: str) -> None:
        """Conflict while live machines are on it; NotFound if there is no such node."""
        ...

    async def claim(self, claims: Sequence[Claim]) -> builtins.set[str]:
        """Each claim's capacity added to its node where it stays within the limit, in one
        statement; the nodes claimed (a node missing from it: another writer filled it)."""

    async def release(self, node_id: str, want: Capacity) -> None: ...

    async def bump_revisions(self, node_ids: Sequence[str]) -> None:
        """Something their agents must see changed: a new revision of each node for the long
        poll (nodes that are gone are passed over)."""

    async def revision(self, node_id: str) -> int: ...


class EventRepo(Protocol):
    async def append(self, events: Sequence[NewEvent]) -> builtins.list[Event]:
        """The events, in one statement, numbered in their projects in the order given;
        NotFound if a project is gone."""

    async def since(
        self, project_id: str, after: int, limit: int = 500
    ) -> builtins.list[Event]: ...

    async def last(self, project_id: str) -> int:
        """The number of the project's newest event (0: none yet); NotFound if it is gone."""

    async def of_object(self, project_id: str, object_id: str, limit: int) -> builtins.list[Event]:
        """The object's newest `limit` events (at most MAX_EVENTS), newest first."""


class LeaseRepo(Protocol):
    async def acquire(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        """Take or renew the lease: its term, or None while someone else holds it."""

    async def release(self, name: str, holder: str) -> None: ...


class NetworkRepo(Protocol):
    """Networks, addresses (see `sql/networks.py` for how one is never given twice), fences of
    lost machines' addresses, published ports, and facts."""

    async def fact(self, key: str, candidate: str) -> str:
        """The stored value of `key`, storing `candidate` if there is none yet."""

    async def lock_fact(self, key: str) -> None:
        """Hold the (stored) fact's row until the transaction ends: a controller-wide lock."""

    async def create(self, network: Network) -> bool:
        """False if its slot or pool4 was taken meanwhile; Conflict if its name is."""

    async def subnets(self) -> builtins.list[tuple[str, str, str, str]]:
        """Every network's (project id, name, subnet4, subnet6), on the whole controller."""

    async def slots(self) -> builtins.list[tuple[int, int | None]]:
        """Every network's (slot, pool4)."""

    async def get(self, project_id: str, ref: str) -> Network:
        """By id or name, within the project; NotFound otherwise."""

    async def list(self, project_id: str) -> builtins.list[Network]: ...

    async def by_ids(self, ids: Sequence[str]) -> dict[str, Network]: ...

    async def delete(self, project_id: str, network_id: str) -> None:
        """Conflict while any machine holds an address on it."""

    async def assign(self, network: Network, machine_id: str, position: int) -> Address:
        """A free address of the network, now the machine's; NoCapacity when it is full."""

    async def addresses(self, machine_ids: Sequence[str]) -> dict[str, builtins.list[Address]]: ...

    async def shown(self, machine_ids: Sequence[str]) -> dict[str, ShownWiring]:
        """Each machine's addresses, ports and security groups as its views show them (every
        id a key), in one statement."""

    async def peers(
        self, network_ids: Sequence[str]
    ) -> builtins.list[tuple[Address, str, str, str]]:
        """Placed live machines on the networks: (address, name, project id, node id)."""

    async def counts(self, network_ids: Sequence[str]) -> dict[str, int]:
        """How many machines hold addresses on each network."""

    async def release(self, machine_id: str) -> None:
        """Free a destroyed machine's addresses, unless a fence holds them."""

    async def fence(self, machine_ids: Sequence[str], node_id: str) -> None: ...

    async def fenced(self, node_id: str) -> int:
        """The node is fenced: free what its fences held. How many machines' addresses."""

    async def publish(self, machine_id: str, ports: Sequence[PortMapping]) -> None: ...

    async def ports(self, machine_ids: Sequence[str]) -> dict[str, builtins.list[PortMapping]]: ...

    async def ports_taken(self) -> dict[str, builtins.set[tuple[int, str]]]:
        """Node id -> (host port, protocol) its active machines publish."""


class SecurityGroupRepo(Protocol):
    async def create(self, group: SecurityGroup) -> None:
        """Conflict if the name is taken in the project."""

    async def get(self, project_id: str, ref: str) -> SecurityGroup: ...

    async def list(self, project_id: str) -> builtins.list[SecurityGroup]: ...

    async def by_ids(self, ids: Sequence[str]) -> dict[str, SecurityGroup]: ...

    async def delete(self, project_id: str, group_id: str) -> None:
        """Conflict while live machines use it or other groups' rules name it."""

    async def add_rule(self, group_id: str, rule_id: str, rule: Rule, at: float) -> None: ...

    async def remove_rule(self, group_id: str, rule_id: str) -> None: ...

    async def attach(self, machine_id: str, group_ids: Sequence[str]) -> None: ...

    async def nodes(self, group_ids: Sequence[str]) -> builtins.set[str]:
        """The nodes of the live machines in these groups."""

    async def machines(self, group_id: str) -> builtins.list[str]:
        """The live machines in the group."""

    async def of_machines(self, machine_ids: Sequence[str]) -> dict[str, builtins.list[str]]: ...


class VolumeRepo(Protocol):
    """Volumes and their snapshots; callers hold the project's lock while they change them."""

    async def create(self, volume: Volume) -> None:
        """Conflict if the project has a volume of that name."""

    async def get(self, project_id: str, ref: str) -> Volume:
        """By id or name, within the project; NotFound otherwise."""

    async def list(self, project_id: str) -> builtins.list[Volume]: ...

    async def by_ids(self, ids: Sequence[str]) -> dict[str, Volume]: ...

    async def of_machine(self, machine_id: str) -> builtins.list[Volume]:
        """The volumes attached to the machine."""

    async def detach(self, machine_id: str) -> None:
        """Whatever volumes the machine has are attached to nothing (available) from now."""

    async def update(self, volume: Volume) -> Volume:
        """Write everything but its id, project and creation time; NotFound if it is gone."""

    async def delete(self, volume_id: str) -> None:
        """The volume and its snapshots' rows."""

    async def totals(self, project_id: str) -> tuple[int, int]:
        """(bytes of the project's volumes, bytes of its snapshots), by their sizes."""

    async def create_snapshot(self, snap: Snapshot) -> None:
        """Conflict if the volume has a snapshot of that name."""

    async def snapshot(self, volume_id: str, ref: str) -> Snapshot:
        """By id or name, of the volume; NotFound otherwise."""

    async def snapshots(self, volume_id: str) -> builtins.list[Snapshot]: ...

    async def delete_snapshot(self, snapshot_id: str) -> None: ...


class SnapshotRepo(Protocol):
    """Machine snapshots; callers hold the project's lock while they change them."""

    async def create(self, snap: MachineSnapshot) -> None:
        """Conflict if the project has a machine snapshot of that name."""

    async def get(self, project_id: str, ref: str) -> MachineSnapshot:
        """By id or name, within the project; NotFound otherwise."""

    async def list(self, project_id: str, pool: str = "") -> builtins.list[MachineSnapshot]:
        """The project's own snapshots, oldest first; `pool`: that warm pool's instead."""

    async def by_id(self, snapshot_id: str) -> MachineSnapshot:
        """Any project's, by id: for placing its clones (whose spec names it by id)."""

    async def update(self, snap: MachineSnapshot) -> MachineSnapshot:
        """Write everything but its id, project and creation time; NotFound if it is gone."""

    async def delete(self, snapshot_id: str) -> None: ...

    async def clones(self, snapshot_id: str) -> builtins.list[str]:
        """The names of the machines that continue from it and are not destroyed (taken from
        a pool with it as its template: that have not ended)."""


class PoolRepo(Protocol):
    """Warm pools; callers hold the project's lock while they change one."""

    async def create(self, pool: Pool) -> None:
        """Conflict if the project has a pool of that image and shape."""

    async def get(self, project_id: str, pool_id: str) -> Pool:
        """By id, within the project; NotFound otherwise."""

    async def by_shape(self, project_id: str, shape: PoolShape) -> Pool | None: ...

    async def list(self, project_id: str | None = None) -> builtins.list[Pool]:
        """The project's pools (None: every project's), oldest first."""

    async def update(self, pool: Pool) -> Pool:
        """Compare-and-set on `pool.version`, as MachineRepo.update."""

    async def delete(self, pool_id: str) -> None: ...


class MetricRepo(Protocol):
    """Machines' metric history, per tier (`MetricPoint.step`)."""

    async def put(self, points: Sequence[MetricPoint]) -> None:
        """Store each point, or keep the stored one of its bucket if that one is newer."""

    async def history(
        self, machine_id: str, step: float, since: float, limit: int
    ) -> builtins.list[MetricPoint]:
        """The machine's points of the tier whose buckets end after `since`, oldest first, at
        most `limit` (and at most MAX_POINTS)."""

    async def latest(
        self, step: float, since: float, project_id: str | None = None
    ) -> builtins.list[tuple[str, str, MetricPoint]]:
        """The newest point of the tier of every machine that is not destroyed and has one
        since `since`, of its current generation (the project's, or every project's), with
        the names of its project and machine."""

    async def prune(self, step: float, before: float) -> int:
        """Delete the tier's points of buckets before `before`; how many."""


class BillingRepo(Protocol):
    """The price book, closed invoices, credits and budgets (store/sql/billing.py)."""

    async def book(self) -> PriceBook:
        """The stored book (an empty one, everything free, until one is set)."""

    async def set_book(self, book: PriceBook, at: float) -> None: ...

    async def close(self, invoice: Invoice) -> bool:
        """Store the closed invoice; False (nothing written) if the project's invoice of that
        period exists already."""

    async def carry(self, credit_ids: Sequence[str], invoice_id: str) -> None:
        """The credits are the invoice's credit lines from now."""

    async def closed_until(self) -> dict[str, float]:
        """Each project's latest closed period's end (a project with none is not in it)."""

    async def invoice(self, project_id: str | None, invoice_id: str) -> Invoice | None:
        """A closed invoice by id, of the project (None: of any project)."""

    async def invoices(
        self, project_id: str | None, limit: int, before: float | None = None
    ) -> builtins.list[Invoice]:
        """Closed invoices, newest period first, of periods that start before `before`."""

    async def add_credit(self, credit: Credit) -> None: ...

    async def pending_credits(self, project_id: str, before: float) -> builtins.list[Credit]:
        """Credits granted before `before` that no invoice carries yet, oldest first."""

    async def budget(self, project_id: str) -> Budget | None: ...

    async def budgets(self) -> builtins.list[Budget]:
        """The budgets of every project that exists."""

    async def set_budget(self, budget: Budget) -> None: ...

    async def mark_budget(self, project_id: str, period_start: float, level: int) -> bool:
        """Record the threshold announced in the period; False if it was already."""

    async def delete_budget(self, project_id: str) -> None: ...


class UsageRepo(Protocol):
    """The usage ledger (hutch.model.usage): append-only, idempotent by each record's key."""

    async def add(self, records: Sequence[UsageRecord]) -> int:
        """Add the records, in batches; those whose key is in the ledger are skipped (also
        when another transaction adds them at the same time): how many were added."""

    async def totals(
        self,
        project_id: str | None,
        since: float | None = None,
        until: float | None = None,
        by: By = None,
    ) -> builtins.list[UsageTotal]:
        """The sums of the records whose start is in [since, until), per project (None: every
        project's) and group (see UsageTotal), ordered by project and group."""

    async def by_labels(
        self, project_id: str, since: float, until: float
    ) -> builtins.list[tuple[dict[str, str], UsageTotal]]:
        """The project's sums in [since, until) per set of labels (a machine's, as recorded;
        {} for none), each record in one group: what an invoice prices by label. (billing's)"""

    async def records(
        self,
        project_id: str | None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[builtins.list[UsageRecord], str | None]:
        """The records whose start is in [since, until), in the order they were added, at
        most `limit` (and MAX_RECORDS); the second value is the next page's cursor (None: last
        page). Invalid for a cursor no page gave."""

    async def add_into(self, hours: Sequence[Hour]) -> None:
        """Add each hour into the row of its key: each quantity summed, the interval
        widened; a key not in the ledger is a new row. Not idempotent: metering calls it in
        the transaction that moves the marks of the samples the records are made of."""

    async def owners(self, machine_ids: Sequence[str]) -> dict[str, Owner]:
        """What metering needs of the machines (any project's, destroyed ones too until they
        are purged), by id; those not found are not in it."""

    async def marks(self, streams: Sequence[tuple[str, int]]) -> dict[tuple[str, int], UsageMark]:
        """The marks of the (subject, generation) streams, a new one (seq 0) for those that
        had none; held until the transaction ends (on SQLite the writer holds everything)."""

    async def set_marks(self, marks: Sequence[UsageMark]) -> None:
        """Write marks that `marks()` returned, moved on."""

    async def held(self, start: float, end: float) -> builtins.list[Held]:
        """Every machine's scratch disk, volume, volume snapshot and machine snapshot that
        existed at some time in [start, end), as far as the store knows: a machine until it
        was destroyed (until it is purged), the others while their rows are there."""

    async def prune_marks(self) -> int:
        """Delete the marks of the generations of machines the store no longer has (purged,
        `machine_retention` after they were destroyed), ended or not: how many went. Their
        samples count nothing any more (`owners` does not find them)."""


class Tx(Protocol):
    projects: ProjectRepo
    tokens: TokenRepo
    sessions: SessionRepo
    machines: MachineRepo
    nodes: NodeRepo
    events: EventRepo
    leases: LeaseRepo
    networks: NetworkRepo
    security_groups: SecurityGroupRepo
    volumes: VolumeRepo
    snapshots: SnapshotRepo
    pools: PoolRepo
    metrics: MetricRepo
    billing: BillingRepo
    usage: UsageRepo


class Store(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (Alembic migrations)."""

    async def close(self) -> None: ...

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only transaction."""

    def write(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: committed when the block ends, rolled back if it raises."""

    def watch_revisions(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Tell `listener`, after each write of this process commits, the nodes whose revisions
        it bumped (another process's writes are not told: readers poll for those)."""
