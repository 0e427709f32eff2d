import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CACHE_DIR

HUTCH = str(Path(sys.executable).parent / "hutch")

Hutch = Callable[..., subprocess.CompletedProcess[str]]
CLIENT_VARIABLES = ("HUTCH_URL", "HUTCH_TOKEN", "HUTCH_PROJECT", "HUTCH_CLIENT_CONFIG")


@pytest.fixture
def hutch_env(short_dir: Path) -> dict[str, str]:
    """A CLI that knows no controller (not the developer's own) until a test gives it one."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    return {
        **env,
        "HUTCH_STATE_DIR": str(short_dir / "state"),
        "HUTCH_CACHE_DIR": str(CACHE_DIR),
        "HUTCH_CONFIG": str(short_dir / "none.toml"),
        "HUTCH_CLIENT_CONFIG": str(short_dir / "contexts.toml"),
    }


@pytest.fixture
def hutch(hutch_env: dict[str, str]) -> Hutch:
    """Run the hutch CLI; returns the completed process (text)."""

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HUTCH, *args],
            capture_output=True,
            text=True,
            env=hutch_env,
            timeout=timeout,
            check=False,
        )

    return run


def one_clear_line(stderr: str) -> str:
    """A refusal is one line starting with 'hutch:' (or usage text from the parser), never a
    traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]
