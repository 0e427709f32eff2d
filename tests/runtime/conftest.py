"""Drivers for runtime tests, built through the agent layer from settings (as hutch does):
tests/helpers/runtime.py."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.images.rootfs import PreparedRoot, prepare_root
from hutch.runtime.driver import SandboxDriver
from tests.helpers import CACHE_DIR
from tests.helpers.runtime import driver_in


@pytest.fixture(scope="session")
def busybox_root(busybox_rootfs: Path) -> PreparedRoot:
    return prepare_root(busybox_rootfs, CACHE_DIR, disk=True)


@pytest.fixture
async def microvm(short_dir: Path) -> AsyncIterator[SandboxDriver]:
    async for driver in driver_in(short_dir / "state", "microvm"):
        yield driver


@pytest.fixture
async def container(short_dir: Path) -> AsyncIterator[SandboxDriver]:
    async for driver in driver_in(short_dir / "state", "container"):
        yield driver
