"""What the SQLite backend promises beyond the contract: WAL, foreign keys, a busy timeout,
BEGIN IMMEDIATE for writers and a stable snapshot for readers."""

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from hutch.model.errors import Conflict, Unavailable
from hutch.store.base import NewEvent
from hutch.store.sql import SqlStore, engine
from tests.store import factories as f
from tests.store.at_head import copy_sqlite_at_head


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hutch.db"


@pytest.fixture
async def sqlite_store(db: Path, sqlite_at_head: Path) -> AsyncIterator[SqlStore]:
    store = SqlStore(copy_sqlite_at_head(sqlite_at_head, db))
    await store.open()
    yield store
    await store.close()


def other_writer(db: Path) -> sqlite3.Connection:
    """A plain connection from 'another process', that never waits for a lock."""
    return sqlite3.connect(db, timeout=0, isolation_level=None, check_same_thread=False)


async def test_pragmas(sqlite_store: SqlStore) -> None:
    async with sqlite_store.write() as tx:
        conn = tx.projects._c  # type: ignore[attr-defined]  # white box: the connection itself
        pragmas = {
            name: (await conn.execute(sa.text(f"PRAGMA {name}"))).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 30000,
        "synchronous": 2,
    }
    async with sqlite_store.read() as tx:
        conn = tx.projects._c  # type: ignore[attr-defined]  # reads run in the loop (_InLoop)
        assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await conn.execute(sa.text("PRAGMA query_only"))).scalar() == 1


async def test_writers_hold_the_write_lock_from_begin(sqlite_store: SqlStore, db: Path) -> None:
    other = other_writer(db)
    async with sqlite_store.write():  # not one statement yet: BEGIN IMMEDIATE alone
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # released at the end of the block
    other.execute("ROLLBACK")
    other.close()


async def test_readers_neither_block_writers_nor_see_them(sqlite_store: SqlStore, db: Path) -> None:
    a = f.project()
    other = other_writer(db)
    async with sqlite_store.read() as tx:
        assert await tx.projects.list() == []  # the snapshot starts here
        other.execute("BEGIN IMMEDIATE")  # a reader does not hold writers off
        other.execute(
            "INSERT INTO projects (id, name, created_at) VALUES (?, ?, ?)",
            (a.id, a.name, a.created_at),
        )
        other.execute("COMMIT")
        assert await tx.projects.list() == []  # a deferred BEGIN, really in a transaction
    async with sqlite_store.read() as tx:
        assert [p.id for p in await tx.projects.list()] == [a.id]
    other.close()


async def test_writers_wait_for_another_process(sqlite_store: SqlStore, db: Path) -> None:
    """Instead of 'database is locked': the busy timeout covers other processes' writers."""
    other = other_writer(db)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    start = time.monotonic()
    async with sqlite_store.write() as tx:
        await tx.projects.create(f.project())
    assert time.monotonic() - start >= 0.4
    release.join()
    other.close()


async def test_a_writer_cancelled_while_it_waits_leaves_the_file_unlocked(
    sqlite_store: SqlStore, db: Path
) -> None:
    """Its BEGIN IMMEDIATE, waiting in the writer's thread for another process, is let end and
    rolled back: neither the lock nor a half-begun transaction is left behind."""
    other = other_writer(db)
    other.execute("BEGIN IMMEDIATE")

    async def write() -> None:
        async with sqlite_store.write() as tx:
            await tx.projects.create(f.project())

    task = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    task.cancel()
    release = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
    release.start()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.join()
    other.execute("BEGIN IMMEDIATE")  # free again
    other.execute("ROLLBACK")
    other.close()
    async with sqlite_store.write() as tx:
        await tx.projects.create(p := f.project())
    async with sqlite_store.read() as tx:
        assert await tx.projects.list() == [p]


async def test_foreign_keys_are_enforced(sqlite_store: SqlStore) -> None:
    with pytest.raises(Conflict):
        async with sqlite_store.write() as tx:
            conn = tx.projects._c  # type: ignore[attr-defined]
            await conn.execute(
                sa.text(
                    "INSERT INTO events (project_id, kind, object_id, state, message, time) "
                    "VALUES ('nope', 'k', 'o', 's', '', 0)"
                )
            )


async def test_many_tasks_write_without_errors(sqlite_store: SqlStore) -> None:
    p = f.project()
    async with sqlite_store.write() as tx:
        await tx.projects.create(p)

    async def one(i: int) -> None:
        async with sqlite_store.write() as tx:
            await tx.events.append([NewEvent(p.id, "k", f"o{i}", "s", "", 0.0)])

    await asyncio.gather(*(one(i) for i in range(100)))
    async with sqlite_store.read() as tx:
        assert len(await tx.events.since(p.id, 0)) == 100


async def test_a_writer_locked_out_too_long_is_unavailable(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BUSY_TIMEOUT", 0.2)
    store = SqlStore(f"sqlite:///{db}")
    await store.open()
    other = other_writer(db)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="stayed locked by another writer"):
            async with store.write() as tx:
                await tx.projects.create(f.project())
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with store.write() as tx:  # and it recovers once the other writer is gone
        await tx.projects.create(f.project())
    await store.close()


async def test_writers_that_come_together_commit_once_and_fail_alone(
    sqlite_store: SqlStore, db: Path
) -> None:
    """Group commit: blocks that come while a transaction begins share it and its one COMMIT;
    a block refused by a constraint, or failing after its writes, loses its own writes only."""
    p = f.project()
    async with sqlite_store.write() as tx:
        await tx.projects.create(p)
    commits: list[object] = []
    assert sqlite_store._sqlite_writer is not None  # white box: the writer's COMMITs counted
    sa.event.listen(sqlite_store._sqlite_writer, "commit", commits.append)
    other = other_writer(db)  # sees committed rows only

    async def create(name: str, fail: bool = False) -> str:
        async with sqlite_store.write() as tx:
            await tx.machines.create(f.machine(p.id, name))
            if fail:
                raise RuntimeError("a bug after its write")
        # Acknowledged only once committed: another connection sees it already.
        assert other.execute("SELECT 1 FROM machines WHERE name = ?", (name,)).fetchone()
        return name

    names = ["twin", *(f"m{i}" for i in range(16)), "twin"]
    outcomes = await asyncio.gather(
        *(create(n) for n in names), create("buggy", fail=True), return_exceptions=True
    )
    assert outcomes[:-2] == names[:-1]
    assert isinstance(outcomes[-2], Conflict) and "named 'twin'" in str(outcomes[-2])
    assert isinstance(outcomes[-1], RuntimeError)
    assert len(commits) == 1
    async with sqlite_store.read() as tx:
        page, _ = await tx.machines.list(p.id, limit=100)
    assert sorted(m.name for m in page) == sorted(names[:-1])
    other.close()
