"""`hutch` itself: the listing of its commands, and that a command loads only what it needs."""

import pytest

from tests.helpers.cli import Hutch

HEAVY = ("fastapi", "uvicorn", "sqlalchemy", "hutch.api", "hutch.agent", "hutch.images")
# What a command that only reads a listing has no use for, and takes longer to import than the
# listing takes to fetch (bench/cli.py): the SDK's models, YAML, asyncio and its websockets,
# rich (which httpx's own command line imports).
SLOW = ("pydantic", "hutch.wire", "yaml", "asyncio", "websockets", "rich", "pygments")


def imported(*args: str, env: dict[str, str]) -> set[str]:
    """The modules `hutch ARGS` imports (python -X importtime)."""
    return Hutch(env).imports(*args)[1]


def test_every_listed_command_runs_its_help(hutch: Hutch) -> None:
    listing = hutch("--help")
    assert listing.returncode == 0
    commands = listing.stdout.split("Commands:")[1].split("\n\n")[0].split("\n")
    names = [line.split()[0] for line in commands if line.strip()]
    assert {"run", "ps", "up", "down", "image", "node", "version"} <= set(names)
    for name in names:
        shown = hutch(name, "--help")
        assert shown.returncode == 0 and f"Usage: hutch {name}" in shown.stdout, shown.stderr
        # Only the top level could install completion: no group offers it.
        assert "--install-completion" not in shown.stdout, name
    assert "hutch run busybox -- echo hello" in hutch("run", "--help").stdout  # its epilog


@pytest.mark.parametrize("args", [("--help",), ("version",)])
def test_help_and_version_load_no_command(args: tuple[str, ...], hutch_env: dict[str, str]) -> None:
    modules = imported(*args, env=hutch_env)
    assert "hutch.cli.main" in modules
    commands = {m for m in modules if m.startswith(("hutch.client", "hutch.cli."))}
    assert commands == {"hutch.cli.main"}
    assert not {m for m in modules if m.startswith(HEAVY + SLOW)}


def test_ps_loads_no_server(hutch_env: dict[str, str]) -> None:
    modules = imported(
        "ps", env={**hutch_env, "HUTCH_URL": "http://127.0.0.1:1", "HUTCH_TOKEN": "x"}
    )
    assert "hutch.client.plain" in modules
    assert not {m for m in modules if m.startswith(HEAVY + SLOW)}


def test_a_pool_of_more_than_it_may_keep_is_refused_naming_the_option(hutch: Hutch) -> None:
    """Before any controller is asked (none is here): the flag and its range, not the API's
    field name."""
    refused = hutch("pool", "set", "busybox", "--min-ready", "65")
    assert refused.returncode == 125, refused.stderr
    assert "'--min-ready'" in refused.stderr and "0<=x<=64" in refused.stderr, refused.stderr
    assert "0<=x<=64" in hutch("pool", "set", "--help").stdout
