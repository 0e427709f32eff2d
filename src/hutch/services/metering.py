"""Metering: the usage ledger (hutch.model.usage) made from nodes' samples and the leader's
storage accrual.

Machines. A node samples each generation of its machines every few seconds: cumulative counters
(seconds running, CPU seconds, bytes sent out) numbered by `seq` (wire/telemetry.py). `record()`
counts, per (machine, generation), what each sample adds to the last one counted, whose seq and
counters are the stream's mark (`usage_marks`), and adds it into the generation's record of the
hour the sample was taken in (`h:<machine>:<generation>:<hour start>`); the mark and the records
move in one transaction, the mark's row held meanwhile. So:
- a sample resent, or seen by two controllers, counts once: its seq is not above the mark;
- a sample that arrives late, after a later one was counted, is passed over: the later one's
  delta included what it had (the counters are cumulative), so nothing is lost either; and an
  hour's record no longer changes once a sample of a later hour was counted;
- a sample lost (the node went with it) loses nothing but its time of the generation's end: the
  next one's delta covers it. So node loss loses at most the last sampling period of each
  generation running there; an agent restart nothing (the node spools and resends);
- only the node the machine is placed on is believed; a counter that went backwards counts 0,
  and again until it passes its highest; seconds running count no faster than the samples'
  clock (what is past that never counts).
A generation's start is a record of its own (`g:<machine>:<generation>`, model.usage.started),
made by its node's report that it runs (services/machines.py) or its first sample counted.
Marks are kept while their machine's row is: the leader drops those of machines purged.

Storage. The leader accrues, per interval of `storage_interval` seconds (aligned on the epoch),
GiB-hours for each machine's scratch disk (while not destroyed: suspended or stopped machines
pay for it), volume, volume snapshot and machine snapshot, for the part of the interval it
existed, once the interval is over (key `s:<subject>:<interval start>`). The last interval
accrued is a mark too, moved in the same transaction as its records: a leader that dies
mid-way, or two that accrue at once, count each interval once, and a leader that was down
accrues the intervals it missed when it comes back. A volume or snapshot deleted is accrued up
to the end of the last interval accrued before its deletion: its last partial interval is lost.
"""

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from hutch.model.usage import (
    Held,
    Hour,
    Owner,
    UsageMark,
    UsageRecord,
    micros,
    quantity,
    started,
)
from hutch.services.notify import pause
from hutch.store.base import Store, Tx
from hutch.wire.telemetry import MAX_AHEAD, MachineSample, Samples

log = logging.getLogger("hutch.metering")
STORAGE = "storage"  # the storage accrual's mark (subject "storage", generation 0)
MAX_CATCHUP = 48  # intervals accrued in one pass after an outage; the next pass goes on
GIB = 1 << 30
HOUR = 3600.0
MAX_POSTS = 100  # nodes' posts written in one transaction at most
WRITERS = 2  # batches written at once
MAX_BEHIND = 86400.0  # seconds a reading may be dated before it is posted


def count(
    machine: Owner, mark: UsageMark, samples: Sequence[MachineSample]
) -> tuple[list[UsageRecord], UsageMark]:
    """The records `samples` (of the mark's generation) add after `mark`, and the mark moved
    past them: a start with its first sample, then one record per hour its samples' deltas
    fall in (see `deltas`)."""
    start, hours, moved = deltas(machine, mark, samples)
    return [*([start] if start else []), *(h.record() for h in hours)], moved


def deltas(
    machine: Owner, mark: UsageMark, samples: Sequence[MachineSample]
) -> tuple[UsageRecord | None, list[Hour], UsageMark]:
    """What `samples` (of the mark's generation) add after `mark`: the generation's start if
    the first of them is its first sample, what they add into its record of each hour they
    fall in (by each sample's time: a delta that began in the hour before counts in the
    sample's; to be added into that hour's row, `UsageRepo.add_into`),
    and the mark moved past them. Samples at or below the mark's seq count nothing (see the
    module's docstring). Each delta is rounded to the millionth before it is summed: an hour's
    sum does not depend on how its samples were batched."""
    first: UsageRecord | None = None
    # hour start -> [start, end, vcpu, cpu, memory (millionths), egress]
    hours: dict[float, list[Any]] = {}
    # Plain values: the loop is hot (bench/metering_ingest.py).
    seq, at, running_s, cpu_s = mark.seq, mark.time, mark.running_s, mark.cpu_s
    egress, ended = mark.egress_bytes, mark.ended
    if ended:
        return None, [], mark
    for s in sorted(samples, key=lambda s: s.seq) if len(samples) > 1 else samples:
        if s.seq <= seq:
            continue
        running = s.running_s - running_s
        running = running if running > 0 else 0.0
        if seq and running > s.time - at:  # no faster than the clock
            running = max(0.0, s.time - at)
        start = at if seq else s.time - s.running_s
        if not seq:
            first = started(machine.id, mark.generation, machine.project_id, machine.labels, start)
        cpu = s.cpu_s - cpu_s
        out = s.public.tx_bytes - egress
        hour = s.time // HOUR * HOUR
        row = hours.get(hour)
        if row is None:
            # Starting in its hour, even if the delta began in the one before: a record counts
            # by its start (invoices' periods, days), and this is the hour it was taken in.
            row = hours[hour] = [max(hour, min(start, s.time)), s.time, 0, 0, 0, 0]
        else:
            row[0] = max(hour, min(row[0], start))
            row[1] = max(row[1], s.time)
        row[2] += micros(s.vcpus * running)
        row[3] += micros(cpu) if cpu > 0 else 0
        row[4] += micros(s.memory_mib / 1024 * running)
        row[5] += out if out > 0 else 0
        # Each counter's highest: the node's never go back (agent/telemetry.py), so one that
        # drops and climbs again counts only past where it had been.
        seq, at = s.seq, s.time
        running_s = s.running_s if s.running_s > running_s else running_s
        cpu_s = s.cpu_s if s.cpu_s > cpu_s else cpu_s
        egress = s.public.tx_bytes if s.public.tx_bytes > egress else egress
        if s.state == "ended":
            ended = True
            break
    prefix = f"h:{machine.id}:{mark.generation}:"
    added = [
        Hour(f"{prefix}{hour:.0f}", machine.project_id, machine.id, machine.labels, *row)
        for hour, row in hours.items()
        if row[2] or row[3] or row[4] or row[5]
    ]
    moved = UsageMark(mark.subject, mark.generation, seq, at, running_s, cpu_s, egress, ended)
    return first, added, moved


def accrue(held: Sequence[Held], start: float, end: float) -> list[UsageRecord]:
    """The storage records of the interval [start, end): each subject's bytes for the part
    of it the subject existed."""
    records = []
    for h in held:
        since, until = max(start, h.since), min(end, h.until if h.until is not None else end)
        if until <= since or not h.bytes:
            continue
        records.append(
            UsageRecord(
                f"s:{h.subject}:{start:.0f}", h.project_id, h.subject, since, until,
                machine_id=h.machine_id, labels=h.labels,
                storage_gib_hours=quantity(h.bytes * (until - since) / (GIB * HOUR)),
            )
        )  # fmt: skip
    return records


async def count_posts(tx: Tx, posts: Sequence[tuple[str, Samples]]) -> int:
    """Count nodes' posts of samples into the ledger in `tx`: how many records were added
    (starts) or added into (hours)."""
    owners = await tx.usage.owners([s.machine for _, p in posts for s in p.machines])
    streams: dict[tuple[str, int], list[MachineSample]] = defaultdict(list)
    now = time.time()
    for node_id, post in posts:
        for s in post.machines:
            m = owners.get(s.machine)
            # Only the node it is placed on, a generation it has had, and a reading dated
            # within what a node's clock and spool make plausible: one dated 1970 (a clock not
            # yet set) or tomorrow would carry the generation's usage after it into a period
            # of its own. Passed over, it loses nothing: the next reading's delta has it.
            if (
                m is not None
                and m.node_id == node_id
                and s.generation <= m.generation
                and now - MAX_BEHIND < s.time <= now + MAX_AHEAD
            ):
                streams[s.machine, s.generation].append(s)
    if not streams:
        return 0
    marks = await tx.usage.marks(list(streams))
    starts, hours, moved = [], [], []
    for stream, part in streams.items():
        first, added, mark = deltas(owners[stream[0]], marks[stream], part)
        if first is not None:
            starts.append(first)
        hours += added
        if mark != marks[stream]:
            moved.append(mark)
    await tx.usage.set_marks(moved)
    # Starts are once per generation (also from the node's report, services/machines.py);
    # the hours' rows are added into, counted once by the marks moved with them.
    await tx.usage.add_into(hours)
    return await tx.usage.add(starts) + len(hours)


class Metering:
    def __init__(self, store: Store, storage_interval: float = HOUR) -> None:
        self.store = store
        self.storage_interval = storage_interval
        self._queue: list[tuple[str, Samples, asyncio.Future[None]]] = []  # posts to write
        # Held by the tasks writing a batch: two, so that one's statements run while the
        # other waits for the database (PostgreSQL; on SQLite the second waits its turn).
        self._writing = asyncio.Semaphore(WRITERS)

    async def record(self, node_id: str, samples: Samples) -> None:
        """Count a node's post of samples into the ledger (see the module's docstring); done
        once it is committed. Posts that arrive while another batch is written are written
        together, in one transaction (at most MAX_POSTS): one commit for many nodes."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((node_id, samples, done))
        async with self._writing:
            while any(queued is done for _, _, queued in self._queue):
                await self._write()  # batches, oldest posts first, until this one is written
        await done  # (by another writer, maybe) and raises the batch's failure: sent again

    async def _write(self) -> None:
        batch, self._queue = self._queue[:MAX_POSTS], self._queue[MAX_POSTS:]
        try:
            async with self.store.write() as tx:
                await count_posts(tx, [(node, samples) for node, samples, _ in batch])
        except Exception as e:
            for _, _, done in batch:
                done.set_exception(e)
        else:
            for _, _, done in batch:
                done.set_result(None)

    async def accrue_storage(self, now: float | None = None) -> int:
        """Accrue storage for the intervals over by `now` that are not yet (at most
        MAX_CATCHUP of them), each in a transaction: how many records were added. The first
        time, only the last interval over."""
        now = time.time() if now is None else now
        step = self.storage_interval
        last_over = math.floor(now / step) - 1
        added = 0
        for _ in range(MAX_CATCHUP):
            async with self.store.write() as tx:
                mark = (await tx.usage.marks([(STORAGE, 0)]))[STORAGE, 0]
                k = mark.seq + 1 if mark.seq else last_over
                if k > last_over:
                    return added
                start, end = k * step, (k + 1) * step
                added += await tx.usage.add(accrue(await tx.usage.held(start, end), start, end))
                await tx.usage.set_marks([UsageMark(STORAGE, 0, k, end)])
        return added

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        """While `leading()`: accrue storage a few times an interval, and drop the marks of
        machines purged (their samples count nothing: `owners` has them no more), until `stop`
        is set."""
        while not stop.is_set():
            if leading():
                try:
                    await self.accrue_storage()
                    async with self.store.write() as tx:
                        await tx.usage.prune_marks()
                except Exception:
                    log.exception("the storage accrual failed")
            await pause(stop, min(60.0, self.storage_interval / 4))
