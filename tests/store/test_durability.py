"""Crash safety: what a write transaction leaves behind when it fails or its process dies."""

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url

from hutch.model.errors import NotFound
from hutch.model.tenancy import Quota
from hutch.store.sql import SqlStore
from tests.store import factories as f
from tests.store.postgres import PostgresCluster

WORKER = Path(__file__).with_name("worker.py")


async def test_a_failed_block_leaves_nothing_after_reopening(store_url: str) -> None:
    store = SqlStore(store_url)
    await store.open()
    kept, lost = f.project("kept"), f.project("lost")
    async with store.write() as tx:
        await tx.projects.create(kept)
    with pytest.raises(RuntimeError, match="boom"):
        async with store.write() as tx:
            await tx.projects.create(lost)
            await tx.projects.set_quota(kept.id, Quota(machines=1))
            raise RuntimeError("boom")
    await store.close()

    store = SqlStore(store_url)  # a new connection, and on SQLite a new open of the file
    await store.open()
    async with store.read() as tx:
        assert await tx.projects.list() == [kept]
    await store.close()


async def test_a_killed_writer_leaves_its_committed_work_only(store_url: str) -> None:
    """A process killed in the middle of a write transaction: what it committed before stays,
    the open transaction is gone, and its lock with it."""
    store = SqlStore(store_url)
    await store.open()
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.machines.create(f.machine(p.id, "committed"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        "hang",
        store_url,
        p.id,
        "uncommitted",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"ready\n", (await proc.stderr.read()).decode() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async with asyncio.timeout(20):  # the dead writer's locks (file or row) are released
        async with store.write() as tx:
            await tx.projects.lock(p.id)
            await tx.machines.create(f.machine(p.id, "after"))
    await store.close()

    store = SqlStore(store_url)
    await store.open()
    async with store.read() as tx:
        page, _ = await tx.machines.list(p.id)
        assert [m.name for m in page] == ["committed", "after"]
        with pytest.raises(NotFound):
            await tx.machines.get(p.id, "uncommitted")
    await store.close()


async def test_postgres_connections_dropped_under_the_store(
    postgres: PostgresCluster, postgres_url: str
) -> None:
    """A PostgreSQL restart or an admin's pg_terminate_backend: the pool reconnects."""
    store = SqlStore(postgres_url)
    await store.open()
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)
    database = make_url(postgres_url).database
    killed = postgres.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    assert int(killed) >= 1
    async with store.write() as tx:
        await tx.projects.set_quota(p.id, Quota(machines=2))
    async with store.read() as tx:
        assert (await tx.projects.get(p.id)).quota == Quota(machines=2)
    await store.close()
