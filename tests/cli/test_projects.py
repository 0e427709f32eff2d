"""`hutch project`, `token`, `quota`, `login`, `context`, through the real binary against a
real `hutch up` (tests/controller.py)."""

import json
import re
import shlex
import uuid
from pathlib import Path

import pytest
import yaml

from tests.controller import Controller, controller
from tests.helpers.cli import Hutch, one_clear_line

__all__ = ["controller"]  # the session fixture, for the tests here


@pytest.fixture
def admin(controller: Controller) -> Hutch:
    """As the operator: the `local` context `hutch up` saved (a system token)."""
    return Hutch(controller.env)


@pytest.fixture
def name() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


def as_token(controller: Controller, token: str) -> Hutch:
    """As a tenant: only HUTCH_URL and HUTCH_TOKEN, no context."""
    env = {
        **controller.env,
        "HUTCH_URL": controller.url,
        "HUTCH_TOKEN": token,
        "HUTCH_CLIENT_CONFIG": "/nonexistent/contexts.toml",
    }
    return Hutch(env)


def test_project_token_flow(controller: Controller, admin: Hutch, name: str) -> None:
    created = admin("project", "create", name)
    assert (created.returncode, created.stdout) == (0, f"{name}\n"), created.stderr
    assert name in admin("project", "ls").stdout
    assert name in [p["name"] for p in json.loads(admin("project", "ls", "-o", "json").stdout)]
    issued = admin(
        "token",
        "create",
        "--project",
        name,
        "--role",
        "member",
        "--name",
        "ci",
        "--expires-in",
        "3600",
    )
    assert issued.returncode == 0, issued.stderr
    secret = issued.stdout.splitlines()[-1]  # the token is the last line
    assert "member" in issued.stderr
    tenant = as_token(controller, secret)
    assert tenant("ps").stdout.splitlines() == [
        "ID  NAME  IMAGE  RUNTIME  STATUS  ADDRESS  PORTS  CREATED"
    ]
    ran = tenant("run", "--rm", "--runtime", "container", "busybox", "--", "echo", "tenant")
    assert (ran.returncode, ran.stdout) == (0, "tenant\n"), ran.stderr
    assert [p["name"] for p in yaml.safe_load(tenant("project", "ls", "-o", "yaml").stdout)] == [
        name
    ]
    [listed] = json.loads(admin("token", "ls", "--project", name, "-o", "json").stdout)
    assert (listed["name"], listed["role"], listed["revoked_at"]) == ("ci", "member", None)
    refused = tenant("token", "ls")  # member, not admin
    assert refused.returncode == 125 and "admin" in one_clear_line(refused.stderr)
    assert admin("token", "revoke", "--project", name, listed["id"]).returncode == 0
    revoked = tenant("ps")
    assert revoked.returncode == 125
    assert one_clear_line(revoked.stderr) == "hutch: this token was revoked"
    assert admin("project", "rm", name).stdout == f"{name}\n"
    assert name not in admin("project", "ls").stdout


def test_a_reader_cannot_run(controller: Controller, admin: Hutch, name: str) -> None:
    admin("project", "create", name)
    secret = admin("token", "create", "-p", name, "--role", "reader").stdout.splitlines()[-1]
    refused = as_token(controller, secret)("run", "busybox")
    assert refused.returncode == 125
    assert "needs the member role" in one_clear_line(refused.stderr)


def test_quota_show_and_set(controller: Controller, admin: Hutch, name: str) -> None:
    admin("project", "create", name)
    shown = admin("quota", "show", name)
    assert shown.returncode == 0 and "unlimited" in shown.stdout
    changed = admin(
        "quota", "set", name, "--machines", "1", "--memory", "1G", "--images", "2G", "-o", "json"
    )
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["quota"] == {
        "machines": 1,
        "vcpus": None,
        "memory_mib": 1024,
        "disk_mib": None,
        "images_mib": 2048,
        "images_unpacked_mib": None,
        "volume_gib": None,
        "snapshot_gib": None,
    }
    kept = admin("quota", "set", name, "--vcpus", "2", "--memory", "unlimited", "-o", "yaml")
    assert yaml.safe_load(kept.stdout)["quota"] == {
        "machines": 1,
        "vcpus": 2,
        "memory_mib": None,
        "disk_mib": None,
        "images_mib": 2048,
        "images_unpacked_mib": None,
        "volume_gib": None,
        "snapshot_gib": None,
    }
    tenant = Hutch({**controller.env, "HUTCH_PROJECT": name})
    tenant("run", "-d", "--runtime", "container", "busybox", "--", "sleep", "600")
    over = tenant("run", "--runtime", "container", "busybox")
    assert over.returncode == 125
    assert "at its quota" in one_clear_line(over.stderr)
    table = admin("quota", "show", name).stdout.splitlines()
    assert table[1].split() == ["machines", "1", "1"]
    bad = admin("quota", "set", name, "--machines", "many")
    assert bad.returncode == 125 and "not a whole number" in one_clear_line(bad.stderr)


def test_login_and_contexts(controller: Controller, tmp_path: Path) -> None:
    env = {**controller.env, "HUTCH_CLIENT_CONFIG": str(tmp_path / "contexts.toml")}
    hutch = Hutch(env)
    nowhere = hutch("ps")
    assert nowhere.returncode == 125 and "no controller configured" in nowhere.stderr
    bad = hutch("login", controller.url, "--token-stdin", input="wrong\n")
    assert bad.returncode == 125 and one_clear_line(bad.stderr) == "hutch: unknown token"
    assert not (tmp_path / "contexts.toml").exists()
    good = hutch(
        "login", controller.url, "--token-stdin", "--name", "lab", input=controller.token + "\n"
    )
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "contexts.toml").stat().st_mode & 0o777 == 0o600
    assert hutch("ps").returncode == 0  # the new context is current, acting in `default`
    hutch("login", controller.url, "--token-stdin", "--name", "other", input=controller.token)
    [lab, other] = json.loads(hutch("context", "ls", "-o", "json").stdout)
    assert (lab["name"], lab["project"], lab["current"]) == ("lab", "default", False)
    assert (other["name"], other["current"]) == ("other", True)
    assert controller.token not in hutch("context", "ls").stdout
    assert hutch("context", "use", "lab").returncode == 0
    assert hutch("context", "ls").stdout.splitlines()[1].split()[:2] == ["*", "lab"]
    assert hutch("context", "rm", "lab").stdout == "lab\n"
    unknown = hutch("context", "use", "lab")
    assert unknown.returncode == 125 and "no context 'lab'" in one_clear_line(unknown.stderr)
    assert hutch("ps").returncode == 125  # the current one is gone


def test_the_readmes_projects_commands_run_as_written(controller: Controller, name: str) -> None:
    """The block under "Projects, tokens and quotas", line by line, for a project of its own."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Projects, tokens and quotas", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    admin = Hutch(controller.env)
    token_id = ""
    for line in block.splitlines():
        for command in line.split("#", 1)[0].split(";"):
            args = shlex.split(command.replace("team-a", name).replace("TOKEN_ID", token_id))
            assert args[0] == "hutch"
            ran = admin(*args[1:])
            assert ran.returncode == 0, f"{command}: {ran.stderr}"
            if args[1:3] == ["token", "create"]:
                token_id = json.loads(admin("token", "ls", "-p", name, "-o", "json").stdout)[0][
                    "id"
                ]
            if args[1:3] == ["quota", "show"]:
                assert "images" in ran.stdout and "5.0 GiB" in ran.stdout


def test_project_and_token_listings_are_newest_first(admin: Hutch, name: str) -> None:
    newer = f"{name}-2"
    for project in (name, newer):
        assert admin("project", "create", project).returncode == 0
    try:
        projects = [p["name"] for p in json.loads(admin("project", "ls", "-o", "json").stdout)]
        assert projects.index(newer) < projects.index(name)
        for token in ("first", "second"):
            admin("token", "create", "-p", name, "--name", token, "--expires-in", "7200")
        listed = json.loads(admin("token", "ls", "-p", name, "-o", "json").stdout)
        assert [t["name"] for t in listed] == ["second", "first"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed[0]["expires_at"])
        _, second, first = admin("token", "ls", "-p", name).stdout.splitlines()
        assert "second" in second and "first" in first
        assert "just now" in second and "in 1 hour" in second  # 7200 s, less a moment
    finally:
        admin("project", "rm", name, newer)
