"""The scheduler: places machines that wait for a node, in batches, on the leading controller.

A round pages through the pending machines oldest first. Each page is one write transaction:
a fresh snapshot of the nodes goes into a `scheduler.Index`, every machine is placed against it
(the index takes each claim at once, so one page never overbooks a node), then the claims are
committed per node as conditional increments (`nodes.claim`): a node that another writer filled
meanwhile refuses, and its machines stay pending for the next round. Machines that fit nowhere
stay pending too, saying why in their `error`, and are tried again at every round: rounds run
when a machine is created or restarted, when capacity is given back, and every few seconds.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hutch.model.machine import Capacity, Machine
from hutch.model.tenancy import Project
from hutch.scheduler import Index, Placement, limit, need, plus
from hutch.services.machines import request_of
from hutch.services.notify import SCHEDULER, Notifier, machine_key, node_key, project_key
from hutch.store.base import Claim, NewEvent, Store, Tx

log = logging.getLogger("hutch.scheduler")
PAGE = 1000  # machines per transaction
ROUND_EVERY = 2.0  # seconds between rounds when nothing wakes the scheduler
WAITING = "waiting for a node: "
NOTHING = Capacity(0, 0, 0)


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
        while True:
            result, after = await self.page(after)
            total = RoundResult(
                total.placed + result.placed,
                total.waiting + result.waiting,
                total.refused + result.refused,
            )
            if after is None:
                return total

    async def page(
        self, after: tuple[float, str] | None
    ) -> tuple[RoundResult, tuple[float, str] | None]:
        """One page of pending machines after `after`, in one transaction; where the next
        page starts (None: this was the last)."""
        now = time.time()
        woken: set[str] = set()
        async with self.store.write() as tx:
            pending = await tx.machines.pending(self.page_size, after)
            if not pending:
                return RoundResult(0, 0, 0), None
            index = Index(await tx.nodes.list())
            projects: dict[str, Project] = {}
            members: dict[tuple[str, str], dict[str, int]] = {}
            placed: list[tuple[Machine, str]] = []
            claims: dict[str, Capacity] = {}
            waiting: list[tuple[Machine, str]] = []
            for m in pending:
                project = projects.get(m.project_id) or await tx.projects.get(m.project_id)
                projects[project.id] = project
                request = request_of(m.spec, project)
                group = await _members(tx, members, m)
                decision = index.place(request, group)
                if not isinstance(decision, Placement):
                    waiting.append((m, WAITING + decision.explain()))
                    continue
                node = decision.node
                claims[node.id] = plus(claims.get(node.id, NOTHING), need(request, node))
                index.claim(node.id, request)
                if group is not None:
                    group[node.id] = group.get(node.id, 0) + 1
                placed.append((m, node.id))
            got = await tx.nodes.claim(
                [
                    Claim(node_id, want, limit(index.node(node_id)))
                    for node_id, want in claims.items()
                ]
            )
            placed_now = [(m, node_id) for m, node_id in placed if node_id in got]
            await tx.machines.place([(m.id, node_id) for m, node_id in placed_now], now)
            names = {n.id: n.name for n in index.nodes()}
            events = [
                NewEvent(m.project_id, "machine.placed", m.id, m.state, f"on node {names[n]}", now)
                for m, n in placed_now
            ]
            await tx.events.append_many(events)
            await tx.nodes.bump_revisions([node_id for _, node_id in placed_now])
            for m, why in waiting:
                if m.error != why:  # said once, not at every round
                    await tx.machines.update(replace(m, error=why, updated_at=now))
            for m, node_id in placed_now:
                woken.update((node_key(node_id), machine_key(m.id), project_key(m.project_id)))
        if woken:
            self.notifier.notify(*woken)
        last = pending[-1]
        more = (last.created_at, last.id) if len(pending) == self.page_size else None
        return RoundResult(len(placed_now), len(waiting), len(placed) - len(placed_now)), more


async def _members(
    tx: Tx, cache: dict[tuple[str, str], dict[str, int]], m: Machine
) -> dict[str, int] | None:
    """The machine's group as placed so far (this page's placements included)."""
    if not m.spec.group:
        return None
    key = (m.project_id, m.spec.group)
    if key not in cache:
        cache[key] = await tx.machines.group_members(*key)
    return cache[key]
