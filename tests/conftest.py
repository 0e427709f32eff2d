"""Shared fixtures: a busybox root filesystem built from the host's busybox-static, the guest
artifacts (built once into the shared cache), short state directories for unix sockets.

The session runs in a network namespace of its own (as root): its `hutch up` manages that
namespace's networks (one node agent per namespace), so a test session never meets another
session's agent, nor the operator's own `hutch up` on this host.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.images.busybox import build_busybox_rootfs
from hutch.runtime.guest import build
from hutch.runtime.guest.build import GuestArtifacts
from tests.helpers import CACHE_DIR
from tests.helpers.netns import enter_new_network_namespace
from tests.store.at_head import postgres_at_head, postgres_url_at_head, sqlite_at_head
from tests.store.postgres import postgres, postgres_url

# Defined here once: a session fixture imported into several modules is one per module (a
# PostgreSQL cluster started for each).
__all__ = ["postgres", "postgres_at_head", "postgres_url", "postgres_url_at_head", "sqlite_at_head"]


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0:  # before any thread starts: threads keep the namespace they began in
        enter_new_network_namespace()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def guest() -> GuestArtifacts:
    return build.prepare(CACHE_DIR)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path: unix socket addresses are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _machines_end_with_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests on the shared `hutch up` (tests/controller.py) leave no machine holding its node:
    one that did made later tests meet NoCapacity."""
    started = time.time()
    yield
    if "controller" in request.fixturenames:
        from tests.controller import destroy_machines_since  # noqa: PLC0415 - it imports this

        destroy_machines_since(request.getfixturevalue("controller"), started)
