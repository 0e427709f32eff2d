"""The scheduler's rounds over a real store (SQLite): pages, claims, machines left waiting."""

from pathlib import Path

from hutch.model.machine import Capacity
from hutch.services.notify import Notifier
from hutch.services.scheduling import WAITING, Scheduler
from hutch.store.sql import SqlStore
from tests.store import factories as f


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
