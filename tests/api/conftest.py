"""The `api` fixture: the real controller app and store in-process, with a simulated node
(tests/helpers/api.py)."""

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
