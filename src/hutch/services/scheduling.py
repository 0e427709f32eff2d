"""The scheduler: places machines that wait for a node, in batches, on the leading controller.

A round pages through the pending machines oldest first. Each page is one write transaction:
every machine is placed against a snapshot of the nodes in a `placement.Index` (read at the
round's start, then what changed every couple of seconds; the index takes each claim at once,
so one page never overbooks a node), then the page's claims are committed in one conditional
statement (`nodes.claim`): a node that another writer changed meanwhile refuses, its machines
stay pending for the next round, and the snapshot is read again. Machines that fit nowhere stay
pending too, saying why in their `error`, and are tried again at every round: rounds run when a
machine is created or restarted, when capacity is given back, and every few seconds.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hutch.model.machine import Capacity, MachineState
from hutch.placement import Index, Placement, Request, limit, need, plus
from hutch.services.machines import pin_of, request_of
from hutch.services.networks import bump_neighbours
from hutch.services.notify import POOLS, SCHEDULER, Notifier, keys_on
from hutch.store.base import Claim, NewEvent, Pending, Store, Tx

log = logging.getLogger("hutch.scheduler")
PAGE = 1000  # machines per transaction
ROUND_EVERY = 2.0  # seconds between rounds when nothing wakes the scheduler
WAITING = "waiting for a node: "
NOTHING = Capacity(0, 0, 0)
SNAPSHOT_AGE = 2.0  # seconds a round places on one read of the nodes


@dataclass(frozen=True, slots=True)
class RoundResult:
    placed: int
    waiting: int  # fit nowhere
    refused: int  # their node was filled meanwhile: next round


class Scheduler:
    def __init__(self, store: Store, notifier: Notifier, page: int = PAGE) -> None:
        self.store = store
        self.notifier = notifier
        self.page_size = page

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        """Rounds while `leading()`, until `stop` is set (notify SCHEDULER with it)."""
        while not stop.is_set():
            if leading():
                try:
                    await self.round()
                except Exception:  # a store that failed: the next round tries again
                    log.exception("a scheduling round failed")
            if not stop.is_set():
                await self.notifier.wait(SCHEDULER, ROUND_EVERY)

    async def round(self) -> RoundResult:
        total = RoundResult(0, 0, 0)
        after: tuple[float, str] | None = None
        snapshot: Snapshot | None = None
        while True:
            result, after, snapshot = await self.page(after, snapshot)
            total = RoundResult(
                total.placed + result.placed,
                total.waiting + result.waiting,
                total.refused + result.refused,
            )
            if after is None:
                return total

    async def page(
        self, after: tuple[float, str] | None = None, snapshot: "Snapshot | None" = None
    ) -> tuple[RoundResult, tuple[float, str] | None, "Snapshot | None"]:
        """One page of pending machines after `after`, in one transaction: the outcome, where
        the next page starts (None: this was the last), and the snapshot of the nodes to pass
        to it (None: take a fresh one)."""
        now = time.time()
        woken: set[str] = set()
        async with self.store.write() as tx:
            pending = await tx.machines.pending(self.page_size, after)
            if not pending:
                return RoundResult(0, 0, 0), None, snapshot
            if snapshot is None:
                snapshot = Snapshot(Index(await tx.nodes.list()), time.monotonic())
            elif time.monotonic() - snapshot.taken > SNAPSHOT_AGE:
                await snapshot.refresh(tx)
            index = snapshot.index
            projects = {
                p: await tx.projects.get(p) for p in sorted({m.project_id for m in pending})
            }
            members = await _members(tx, pending)
            holders = await snapshot.holders_of(tx, pending)
            ports = await tx.networks.ports([m.id for m in pending])
            pins = {m.id: await pin_of(tx, m) for m in pending if m.volumes or m.from_snapshot}
            taken = await tx.networks.ports_taken() if any(ports.values()) else {}
            placed: list[tuple[Pending, str]] = []
            claims: dict[str, Capacity] = {}
            waiting: list[tuple[Pending, str]] = []
            # Nodes only fill up during a page: a request refused once is refused again, and
            # a backlog of one size costs one walk over the nodes, not one per machine.
            refused: dict[tuple[object, ...], str] = {}
            for m in pending:
                pin = pins.get(m.id, ("", ""))
                request = request_of(m, projects[m.project_id], ports[m.id], pin)
                group = members.get((m.project_id, m.group)) if m.group else None
                shape = _shape(request)
                if group is None and shape in refused:  # holders change no filter
                    waiting.append((m, refused[shape]))
                    continue
                held = holders.get((m.project_id, m.image), frozenset())
                decision = index.place(request, group, held, taken)
                if not isinstance(decision, Placement):
                    why = WAITING + decision.explain()
                    waiting.append((m, why))
                    if group is None:
                        refused[shape] = why
                    continue
                node = decision.node
                claims[node.id] = plus(claims.get(node.id, NOTHING), need(request, node))
                index.claim(node.id, request)
                if request.ports:
                    taken.setdefault(node.id, set()).update(request.ports)
                if group is not None:
                    group[node.id] = group.get(node.id, 0) + 1
                placed.append((m, node.id))
            got = await tx.nodes.claim(
                [Claim(n, want, limit(index.node(n))) for n, want in claims.items()]
            )
            placed_now = [(m, node_id) for m, node_id in placed if node_id in got]
            await tx.machines.place([(m.id, node_id) for m, node_id in placed_now], now)
            # A pending machine is created (`tables.PENDING`): placed, it still is, until its
            # node starts it.
            events = [
                NewEvent(m.project_id, "machine.placed", m.id, MachineState.CREATED,
                         f"on node {index.node(n).name}", now)
                for m, n in placed_now
            ]  # fmt: skip
            await tx.events.append(events)
            await tx.nodes.bump_revisions([node_id for _, node_id in placed_now])
            await bump_neighbours(tx, [m.id for m, _ in placed_now])
            # Said once, not at every round.
            await tx.machines.still_pending(
                [(m.id, why) for m, why in waiting if m.error != why], now
            )
            for m, node_id in placed_now:
                woken.update(keys_on(m.id, m.project_id, node_id))
            if placed_now:
                woken.add(POOLS)  # pools refill only once no machine waits for a node
        if len(got) < len(claims):
            snapshot = None  # another writer changed nodes under it: read them again
        else:
            snapshot.took(placed_now)
        if woken:
            self.notifier.notify(*woken)
        last = pending[-1]
        more = (last.created_at, last.id) if len(pending) == self.page_size else None
        outcome = RoundResult(len(placed_now), len(waiting), len(placed) - len(placed_now))
        return outcome, more, snapshot


@dataclass(slots=True)
class Snapshot:
    """The nodes as a round sees them: read once, then kept current with its own claims.
    Others' changes (a release, a node going away) show at the next read; a claim made on a
    stale view is refused by the store, never overbooked.

    Which nodes hold each image are read once a snapshot too, then grown with its own
    placements: a machine placed or gone elsewhere shows at the next read (a holder is a
    preference, not a filter), which a project of thousands of machines would otherwise
    scan at every page."""

    index: Index
    taken: float  # time.monotonic()
    # (project id, image) -> its holders: the same set object from page to page while they do
    # not change (`Index` finds the set it sorted by identity at once).
    holders: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    async def refresh(self, tx: Tx) -> None:
        """Take in what changed in the store since: only those nodes are read and re-sorted."""
        changed, gone = await tx.nodes.changed(self.index.nodes)
        for node_id in gone:
            self.index.remove(node_id)
        for node in changed:
            self.index.update(node)
        self.holders.clear()
        self.taken = time.monotonic()

    async def holders_of(
        self, tx: Tx, pending: Sequence[Pending]
    ) -> dict[tuple[str, str], frozenset[str]]:
        """Which nodes hold the page's images: (project id, image) -> node ids."""
        keys = {(m.project_id, m.image) for m in pending}
        missing: dict[str, set[str]] = {}
        for project_id, image in keys - self.holders.keys():
            missing.setdefault(project_id, set()).add(image)
        for project_id, images in sorted(missing.items()):
            found = await tx.machines.image_holders(project_id, sorted(images))
            for image, nodes in found.items():
                self.holders[project_id, image] = frozenset(nodes)
        return {key: self.holders[key] for key in keys}

    def took(self, placed: Sequence[tuple[Pending, str]]) -> None:
        """A page's placements, committed: their nodes hold their images now."""
        new: dict[tuple[str, str], set[str]] = {}
        for m, node_id in placed:
            new.setdefault((m.project_id, m.image), set()).add(node_id)
        for key, nodes in new.items():
            if not nodes <= (known := self.holders.get(key, frozenset())):
                self.holders[key] = known | nodes


def _shape(r: Request) -> tuple[object, ...]:
    return (
        r.cpus,
        r.memory_mib,
        r.disk_mib,
        r.runtime,
        r.strategy,
        tuple(sorted(r.labels.items())),
        tuple(sorted(r.ports)),
        r.node,
        r.node_why,
    )


async def _members(tx: Tx, pending: list[Pending]) -> dict[tuple[str, str], dict[str, int]]:
    """Where the page's groups run: (project id, group) -> node id -> machines."""
    wanted: dict[str, set[str]] = {}
    for m in pending:
        if m.group:
            wanted.setdefault(m.project_id, set()).add(m.group)
    found = {}
    for project_id, groups in sorted(wanted.items()):
        for group, where in (await tx.machines.group_members(project_id, sorted(groups))).items():
            found[project_id, group] = where
    return found
