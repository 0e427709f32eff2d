"""The `api` fixture: the real controller app and store in-process, with a simulated node
(tests/helpers/api.py); `api_both`: the same on SQLite and on PostgreSQL. Their stores start
at the schema's head (tests/store/at_head.py)."""

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.api import Api, close_api, open_api
from tests.store.at_head import controller_db_at_head


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    tmp = Path(tempfile.mkdtemp(prefix="ha", dir="/tmp"))
    a, _ = await open_api(tmp, controller_db_at_head(request, "sqlite", tmp))
    await a.project("alpha")
    await a.project("beta")
    yield a
    await close_api(a)


@pytest.fixture(params=["sqlite", "postgres"])
async def api_both(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    tmp = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    a, _ = await open_api(tmp, controller_db_at_head(request, request.param, tmp))
    await a.project("alpha")
    await a.project("beta")
    yield a
    await close_api(a)
