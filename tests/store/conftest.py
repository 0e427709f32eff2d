"""Store fixtures: every test that takes `store` (or a store URL) runs on SQLite and PostgreSQL.

store_url   a URL of a fresh, empty store: a SQLite file, or a new PostgreSQL database
url_at_head a URL of a fresh store already at the schema's head (tests/store/at_head.py)
store       that store, opened; closed afterwards
"""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.store import open_store
from hutch.store.sql import SqlStore
from tests.store.at_head import copy_sqlite_at_head


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hutch.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def url_at_head(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return copy_sqlite_at_head(request.getfixturevalue("sqlite_at_head"), tmp_path / "h.db")
    url: str = request.getfixturevalue("postgres_url_at_head")
    return url


@pytest.fixture
async def store(url_at_head: str) -> AsyncIterator[SqlStore]:
    s = open_store(url_at_head)
    assert isinstance(s, SqlStore)
    await s.open()
    yield s
    await s.close()
