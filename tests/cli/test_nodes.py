"""`hutch node ...`, `hutch run --dry-run` and `hutch project strategy`, against the session's
`hutch up` (one real node: this host)."""

import json
import uuid

import pytest

from hutch.placement import CPU_OVERCOMMIT
from tests.controller import Controller, controller
from tests.helpers.cli import Hutch, one_clear_line

__all__ = ["controller"]  # the session fixture, for the tests here


@pytest.fixture
def hutch(controller: Controller) -> Hutch:
    return Hutch(controller.env)


def test_inspect_cordon_dry_run_and_uncordon(hutch: Hutch) -> None:
    [node] = json.loads(hutch("node", "ls", "-o", "json").stdout)
    shown = json.loads(hutch("node", "inspect", node["name"]).stdout)
    assert shown["id"] == node["id"] and shown["cordoned"] is False
    assert json.loads(hutch("node", "inspect", node["id"]).stdout)["name"] == node["name"]
    plan = hutch("run", "--dry-run", "--runtime", "container", "busybox")
    assert plan.returncode == 0 and f"would run on node {node['name']}" in plan.stdout
    assert hutch("node", "cordon", node["name"]).returncode == 0
    try:
        assert "cordoned" in hutch("node", "ls").stdout
        refused = hutch("run", "--dry-run", "busybox")
        assert refused.returncode == 125
        assert f"{node['name']}: node is cordoned" in refused.stdout
        # A real create says why, and makes nothing.
        made = hutch("run", "-d", "busybox")
        assert made.returncode == 125 and "node is cordoned" in one_clear_line(made.stderr)
    finally:
        assert hutch("node", "uncordon", node["name"]).returncode == 0
    assert json.loads(hutch("node", "inspect", node["name"]).stdout)["cordoned"] is False
    many = hutch("run", "--dry-run", "--constraint", "disk=nvme", "busybox")
    assert many.returncode == 125 and "lacks labels disk=nvme" in many.stdout


def test_node_refusals_are_one_clear_line(hutch: Hutch) -> None:
    for argv, words in [
        (("node", "inspect", "nope"), "no node 'nope'"),
        (("node", "drain", "nope"), "no node 'nope'"),
        (("node", "rm", "nope"), "no node 'nope'"),
        (("node", "join-token", "--ttl", "soon"), "not a duration"),
        (("node", "join-token", "--ttl", "2d"), "86400"),
        (("run", "--dry-run", "--group-policy", "affinity", "busybox"), "needs a group"),
        (("run", "--dry-run", "--strategy", "random", "busybox"), "strategy"),
    ]:
        r = hutch(*argv)
        assert r.returncode == 125 and words in one_clear_line(r.stderr), (argv, r.stderr)


def test_join_tokens_and_project_strategies(hutch: Hutch, controller: Controller) -> None:
    token = hutch("node", "join-token", "--ttl", "10m")
    assert token.returncode == 0 and token.stdout.startswith("hjt.")
    assert len(token.stdout.strip().split(".")) == 4  # plain HTTP: no CA pin
    name = f"dense-{uuid.uuid4().hex[:8]}"
    made = hutch("project", "create", name, "--strategy", "pack")
    assert made.returncode == 0, made.stderr
    with controller.client(name) as client:
        assert client.projects.get(name).strategy == "pack"
        assert hutch("project", "strategy", name, "spread").returncode == 0
        assert client.projects.get(name).strategy == "spread"
    bad = hutch("project", "strategy", name, "sideways")
    assert bad.returncode == 125 and "strategy" in one_clear_line(bad.stderr)


def test_node_ls_counts_vcpus_as_the_scheduler_does(hutch: Hutch) -> None:
    [node] = json.loads(hutch("node", "ls", "-o", "json").stdout)
    cpus, held = node["capacity"]["cpus"], node["allocated"]["cpus"]
    header, row = hutch("node", "ls").stdout.splitlines()
    assert "VCPUS" in header.split()
    assert f" {held}/{cpus * CPU_OVERCOMMIT} ({cpus}x{CPU_OVERCOMMIT}) " in row


def test_the_agent_logs_the_node_it_joined_as(hutch: Hutch, controller: Controller) -> None:
    [node] = json.loads(hutch("node", "ls", "-o", "json").stdout)
    log = (controller.state_dir / "up.log").read_text(errors="replace")
    line = f"joined controller {controller.url} as node {node['name']} (id {node['id']})"
    assert line in log, log[:4000]
