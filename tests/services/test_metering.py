"""Metering (services/metering.py): the delta logic on its own, then `Metering.record` and the
storage accrual over the real store (SQLite and PostgreSQL): resends, late and foreign samples,
two controllers at once, a crash mid-transaction, and the bounds on what a lost node loses."""

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest

from hutch.model.machine import MachineState
from hutch.model.usage import Held, Owner, UsageMark, UsageRecord, UsageTotal
from hutch.services.metering import STORAGE, Metering, accrue, count
from hutch.store.sql import SqlStore
from hutch.store.sql.usage import SqlUsage
from hutch.wire.telemetry import MachineSample, Net, NodeSample, Samples
from tests.store import factories as f
from tests.store.conftest import store, url_at_head

__all__ = ["store", "url_at_head"]
GIB = 1 << 30
# Readings two hours old (metering takes up to a day old), 800 s into their hour.
T = float(int(time.time()) // 3600 * 3600 - 7200 + 800)
HOUR = T - T % 3600  # the hour T is in


def sample(
    seq: int,
    running_s: float,
    cpu_s: float,
    *,
    machine: str = "m-1",
    generation: int = 1,
    tx: int = 0,
    state: str = "running",
    vcpus: int = 2,
    memory_mib: int = 512,
) -> MachineSample:
    return MachineSample(
        machine=machine, generation=generation, seq=seq, time=T + running_s, state=state,
        vcpus=vcpus, memory_mib=memory_mib, running_s=running_s, cpu_s=cpu_s,
        memory_bytes=1 << 20, memory_limit_bytes=memory_mib << 20, public=Net(tx_bytes=tx),
    )  # fmt: skip


def post(*samples: MachineSample) -> Samples:
    node = NodeSample(time=T, cpu_s=0, memory_bytes=0, hutch_cpu_s=0, hutch_memory_bytes=0)
    return Samples(node=node, machines=list(samples))


def totals(records: list[UsageRecord]) -> dict[str, Any]:
    names = ("vcpu_seconds", "cpu_seconds", "memory_gib_seconds", "egress_bytes", "starts")
    return {n: sum(getattr(r, n) for r in records) for n in names}


MACHINE = Owner("m-1", "p-1", "n-1", 1, {"team": "red"})


# -- the delta logic ------------------------------------------------------------------------------


def test_deltas_between_seqs() -> None:
    """vcpus x seconds running, CPU seconds used, GiB x seconds running, bytes sent out, summed
    into one record per hour (by the samples' times); a start with the first sample; a resent
    or late sample counts nothing; a counter that went backwards counts 0, and so does its climb
    back until it passes its highest."""
    samples = [sample(1, 10, 4, tx=100), sample(2, 20, 9, tx=150), sample(4, 40, 9.5, tx=50),
               sample(5, 50, 12, tx=80)]  # fmt: skip
    records, mark = count(MACHINE, UsageMark("m-1", 1), samples)
    assert [r.key for r in records] == ["g:m-1:1", f"h:m-1:1:{HOUR:.0f}"]
    assert totals(records) == {
        "vcpu_seconds": 100, "cpu_seconds": 12, "memory_gib_seconds": 25,
        "egress_bytes": 100 + 50 + 0 + 0, "starts": 1,
    }  # fmt: skip
    hour = records[1]
    assert (hour.start, hour.end, hour.project_id) == (T, T + 50, "p-1")  # seq 3 lost: 4 covers it
    assert hour.labels == {"team": "red"}
    assert mark == UsageMark("m-1", 1, 5, T + 50, 50, 12, 150)
    # Resent (1, 2, 5) and late (3) after 5: nothing.
    again, same = count(MACHINE, mark, [samples[0], samples[1], sample(3, 30, 9), samples[3]])
    assert again == [] and same == mark
    # Across the hour's end: the sample after it starts the next hour's record, which starts
    # in its hour (a record counts by its start: a period's, a day's) with its whole delta.
    left = HOUR + 3600 - T
    later, _ = count(MACHINE, mark, [sample(6, left - 5, 13), sample(7, left + 5, 14)])
    assert [(r.key, r.start, r.end, r.vcpu_seconds) for r in later] == [
        (f"h:m-1:1:{HOUR:.0f}", T + 50, T + left - 5, Decimal(2 * (left - 55))),
        (f"h:m-1:1:{HOUR + 3600:.0f}", HOUR + 3600, T + left + 5, Decimal(20)),
    ]


def test_suspended_time_and_the_generation_end() -> None:
    """A suspended machine's samples add no running time (nor rows while nothing moves); after
    its generation's last sample nothing more counts."""
    mark = UsageMark("m-1", 1, 3, T + 30, 30, 10)
    idle = [sample(4, 30, 10, state="suspended"), sample(5, 30, 10, state="suspended")]
    records, mark = count(MACHINE, mark, idle)
    assert records == [] and mark.seq == 5
    records, mark = count(MACHINE, mark, [sample(6, 31, 10.5, state="ended")])
    assert totals(records)["vcpu_seconds"] == 2 and mark.ended
    assert count(MACHINE, mark, [sample(7, 40, 20)]) == ([], mark)


def test_storage_accrual_covers_the_part_of_the_interval_held() -> None:
    held = [
        Held("m-1", "p-1", 2 * GIB, since=T - 100, machine_id="m-1", labels={"a": "b"}),
        Held("v-1", "p-1", GIB, since=T + 1800),  # created half way
        Held("m-2", "p-1", GIB, since=T - 100, until=T + 900),  # destroyed a quarter in
        Held("m-3", "p-1", GIB, since=T - 100, until=T - 1),  # gone before
        Held("v-2", "p-1", GIB, since=T + 3600),  # made after
    ]
    records = accrue(held, T, T + 3600)
    assert {r.key: r.storage_gib_hours for r in records} == {
        f"s:m-1:{T:.0f}": 2, f"s:v-1:{T:.0f}": Decimal("0.5"), f"s:m-2:{T:.0f}": Decimal("0.25"),
    }  # fmt: skip
    assert records[0].labels == {"a": "b"} and records[1].start == T + 1800


# -- over the store -------------------------------------------------------------------------------


async def placed(store: SqlStore, **changes: Any) -> tuple[str, str, Any]:
    p, n = f.project(), f.node()
    m = f.machine(p.id, node_id=n.id, generation=1, state=MachineState.RUNNING, cpus=2,
                  memory_mib=512, labels={"team": "red"}, **changes)  # fmt: skip
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(n, f.uid("cred"))
        await tx.machines.create(m)
    return p.id, n.id, m


async def ledger(store: SqlStore, project: str) -> UsageTotal | None:
    async with store.read() as tx:
        totals = await tx.usage.totals(project)
    return totals[0] if totals else None


async def test_record_counts_each_sample_once(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's post, resent after an agent restart (the spool: same seqs), posted to two
    controllers at once, and batched with others on one, counts once; the same samples from
    another node count nothing; a batch that failed (a crash before its commit) fails every
    post in it, and counts once when they are sent again."""
    project, node, m = await placed(store)
    metering = Metering(store)
    posts = [post(*(sample(i, 10.0 * i, 4.0 * i, machine=m.id, tx=1000 * i) for i in seqs))
             for seqs in ((1, 2, 3), (4, 5), (6,))]  # fmt: skip
    await metering.record("n-other", posts[0])  # not the machine's node
    assert await ledger(store, project) is None
    await metering.record(node, posts[0])
    await metering.record(node, posts[0])  # resent after an agent restart
    once = await ledger(store, project)
    assert once is not None and (once.vcpu_seconds, once.records) == (
        Decimal(60),
        2,
    )  # a start, an hour
    # Two controllers given the resent spool and the next post at the same time, one of them
    # batching them with the same again.
    both = post(*posts[0].machines, *posts[1].machines)
    await asyncio.gather(metering.record(node, both), metering.record(node, posts[1]),
                         Metering(store).record(node, posts[1]))  # fmt: skip
    total = await ledger(store, project)
    assert total is not None
    assert [total.vcpu_seconds, total.cpu_seconds, total.memory_gib_seconds] == [100, 20, 25]
    assert (total.egress_bytes, total.starts, total.records) == (5000, 1, 2)

    class Crash(Exception):
        pass

    async def crash(*_: Any) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(SqlUsage, "add", crash)
        sent = (metering.record(node, posts[2]), metering.record(node, posts[1]))
        failed = await asyncio.gather(*sent, return_exceptions=True)
    assert [type(e) for e in failed] == [Crash, Crash]
    assert (await ledger(store, project)).vcpu_seconds == 100  # type: ignore[union-attr]
    await metering.record(node, posts[2])
    await metering.record(node, posts[2])
    assert (await ledger(store, project)).vcpu_seconds == 120  # type: ignore[union-attr]


async def test_a_lost_node_loses_at_most_one_sampling_period(store: SqlStore) -> None:
    """The samples a node took but never sent (it went): the last one counted is the most
    that is missing, the last period before the node went (10 s running here)."""
    project, node, m = await placed(store)
    period, taken = 10.0, 9
    sent = [sample(i, period * i, period * i / 2, machine=m.id) for i in range(1, taken)]
    await Metering(store).record(node, post(*sent))  # sample 9 went with the node
    async with store.read() as tx:
        [total] = await tx.usage.totals(project)
    ran = taken * period
    assert ran - period <= total.vcpu_seconds / 2 <= ran


async def test_storage_accrued_once_by_two_leaders_and_after_a_crash(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two leaders accruing at once, and one that crashed inside its transaction: every
    interval once; a leader back after an outage accrues what it missed."""
    step = 3600.0
    project, _node, m = await placed(store, created_at=T - 10 * step, disk_mib=1024)
    now = T - T % step + 0.5 * step  # half way into interval K
    k = int(now // step)

    class Crash(Exception):
        pass

    async def crash(*_: Any) -> None:
        raise Crash  # after the interval's records were added, before the commit

    with monkeypatch.context() as patch:
        patch.setattr(SqlUsage, "set_marks", crash)
        with pytest.raises(Crash):
            await Metering(store, step).accrue_storage(now)
    added = await asyncio.gather(Metering(store, step).accrue_storage(now),
                                 Metering(store, step).accrue_storage(now))  # fmt: skip
    assert sorted(added) == [0, 1]  # the first time, the last interval over only
    assert await Metering(store, step).accrue_storage(now + 0.4 * step) == 0
    # Down for three intervals: back, it accrues them.
    assert await Metering(store, step).accrue_storage(now + 3 * step) == 3
    async with store.write() as tx:
        records, _ = await tx.usage.records(project)
        mark = (await tx.usage.marks([(STORAGE, 0)]))[STORAGE, 0]
    assert [r.key for r in records] == [f"s:{m.id}:{(k + i) * step - step:.0f}" for i in range(4)]
    assert {r.storage_gib_hours for r in records} == {1} and mark.seq == k + 2
    assert records[0].labels == {"team": "red"} and records[0].machine_id == m.id
