"""The `hutch` fixture: the CLI (tests/helpers/cli.py) in an environment of the test's own."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Hutch, isolated_env
from tests.helpers.cluster import Net, make_net


@pytest.fixture
def hutch_env(short_dir: Path) -> dict[str, str]:
    """A CLI that knows no controller (not the developer's own) until a test gives it one."""
    return isolated_env(short_dir / "state", short_dir)


@pytest.fixture
def hutch(hutch_env: dict[str, str]) -> Hutch:
    """Run the hutch CLI; returns the completed process (text)."""
    return Hutch(hutch_env)


@pytest.fixture
def net() -> Iterator[Net]:
    """A bridge and three node namespaces hanging off it (tests/helpers/cluster.py)."""
    yield from make_net()
