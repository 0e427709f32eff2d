"""The `api` fixture: the real controller app and store in-process, with a simulated node
(tests/helpers/api.py); `api_both`: the same on SQLite and on PostgreSQL."""

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.api import Api, close_api, open_api
from tests.store.postgres import postgres, postgres_url

__all__ = ["postgres", "postgres_url"]  # fixtures, re-exported for pytest


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    tmp = Path(tempfile.mkdtemp(prefix="ha", dir="/tmp"))
    a, _ = await open_api(tmp)
    await a.project("alpha")
    await a.project("beta")
    yield a
    await close_api(a)


@pytest.fixture(params=["sqlite", "postgres"])
async def api_both(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    a, _ = await open_api(Path(tempfile.mkdtemp(prefix="hb", dir="/tmp")), url)
    await a.project("alpha")
    await a.project("beta")
    yield a
    await close_api(a)
