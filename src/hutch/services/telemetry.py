"""Telemetry on the controller: nodes' samples in, machines' metric history out.

A node posts what its sandboxes used (`Samples`); each machine's sample becomes a point of every
tier (the node's last reading in the tier's bucket: counters are cumulative), and the samples go
on to metering. The leader deletes points older than their tier keeps them, so the history's
size is bounded by machines x (keep / step) per tier, whatever the nodes send."""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from hutch.model.errors import Invalid
from hutch.model.machine import Machine, Node
from hutch.model.metrics import MetricPoint, Tier
from hutch.model.tenancy import Principal, Project
from hutch.services.notify import pause
from hutch.services.policy import Action, Policy
from hutch.services.refusals import missing
from hutch.store.base import MAX_POINTS, Store, Tx
from hutch.wire.telemetry import MAX_AHEAD, MachineSample, NodeSample, Samples

log = logging.getLogger("hutch.telemetry")
MAX_PERIOD = 600.0  # seconds between prunes, at most


class Recorder(Protocol):
    """What turns samples into usage records (services/metering.py's `Metering`)."""

    async def record(self, node_id: str, samples: Samples) -> None: ...


class Telemetry:
    def __init__(
        self, store: Store, policy: Policy, tiers: Sequence[Tier], metering: Recorder | None = None
    ) -> None:
        self.store = store
        self.policy = policy
        self.tiers = tuple(sorted(tiers, key=lambda t: t.step))  # finest first
        self.metering = metering
        # Each node's newest own sample, as this controller received it (for /metrics).
        self.nodes: dict[str, NodeSample] = {}
        self.period = min(MAX_PERIOD, self.tiers[0].keep / 4)

    async def ingest(self, node: Node, samples: Samples) -> None:
        """Store the samples of machines placed on `node` (others are not its to report: a
        machine since moved, or another node's) read at times the history keeps, then meter
        them. (A point further ahead than MAX_AHEAD would never be pruned, nor one older than
        every tier keeps be of use: neither is stored.)"""
        now = time.time()
        async with self.store.write() as tx:
            placed = {m.id: m for m in await tx.machines.on_node(node.id)}
            points = [
                self._point(placed[s.machine], s, tier)
                for s in samples.machines
                if s.machine in placed
                for tier in self.tiers
                if now - tier.keep < s.time <= now + MAX_AHEAD
            ]
            await tx.metrics.put(points)
        if node.id not in self.nodes or self.nodes[node.id].time <= samples.node.time:
            self.nodes[node.id] = samples.node
        if self.metering is not None:  # the one place samples reach metering
            await self.metering.record(node.id, samples)

    @staticmethod
    def _point(m: Machine, s: MachineSample, tier: Tier) -> MetricPoint:
        disks = s.disks.values()
        return MetricPoint(
            machine_id=m.id,
            project_id=m.project_id,
            generation=s.generation,
            step=tier.step,
            bucket=s.time // tier.step * tier.step,
            time=s.time,
            state=s.state,
            vcpus=s.vcpus,
            memory_mib=s.memory_mib,
            running_s=s.running_s,
            cpu_s=s.cpu_s,
            memory_bytes=s.memory_bytes,
            memory_limit_bytes=s.memory_limit_bytes,
            disk_read_bytes=sum(d.read_bytes for d in disks),
            disk_write_bytes=sum(d.write_bytes for d in disks),
            disk_read_ops=sum(d.read_ops for d in disks),
            disk_write_ops=sum(d.write_ops for d in disks),
            rx_bytes=s.private.rx_bytes + s.public.rx_bytes,
            tx_bytes=s.private.tx_bytes + s.public.tx_bytes,
            rx_packets=s.private.rx_packets + s.public.rx_packets,
            tx_packets=s.private.tx_packets + s.public.tx_packets,
            egress_bytes=s.public.tx_bytes,
            ingress_bytes=s.public.rx_bytes,
        )

    def tier(self, since: float, step: float | None, now: float) -> Tier:
        """The tier to read from `since` at `step` seconds a point: of those that still keep
        `since`, the coarsest no coarser than `step` (the finest without one)."""
        keeping = [t for t in self.tiers if since >= now - t.keep] or [self.tiers[-1]]
        fitting = [t for t in keeping if step is not None and t.step <= step]
        return fitting[-1] if fitting else keeping[0]

    async def history(
        self,
        principal: Principal,
        project: Project,
        ref: str,
        since: float | None = None,
        step: float | None = None,
    ) -> tuple[Machine, Tier, list[MetricPoint]]:
        """The machine's points since `since` (default: the last hour), one per `step` seconds
        at most (default: the finest tier that keeps `since`), oldest first, at most MAX_POINTS:
        the newest if there are more."""
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        now = time.time()
        since = now - 3600.0 if since is None else since
        if step is not None and step <= 0:
            raise Invalid("step is a number of seconds above 0")
        tier = self.tier(since, step, now)
        want = max(step or tier.step, tier.step)
        # The newest MAX_POINTS buckets: the span they cover at the step asked for.
        since = max(since, now - want * MAX_POINTS)
        async with self.store.read() as tx:
            m = await _machine(tx, project, ref)
            points = await tx.metrics.history(m.id, tier.step, since, MAX_POINTS)
        return m, tier, _thin(points, want)

    async def latest(self, project_id: str | None = None) -> list[tuple[str, str, MetricPoint]]:
        """The newest finest point of every live machine with one in the last two minutes (the
        project's, or every project's), with its project's and its own name."""
        tier = self.tiers[0]
        async with self.store.read() as tx:
            since = time.time() - max(120.0, 3 * tier.step)
            return await tx.metrics.latest(tier.step, since, project_id)

    async def prune(self) -> int:
        """Delete every point older than its tier keeps it: how many went."""
        now = time.time()
        async with self.store.write() as tx:
            pruned = [await tx.metrics.prune(t.step, now - t.keep) for t in self.tiers]
        return sum(pruned)

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        """Prune every `period` while `leading()`, until `stop` is set."""
        while not stop.is_set():
            if leading():
                try:
                    await self.prune()
                except Exception:
                    log.exception("pruning the metric history failed")
            await pause(stop, self.period)


async def _machine(tx: Tx, project: Project, ref: str) -> Machine:
    with missing(f"no machine {ref!r} in project {project.name}"):
        return await tx.machines.get(project.id, ref)


def _thin(points: list[MetricPoint], step: float) -> list[MetricPoint]:
    """The last point of each `step`-second bucket (of each generation)."""
    kept: dict[tuple[int, float], MetricPoint] = {}
    for p in points:
        kept[(p.generation, p.time // step)] = p
    return sorted(kept.values(), key=lambda p: (p.time, p.generation))
