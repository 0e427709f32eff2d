"""Opening a store: URLs, migrations that match `tables.py` exactly, failures that say where."""

import socket
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from hutch.model.errors import Invalid, Unavailable
from hutch.store import open_store
from hutch.store.base import NewEvent
from hutch.store.sql import SqlStore, alembic_config, parse_url
from hutch.store.tables import metadata
from tests.store import factories as f
from tests.store.postgres import PostgresCluster


def schema_diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def test_migrations_match_the_tables(store: SqlStore) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    async with store.engine.connect() as conn:
        assert await conn.run_sync(schema_diff) == []
        assert await conn.run_sync(current_revision) == head
        indexes = await conn.run_sync(lambda c: inspect(c).get_indexes("machines"))
    live_names = next(i for i in indexes if i["name"] == "uq_machines_project_id_name_live")
    assert live_names["unique"]
    # Autogenerate does not compare index predicates: check the partial index's here.
    predicate = " ".join(str(v) for v in live_names.get("dialect_options", {}).values())
    assert "state" in predicate and "'destroyed'" in predicate


async def test_downgrade_and_upgrade_again(store: SqlStore) -> None:
    def down_and_up(conn: Connection) -> tuple[list[str], list[object]]:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        left = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        command.upgrade(config, "head")
        return left, schema_diff(conn)

    async with store.engine.begin() as conn:
        left, diff = await conn.run_sync(down_and_up)
    assert left == [] and diff == []
    async with store.write() as tx:
        await tx.projects.create(f.project())


async def test_events_before_0005_are_numbered_per_project(store: SqlStore) -> None:
    def old_events(conn: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
        for p in ("p-a", "p-b"):
            conn.execute(text("INSERT INTO projects (id, name, created_at) VALUES (:p, :p, 1)"),
                         {"p": p})  # fmt: skip
        for p in ("p-a", "p-b", "p-a", "p-b", "p-a"):
            conn.execute(
                text("INSERT INTO events (project_id, kind, object_id, state, message, time)"
                     " VALUES (:p, 'k', 'o', 's', '', 1)"),
                {"p": p},
            )  # fmt: skip
        command.upgrade(config, "head")

    async with store.engine.begin() as conn:
        await conn.run_sync(old_events)
    async with store.write() as tx:
        assert [e.id for e in await tx.events.since("p-a", 0)] == [1, 2, 3]
        assert [e.id for e in await tx.events.since("p-b", 1)] == [2]
        [new] = await tx.events.append([NewEvent("p-b", "k", "o", "s", "", 2)])
    assert new.id == 3


async def test_reopening_keeps_data(store_url: str) -> None:
    p = f.project()
    first = SqlStore(store_url)
    await first.open()
    async with first.write() as tx:
        await tx.projects.create(p)
    await first.close()
    second = SqlStore(store_url)
    await second.open()  # already at head: migrates nothing, keeps everything
    async with second.read() as tx:
        assert await tx.projects.get(p.id) == p
    await second.close()


async def test_a_newer_schema_is_refused(store_url: str) -> None:
    store = SqlStore(store_url)
    await store.open()
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    await store.close()
    with pytest.raises(Unavailable, match="newer version"):
        await SqlStore(store_url).open()


async def test_postgres_over_tcp(postgres: PostgresCluster) -> None:
    name = postgres.create_database()
    try:
        store = open_store(postgres.tcp_url(name))
        await store.open()
        async with store.write() as tx:
            await tx.projects.create(f.project("tcp"))
        async with store.read() as tx:
            assert [p.name for p in await tx.projects.list()] == ["tcp"]
        await store.close()
    finally:
        postgres.drop_database(name)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:hunter2@db.example/hutch",
        "postgresql+psycopg://hutch:hunter2@db.example/hutch",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://hutch:hunter2@db.example",
        "not a url at all",
    ],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(Invalid) as raised:
        open_store(url)
    assert "hunter2" not in raised.value.message


def test_url_forms() -> None:
    assert parse_url("sqlite:////var/lib/hutch/hutch.db")[1].database == "/var/lib/hutch/hutch.db"
    backend, url = parse_url("postgres://u@/hutch?host=/run/postgresql")
    assert (backend, url.drivername, url.query["host"]) == (
        "postgresql",
        "postgresql+asyncpg",
        "/run/postgresql",
    )


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_unreachable_postgres_is_unavailable() -> None:
    port = unused_port()
    store = open_store(f"postgresql://hutch:hunter2@127.0.0.1:{port}/hutch")
    with pytest.raises(Unavailable) as raised:
        await store.open()
    message = raised.value.message
    assert f"127.0.0.1:{port}" in message and "hunter2" not in message


async def test_missing_postgres_database_is_unavailable(postgres: PostgresCluster) -> None:
    store = open_store(postgres.url("no_such_database"))
    with pytest.raises(Unavailable, match="no_such_database"):
        await store.open()


async def test_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/missing-dir/hutch.db")
    with pytest.raises(Unavailable) as raised:
        await store.open()
    assert str(tmp_path) not in raised.value.message  # no host paths in messages


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/hutch.db")
    with pytest.raises(Unavailable, match="not open"):
        async with store.read():
            pass
    await store.open()
    await store.close()
    with pytest.raises(Unavailable, match="not open"):
        async with store.write():
            pass
