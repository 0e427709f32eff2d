"""Store fixtures: every test that takes `store` (or `store_url`) runs on SQLite and PostgreSQL.

store_url   a URL of a fresh, empty store: a SQLite file, or a new PostgreSQL database
store       that store, opened (migrated); closed afterwards
"""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.store import open_store
from hutch.store.sql import SqlStore
from tests.store.postgres import postgres, postgres_url

__all__ = ["postgres", "postgres_url"]  # fixtures, re-exported for pytest


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hutch.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(store_url)
    assert isinstance(s, SqlStore)
    await s.open()
    yield s
    await s.close()
