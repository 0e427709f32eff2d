"""The one way tests run the `hutch` CLI: the installed console script, in a subprocess, with an
environment of the test's choosing (as a user's shell would run it)."""

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.helpers import CACHE_DIR

HUTCH = str(Path(sys.executable).parent / "hutch")
# What points the CLI at a controller: a test's CLI sees none of the developer's own.
CLIENT_VARIABLES = ("HUTCH_URL", "HUTCH_TOKEN", "HUTCH_PROJECT", "HUTCH_CLIENT_CONFIG")


def isolated_env(state_dir: Path, config_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the client variables, with hutch's state under
    `state_dir` and its (absent) config and client contexts under `config_dir`."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    return {
        **env,
        "HUTCH_STATE_DIR": str(state_dir),
        "HUTCH_CACHE_DIR": str(CACHE_DIR),
        "HUTCH_CONFIG": str(config_dir / "none.toml"),
        "HUTCH_CLIENT_CONFIG": str(config_dir / "contexts.toml"),
        **extra,
    }


@dataclass(frozen=True)
class Hutch:
    """`hutch` in `env`. Called, it runs a command to its end and returns the completed process
    (text; `raw` for bytes); `start` leaves one running; `imports` runs one under
    `python -X importtime` and says which modules it loaded."""

    env: Mapping[str, str]
    timeout: float = 180  # seconds: a command still running then fails the test

    def __call__(
        self, *args: str, input: str | None = None, stdin: IO[Any] | None = None,
        timeout: float | None = None, check: bool = False,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(
            [HUTCH, *args], input=input, stdin=stdin, capture_output=True, text=True,
            env=self.env, timeout=timeout or self.timeout, check=check,
        )  # fmt: skip

    def raw(
        self, *args: str, input: bytes | None = None, timeout: float | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        return subprocess.run(
            [HUTCH, *args], input=input, capture_output=True, env=self.env,
            timeout=timeout or self.timeout, check=check,
        )  # fmt: skip

    def start(self, *args: str, **popen: Any) -> "subprocess.Popen[Any]":
        """`hutch ARGS` left running (a controller, an agent, an attached run); `popen` as for
        subprocess.Popen."""
        return subprocess.Popen([HUTCH, *args], env=self.env, **popen)

    def imports(self, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        """`hutch ARGS` run as `python -X importtime -m hutch ARGS`, and the modules it
        imported (its stderr is Python's import report)."""
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "hutch", *args],
            capture_output=True, text=True, env=self.env, timeout=60, check=False,
        )  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if "import time:" in line]
        return done, {line.split("|")[-1].strip() for line in lines}


def one_clear_line(stderr: str) -> str:
    """A refusal is one line starting with 'hutch:' (or usage text from the parser), never a
    traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]
