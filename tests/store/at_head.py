"""Stores already at the schema's head, for tests of what a store holds rather than of how it
gets its schema (tests/store/test_migrations.py and the `store_url` tests migrate from empty).
The migrations run once a session per backend (a third of a second of CPU a store, hundreds of
stores a session); each test gets a copy.

    sqlite_at_head       session: a migrated SQLite file; `copy_sqlite_at_head` copies it
    postgres_url_at_head a new PostgreSQL database made from a migrated template; dropped afterwards
    controller_db_at_head  the `database_url` for a controller whose store starts at head

tests/conftest.py defines the fixtures for every directory.
"""

import asyncio
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hutch.store.sql import SqlStore
from tests.store.postgres import PostgresCluster

TEMPLATE = "hutch_at_head"


def _migrate(url: str) -> None:
    """In a thread of its own: an async test's fixtures are set up inside its event loop."""

    async def migrate() -> None:
        store = SqlStore(url)
        await store.open()
        await store.close()

    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, migrate()).result()


@pytest.fixture(scope="session")
def sqlite_at_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("at-head") / "controller.db"
    _migrate(f"sqlite:///{db}")
    return db


def copy_sqlite_at_head(template: Path, db: Path) -> str:
    """`template` copied to `db` (a controller's default is `controller.db` in its state
    directory); its URL."""
    shutil.copyfile(template, db)
    return f"sqlite:///{db}"


def controller_db_at_head(request: pytest.FixtureRequest, backend: str, state_dir: Path) -> str:
    """For a controller in `state_dir`, on "sqlite" or "postgres": "" (the default,
    `controller.db` in the state directory, there at head already) or a new database's URL."""
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url_at_head")
        return url
    copy_sqlite_at_head(request.getfixturevalue("sqlite_at_head"), state_dir / "controller.db")
    return ""


@pytest.fixture(scope="session")
def postgres_at_head(postgres: PostgresCluster) -> str:
    """The template database: migrated, then closed to connections (CREATE DATABASE ...
    TEMPLATE needs it unused)."""
    postgres.sql(f'CREATE DATABASE "{TEMPLATE}"')
    _migrate(postgres.url(TEMPLATE))
    postgres.sql(f'ALTER DATABASE "{TEMPLATE}" WITH ALLOW_CONNECTIONS false')
    postgres.sql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{TEMPLATE}'"
    )
    return TEMPLATE


@pytest.fixture
def postgres_url_at_head(postgres: PostgresCluster, postgres_at_head: str) -> Iterator[str]:
    name = postgres.create_database(template=postgres_at_head)
    yield postgres.url(name)
    postgres.drop_database(name)
