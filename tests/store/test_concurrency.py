"""Concurrent writers, on both backends: quota checks that cannot interleave, compare-and-set
races with exactly one winner, writers in several processes, PostgreSQL deadlocks as Conflict."""

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from hutch.model.errors import Conflict
from hutch.model.machine import Capacity, MachineState
from hutch.store.base import Claim, NewEvent
from hutch.store.sql import SqlStore
from tests.store import factories as f
from tests.store.worker import QUOTA, claim

WORKER = Path(__file__).with_name("worker.py")


async def machines_of(store: SqlStore, project_id: str) -> int:
    async with store.read() as tx:
        return (await tx.machines.usage(project_id)).machines


async def test_quota_checks_do_not_interleave(store: SqlStore) -> None:
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)
    made = await asyncio.gather(*(claim(store, p.id) for _ in range(50)))
    assert sum(made) == QUOTA
    assert await machines_of(store, p.id) == QUOTA


async def test_without_the_lock_postgres_would_overcommit(postgres_url: str) -> None:
    """The control for the test above: the same routine minus projects.lock() does race, so
    that test would see a missing lock."""
    store = SqlStore(postgres_url)
    await store.open()
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)

    async def unlocked() -> None:
        async with store.write() as tx:
            if (await tx.machines.usage(p.id)).machines < QUOTA:
                await asyncio.sleep(0.05)
                await tx.machines.create(f.machine(p.id))

    await asyncio.gather(*(unlocked() for _ in range(30)))
    try:
        assert await machines_of(store, p.id) > QUOTA
    finally:
        await store.close()


async def run_worker(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_quota_checks_across_processes(store: SqlStore, url_at_head: str) -> None:
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "claim",
            url_at_head,
            p.id,
            "25",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for w in workers:  # both opened the store: start them, and this process, at once
        assert w.stdout is not None
        assert await asyncio.wait_for(w.stdout.readline(), 60) == b"ready\n"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write(b"go\n")
    here = await asyncio.gather(*(claim(store, p.id) for _ in range(10)))
    made = sum(here)
    for w in workers:
        out, err = await asyncio.wait_for(w.communicate(), 60)
        assert w.returncode == 0, err.decode()
        made += int(out)
    assert made == QUOTA
    assert await machines_of(store, p.id) == QUOTA


async def test_stores_opening_at_once_migrate_once(store_url: str) -> None:
    """Controllers starting together on an empty database: every one opens."""
    stores = [SqlStore(store_url) for _ in range(3)]
    try:
        await asyncio.gather(
            *(s.open() for s in stores),
            run_worker("open", store_url),
            run_worker("open", store_url),
        )
        p = f.project()
        async with stores[0].write() as tx:
            await tx.projects.create(p)
        async with stores[2].read() as tx:
            assert await tx.projects.get(p.id) == p
    finally:
        for s in stores:
            await s.close()


async def test_machine_compare_and_set_race(store: SqlStore) -> None:
    p = f.project()
    m = f.machine(p.id)
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.machines.create(m)

    async def bump(i: int) -> int:
        async with store.write() as tx:
            await asyncio.sleep(0)
            return (await tx.machines.update(replace(m, restarts=i))).restarts

    results = await asyncio.gather(*(bump(i) for i in range(1, 21)), return_exceptions=True)
    winners = [r for r in results if isinstance(r, int)]
    assert len(winners) == 1, results
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, int)), results
    async with store.read() as tx:
        stored = await tx.machines.by_id(m.id)
    assert (stored.version, stored.restarts) == (2, winners[0])


async def test_node_claim_race(store: SqlStore) -> None:
    """Schedulers claiming one node at once: whatever they read, the node is never overbooked."""
    n = f.node(capacity=Capacity(cpus=2, memory_mib=1000, disk_mib=100))
    limit = Capacity(8, 1000, 100)
    async with store.write() as tx:
        await tx.nodes.create(n, "cred")

    async def claim_node() -> bool:
        async with store.write() as tx:
            return bool(await tx.nodes.claim([Claim(n.id, Capacity(1, 300, 0), limit)]))

    results = await asyncio.gather(*(claim_node() for _ in range(10)))
    assert results.count(True) == 3
    async with store.read() as tx:
        assert (await tx.nodes.get(n.id)).allocated == Capacity(3, 900, 0)


async def test_postgres_deadlock_is_a_conflict(postgres_url: str) -> None:
    store = SqlStore(postgres_url)
    await store.open()
    a, b = f.project(), f.project()
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(b)
    both_hold_one = asyncio.Barrier(2)

    async def lock(first: str, second: str) -> None:
        async with store.write() as tx:
            await tx.projects.lock(first)
            await both_hold_one.wait()
            await tx.projects.lock(second)
            await tx.machines.create(f.machine(first))

    try:
        results = await asyncio.gather(lock(a.id, b.id), lock(b.id, a.id), return_exceptions=True)
        conflicts = [r for r in results if isinstance(r, Conflict)]
        assert len(conflicts) == 1 and None in results, results
        assert "retry" in conflicts[0].message
        # The loser's work was rolled back; the winner's stands.
        assert await machines_of(store, a.id) + await machines_of(store, b.id) == 1
    finally:
        await store.close()


async def test_events_are_numbered_in_commit_order(store: SqlStore) -> None:
    """A reader that resumes after the last id it saw never skips an event."""
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)
    seen: list[int] = []
    done = asyncio.Event()

    async def append(i: int) -> None:
        async with store.write() as tx:
            await tx.events.append(
                [NewEvent(p.id, "machine.state", f"m{i}", "running", "", f.now())]
            )
            await asyncio.sleep(0.001 * (i % 3))  # commit later than others that began after

    async def follow() -> None:
        after = 0
        while True:
            finished = done.is_set()
            async with store.read() as tx:
                for e in await tx.events.since(p.id, after):
                    seen.append(e.id)
                    after = e.id
            if finished:
                return
            await asyncio.sleep(0)

    follower = asyncio.create_task(follow())
    await asyncio.gather(*(append(i) for i in range(40)))
    done.set()
    await follower
    async with store.read() as tx:
        every = [e.id for e in await tx.events.since(p.id, 0)]
    assert len(every) == 40
    assert seen == every


async def test_readers_see_committed_state_only(store: SqlStore) -> None:
    p = f.project()
    m = f.machine(p.id)
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.machines.create(m)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        async with store.write() as tx:
            await tx.machines.update(replace(m, state=MachineState.RUNNING))
            inside.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await inside.wait()
    async with store.read() as tx:  # not blocked by the writer, and not seeing its change
        assert (await tx.machines.by_id(m.id)).state == MachineState.CREATED
    release.set()
    await task
    async with store.read() as tx:
        assert (await tx.machines.by_id(m.id)).state == MachineState.RUNNING
