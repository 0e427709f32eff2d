"""The dashboard's HTTP-level tests run against the API's in-process app (tests/helpers/api.py,
which installs the dashboard as the controller does). Its browser tests run a real Chromium
(tests/helpers/browser.py) against the session's shared `hutch up` (tests/controller.py), which
runs real micro-VMs and serves the front-end packages `hutch setup` fetched."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.web import assets
from tests.api.conftest import api, api_both
from tests.controller import Controller, controller
from tests.helpers import CACHE_DIR
from tests.helpers.browser import SCREENSHOTS, Browser, chromium

__all__ = ["api", "api_both", "controller"]


@pytest.fixture(scope="session")
def vendor() -> Path:
    """The dashboard's npm packages in the shared cache (`make test` runs `hutch setup`, which
    fetched them; a lone pytest run fetches them here, before `hutch up` starts serving)."""
    return assets.fetch(CACHE_DIR)


@pytest.fixture(scope="session")
def dashboard(vendor: Path, controller: Controller) -> Controller:
    """The shared `hutch up`, its dashboard at `url`/ui with its front-end packages."""
    return controller


@pytest.fixture(scope="session")
def browser(dashboard: Controller) -> Iterator[Browser]:
    """One headless Chromium for the session; each test signs in as whom it needs. An
    earlier run's screenshots go: `make screenshots` keeps only this run's."""
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with chromium() as driver:
        yield Browser(driver, dashboard.url)
