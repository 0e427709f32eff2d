"""`hutch network`, `hutch sg`, and `hutch run -p/--network/--sg` with `ps` and `inspect`,
through the real binary against a real `hutch up`, each test in a project of its own."""

import json
import subprocess
from collections.abc import Callable

import pytest

from tests.controller import Controller, controller, new_project
from tests.helpers.cli import HUTCH, one_clear_line

__all__ = ["controller"]

Run = Callable[..., subprocess.CompletedProcess[str]]
C = ("--runtime", "container")


@pytest.fixture
def hutch(controller: Controller) -> Run:
    env = {**controller.env, "HUTCH_PROJECT": new_project(controller)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HUTCH, *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )

    return run


def test_networks_from_the_cli(hutch: Run) -> None:
    made = hutch("network", "create", "back", "--subnet", "192.168.77.0/24", "--egress", "deny")
    assert made.returncode == 0, made.stderr
    assert "192.168.77.0/24" in made.stderr
    listed = hutch("network", "ls")
    assert listed.stdout.splitlines()[0].split()[:4] == ["NAME", "ID", "SUBNET4", "SUBNET6"]
    assert "back" in listed.stdout and "deny" in listed.stdout
    shown = json.loads(hutch("network", "inspect", "back").stdout)
    assert shown["gateway4"] == "192.168.77.1" and shown["machines"] == 0
    for argv, words in (
        (("network", "create", "b2", "--subnet", "192.168.77.0/25"), "overlaps network back"),
        (("network", "create", "b2", "--subnet", "192.168.78.0/30"), "too small"),
        (("network", "create", "b2", "--subnet", "10.96.5.0/24"), "controller's pool"),
        (("network", "inspect", "nope"), "no network 'nope'"),
    ):
        r = hutch(*argv)
        assert r.returncode == 125 and words in one_clear_line(r.stderr), (argv, r.stderr)
    assert hutch("network", "rm", "back").returncode == 0
    assert "back" not in hutch("network", "ls").stdout


def test_security_groups_from_the_cli(hutch: Run) -> None:
    assert hutch("sg", "create", "web").stdout.startswith("sg-")
    added = hutch("sg", "rule", "add", "web", "ingress", "--protocol", "tcp", "--port", "80",
                  "--remote", "0.0.0.0/0")  # fmt: skip
    assert added.returncode == 0, added.stderr
    rule_id = added.stdout.strip()
    assert "ingress tcp:80 0.0.0.0/0" in hutch("sg", "ls").stdout
    shown = json.loads(hutch("sg", "inspect", "web").stdout)
    assert [r["id"] for r in shown["rules"]] == [rule_id]
    for argv, words in (
        (("sg", "rule", "add", "web", "ingress", "--port", "0-70000", "--protocol", "tcp",
          "--remote", "10.0.0.0/8"), "port"),
        (("sg", "rule", "add", "web", "ingress", "--remote", "nope"), "no security group 'nope'"),
        (("sg", "rule", "add", "web", "sideways", "--remote", "10.0.0.0/8"), "direction"),
    ):  # fmt: skip
        r = hutch(*argv)
        assert r.returncode == 125 and words in one_clear_line(r.stderr), (argv, r.stderr)
    assert hutch("sg", "rule", "rm", "web", rule_id).returncode == 0
    assert json.loads(hutch("sg", "inspect", "web").stdout)["rules"] == []
    assert hutch("sg", "rm", "web").returncode == 0


def test_run_publishes_ports_and_ps_and_inspect_show_them(hutch: Run) -> None:
    assert hutch("sg", "create", "web").returncode == 0
    ran = hutch("run", "-d", *C, "--name", "web", "-p", "127.0.0.1:18080:80", "-p", "18053:53/udp",
                "--sg", "web", "busybox", "--", "sleep", "60")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    shown = json.loads(hutch("inspect", "web").stdout)
    assert shown["networks"] == ["default"] and shown["dns"].startswith("web.")
    assert shown["security_groups"] == ["web"]
    assert shown["exposed_ports"] == []  # busybox exposes none (its image's ExposedPorts)
    published = {(p["host_port"], p["protocol"]) for p in shown["ports"]}
    assert published == {(18080, "tcp"), (18053, "udp")}
    table = hutch("ps").stdout.splitlines()
    assert table[0].split() == [
        "ID", "NAME", "IMAGE", "RUNTIME", "STATUS", "ADDRESS", "PORTS", "CREATED",
    ]  # fmt: skip
    assert shown["addresses"][0]["ip4"] in table[1]
    assert "127.0.0.1:18080->80/tcp" in table[1] and "18053->53/udp" in table[1]
    # The one node publishes 18080/tcp already: the dry run and run say so.
    plan = hutch("run", "--dry-run", *C, "-p", "18080:80", "busybox")
    assert plan.returncode == 125 and "host port 18080/tcp published already" in plan.stdout
    for argv, words in (
        (("run", "-d", *C, "-p", "0:80", "busybox"), "out of range"),
        (("run", "-d", *C, "-p", "70000:80", "busybox"), "out of range"),
        (("run", "-d", *C, "-p", "80", "busybox"), "HOST_PORT:PORT"),
        (("run", "-d", *C, "-p", "8081:80/sctp", "busybox"), "tcp or udp"),
        (("run", "-d", *C, "--network", "nope", "busybox"), "no network 'nope'"),
        (("run", "-d", *C, "--sg", "nope", "busybox"), "no security group 'nope'"),
    ):
        r = hutch(*argv)
        assert r.returncode == 125 and words in one_clear_line(r.stderr), (argv, r.stderr)
    lone = hutch("run", "-d", *C, "--network", "none", "--name", "lone", "busybox", "--", "true")
    assert lone.returncode == 0, lone.stderr
    assert json.loads(hutch("inspect", "lone").stdout)["addresses"] == []
