"""The scheduler's rounds over a real store: pages, claims, snapshots, machines left waiting."""

from pathlib import Path

from hutch.model.machine import Capacity, GroupPolicy, MachineState
from hutch.placement import Index
from hutch.services.notify import Notifier
from hutch.services.scheduling import WAITING, Scheduler, Snapshot
from hutch.store.base import Claim
from hutch.store.sql import SqlStore
from tests.store import factories as f
from tests.store.conftest import store, url_at_head

__all__ = ["store", "url_at_head"]


async def test_a_round_places_what_fits_and_says_why_the_rest_waits(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'hutch.db'}")
    await store.open()
    try:
        p = f.project()
        node = f.node(capacity=Capacity(8, 1000, 100_000), overhead_mib={})
        machines = [
            f.machine(p.id, memory_mib=400, runtime="container", created_at=10.0 + i)
            for i in range(5)
        ]
        async with store.write() as tx:
            await tx.projects.create(p)
            await tx.nodes.create(node, "cred")
            for m in machines:
                await tx.machines.create(m)
        result = await Scheduler(store, Notifier(), page=3).round()
        assert (result.placed, result.waiting, result.refused) == (2, 3, 0)
        async with store.read() as tx:
            got = [await tx.machines.by_id(m.id) for m in machines]
            held = (await tx.nodes.get(node.id)).allocated
        assert [m.node_id for m in got] == [node.id, node.id, None, None, None]  # oldest first
        assert held.memory_mib == 800
        why = {m.error for m in got[2:]}
        assert len(why) == 1 and why.pop().startswith(WAITING)
        assert "400 MiB of memory asked (with overhead), 200 free" in got[2].error
        again = await Scheduler(store, Notifier()).round()  # nothing changed: nothing placed
        assert (again.placed, again.waiting) == (0, 3)
    finally:
        await store.close()


async def test_a_stale_snapshot_takes_in_what_others_changed(store: SqlStore) -> None:
    p = f.project()
    size = {"capacity": Capacity(8, 1000, 100_000), "overhead_mib": {}}
    full, gone, small = f.node("full", **size), f.node("gone", **size), f.node("small", **size)
    async with store.write() as tx:
        await tx.projects.create(p)
        for n in (full, gone, small):
            await tx.nodes.create(n, f"cred-{n.name}")
        await tx.nodes.claim([Claim(full.id, Capacity(0, 900, 0), Capacity(8, 1000, 100_000))])
        snapshot = Snapshot(Index(await tx.nodes.list()), taken=0.0)  # stale at once
    # Others meanwhile: a node goes, one fills up, one gives capacity back, one comes.
    new = f.node("new", capacity=Capacity(8, 500, 100_000), overhead_mib={})
    m = f.machine(p.id, memory_mib=400, runtime="container")
    async with store.write() as tx:
        await tx.nodes.delete(gone.id)
        await tx.nodes.claim([Claim(small.id, Capacity(0, 700, 0), Capacity(8, 1000, 100_000))])
        await tx.nodes.release(full.id, Capacity(0, 900, 0))
        await tx.nodes.create(new, "cred-new")
        await tx.machines.create(m)
    result, _, after = await Scheduler(store, Notifier()).page(None, snapshot)
    assert result.placed == 1 and after is not None
    async with store.read() as tx:
        assert (await tx.machines.by_id(m.id)).node_id == full.id  # the emptiest now
        assert dict(after.index.nodes) == {n.id: n for n in await tx.nodes.list()}


async def test_a_group_member_another_controller_placed_is_seen_by_the_next_page(
    store: SqlStore,
) -> None:
    p = f.project()
    a, b = (f.node(name, capacity=Capacity(8, 4000, 100_000), overhead_mib={}) for name in "ab")
    spread = {"group": "db", "group_policy": GroupPolicy.ANTI_AFFINITY, "runtime": "container"}
    first, last = f.machine(p.id, **spread), f.machine(p.id, **spread)
    async with store.write() as tx:
        await tx.projects.create(p)
        for n in (a, b):
            await tx.nodes.create(n, f"cred-{n.name}")
        await tx.machines.create(first)
        await tx.machines.create(last)
    scheduler = Scheduler(store, Notifier(), page=1)
    result, after, snapshot = await scheduler.page()
    assert result.placed == 1 and snapshot is not None
    async with store.read() as tx:
        taken = (await tx.machines.by_id(first.id)).node_id
    # Another controller places a member of the group on the other node, between two pages
    # of one round (its snapshot is fresh: it has not seen that node's claim).
    other = b.id if taken == a.id else a.id
    async with store.write() as tx:
        member = f.machine(p.id, node_id=other, state=MachineState.STARTING, **spread)
        await tx.machines.create(member)
    result, _, _ = await scheduler.page(after, snapshot)
    assert (result.placed, result.waiting) == (0, 1)
    async with store.read() as tx:
        assert "anti-affinity" in (await tx.machines.by_id(last.id)).error


async def test_holders_are_read_once_a_snapshot_then_grown_with_its_own_placements(
    store: SqlStore,
) -> None:
    p = f.project()
    a, b = (f.node(name, capacity=Capacity(8, 4000, 100_000), overhead_mib={}) for name in "ab")
    elsewhere = f.node("cordoned", cordoned=True)  # takes nothing from this scheduler
    machines = [f.machine(p.id, runtime="container") for _ in range(3)]
    async with store.write() as tx:
        await tx.projects.create(p)
        for n in (a, b, elsewhere):
            await tx.nodes.create(n, f"cred-{n.name}")
        for m in machines:
            await tx.machines.create(m)
    scheduler = Scheduler(store, Notifier(), page=1)

    async def placed() -> set[str | None]:
        async with store.read() as tx:
            return {(await tx.machines.by_id(m.id)).node_id for m in machines} - {None}

    _, after, snapshot = await scheduler.page()
    key = (p.id, machines[0].spec.image)
    assert snapshot is not None and snapshot.holders == {key: await placed()}  # no read again
    # Another controller places one of that image elsewhere: seen at the snapshot's next read.
    async with store.write() as tx:
        await tx.machines.create(f.machine(p.id, node_id=elsewhere.id, state=MachineState.RUNNING))
    _, after, snapshot = await scheduler.page(after, snapshot)
    assert snapshot is not None and snapshot.holders == {key: await placed()}
    snapshot.taken = 0.0  # stale: the next page reads the nodes, and the holders, again
    _, _, snapshot = await scheduler.page(after, snapshot)
    assert snapshot is not None and snapshot.holders == {key: await placed() | {elsewhere.id}}
