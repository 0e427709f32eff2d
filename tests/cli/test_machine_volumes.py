"""Machines with volumes (`hutch run -v`, MachineCreate.volumes) through the real binary and
the SDK against a real `hutch up` (its node's LocalBackend): data that outlives a micro-VM, one
machine at a time, untrusted file systems kept from containers, placement on the volume's node,
snapshots frozen by the machine that has the volume. Each refusal stands next to the same
request allowed."""

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from hutch.client.errors import Conflict
from tests.controller import Controller, controller, new_project
from tests.helpers.cli import HUTCH, one_clear_line

__all__ = ["controller"]

Run = Callable[..., subprocess.CompletedProcess[str]]
C = ("--runtime", "container")


@pytest.fixture
def project(controller: Controller) -> str:
    return new_project(controller, "mv")


@pytest.fixture
def hutch(controller: Controller, project: str) -> Run:
    env = {**controller.env, "HUTCH_PROJECT": project}

    def run(*args: str, stdin: bytes | None = None) -> Any:
        return subprocess.run(
            [HUTCH, *args], capture_output=True, text=stdin is None, env=env, timeout=180,
            check=False, input=stdin,
        )  # fmt: skip

    return run


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def _fails(r: subprocess.CompletedProcess[str], words: str) -> str:
    assert r.returncode == 125, r.stderr
    line = one_clear_line(r.stderr)
    assert words in line, r.stderr
    return line


def _volume(hutch: Run, name: str) -> dict[str, Any]:
    return json.loads(_ok(hutch("volume", "inspect", name)))  # type: ignore[no-any-return]


def test_a_micro_vm_writes_a_volume_that_outlives_it(hutch: Run) -> None:
    """A micro-VM writes a file to its volume and a snapshot is taken while it runs (frozen by
    its guest agent); it is destroyed while it runs (`hutch rm -f`), and another micro-VM reads
    the file, read-only. The first marked the volume untrusted (root in a guest writes raw
    blocks): a container is refused it, and takes a volume hutch made."""
    _ok(hutch("volume", "create", "data", "--size", "64M"))
    _ok(hutch("volume", "create", "clean", "--size", "64M"))
    script = "echo hello > /data/greeting && sync && echo written && exec sleep 600"
    writer = _ok(hutch("run", "-d", "--name", "writer", "-v", "data:/data", "busybox", "--",
                       "sh", "-c", script)).strip()  # fmt: skip
    _ok(hutch("exec", writer, "--", "sh", "-c", "until [ -s /data/greeting ]; do sleep 0.2; done"))
    shown = _volume(hutch, "data")
    assert (shown["machine"], shown["state"], shown["untrusted"]) == ("writer", "attached", True)
    assert _volume(hutch, "clean")["untrusted"] is False
    machine = json.loads(_ok(hutch("inspect", "writer")))
    assert machine["volumes"] == [
        {"volume": "data", "volume_id": shown["id"], "path": "/data", "read_only": False}
    ]
    took = hutch("volume", "snapshot", "data", "--name", "live")
    assert _ok(took).strip() == "live" and "frozen" in took.stderr
    (snap,) = json.loads(_ok(hutch("volume", "snapshot", "ls", "data", "-o", "json")))
    assert snap["frozen"] is True and snap["untrusted"] is True
    # Destroyed while it runs: its guest freezes the volume first, so that its ext4 journal is
    # clean and a read-only attachment next mounts it (a read-only disk cannot replay a journal:
    # tests/runtime/test_volumes.py kills QEMU outright for that case; `hutch stop` then `rm`,
    # the README's way, is tests/cli/test_readme_runs.py's volume block).
    _ok(hutch("rm", "-f", "writer"))
    shown = _volume(hutch, "data")
    assert (shown["machine"], shown["state"]) == (None, "available")  # the data stays
    # Another micro-VM reads it, read-only: its writes are refused.
    read = hutch("run", "--rm", "-v", "data:/data:ro", "busybox", "--", "sh", "-c",
                 "cat /data/greeting; touch /data/other 2>/dev/null || echo read-only")  # fmt: skip
    assert _ok(read).split() == ["hello", "read-only"]
    # A container: refused the micro-VM's volume, and a fork of its snapshot; given one
    # hutch made.
    _fails(hutch("run", *C, "-v", "data:/data", "busybox", "--", "true"), "micro-VM can take it")
    _ok(hutch("volume", "create", "copy", "--from", "data@live"))
    assert _volume(hutch, "copy")["untrusted"] is True
    _fails(hutch("run", *C, "-v", "copy:/data", "busybox", "--", "true"), "crafted")
    fine = hutch("run", *C, "--rm", "-v", "clean:/data", "busybox", "--", "ls", "/data")
    assert "lost+found" in _ok(fine)


def test_one_machine_at_a_time_and_snapshots_of_an_attached_volume(
    controller: Controller, project: str, hutch: Run
) -> None:
    _ok(hutch("volume", "create", "db", "--size", "64M"))
    _ok(hutch("volume", "create", "spare", "--size", "64M"))
    holder = _ok(hutch("run", "-d", *C, "--name", "holder", "-v", "db:/var/db", "busybox", "--",
                       "sleep", "600")).strip()  # fmt: skip
    _ok(hutch("exec", holder, "--", "sh", "-c", "echo before > /var/db/f && sync"))
    listed = _ok(hutch("volume", "ls"))
    (row,) = [line for line in listed.splitlines() if line.startswith("db ")]
    assert "holder" in row.split() and "attached" in row.split()
    # One machine at a time (read-only too); a detached volume attaches fine.
    line = _fails(hutch("run", "-d", *C, "-v", "db:/data:ro", "busybox", "--", "true"),
                  "volume db is attached to machine holder")  # fmt: skip
    assert "one machine at a time" in line
    with controller.client(project) as client:
        with pytest.raises(Conflict, match="attached to machine holder"):
            client.machines.create("busybox", ["true"], runtime="container",
                                   volumes=[{"volume": "db", "path": "/data"}])  # fmt: skip
        other = client.machines.create(
            "busybox", ["true"], runtime="container", volumes=["spare:/data:ro"], start=False
        )
        assert [(v.volume, v.read_only) for v in other.volumes] == [("spare", True)]
        client.machines.delete(other.id)
    # While attached: no rm, extend or restore, each naming the machine.
    took = hutch("volume", "snapshot", "db", "--name", "s1")
    assert _ok(took).strip() == "s1" and "frozen" in took.stderr
    _ok(hutch("exec", holder, "--", "sh", "-c", "echo after > /var/db/f && sync"))
    for argv in (("rm", "db"), ("extend", "db", "--size", "128M"), ("restore", "db", "s1")):
        _fails(hutch("volume", *argv), "attached to machine holder")
    _ok(hutch("rm", "-f", "holder"))
    _ok(hutch("volume", "restore", "db", "s1"))
    read = hutch("run", *C, "--rm", "-v", "db:/var/db", "busybox", "--", "cat", "/var/db/f")
    assert _ok(read).strip() == "before"  # what was written before the snapshot
    (snap,) = json.loads(_ok(hutch("volume", "snapshot", "ls", "db", "-o", "json")))
    assert snap["frozen"] is True and snap["untrusted"] is False
    _ok(hutch("volume", "rm", "db"))  # detached now


def test_volume_options_and_placement(hutch: Run) -> None:
    _ok(hutch("volume", "create", "db-data", "--size", "64M"))
    node = _volume(hutch, "db-data")["node"]
    for argv, words in (
        (("-v", "db-data"), "needs the path it is mounted at in the machine: db-data:/data"),
        (("-v", "db-data:"), "needs the path it is mounted at in the machine: db-data:/data"),
        (("-v", "db-data:/data:rx"), "after NAME:/PATH comes ro or rw, not 'rx'"),
        (("-v", "/srv/db:/data"), "give a volume of the project by name (hutch volume ls)"),
        (("-v", "./db:/data"), "never mounts a directory of its node"),
        (("-v", "db-data:data"), "volume path 'data' is invalid"),
        (("-v", "db-data:/"), "volume path '/' is invalid"),
        (("-v", "db-data:/a", "-v", "db-data:/b"), "given twice"),
        (("-v", "nope:/data"), "no volume 'nope'"),
    ):
        _fails(hutch("run", *C, *argv, "busybox", "--", "true"), words)
    plan = _ok(hutch("run", "--dry-run", *C, "-v", "db-data:/data", "busybox"))
    assert plan.splitlines()[0] == f"would run on node {node} (volume db-data is on node {node})"
    # Its node cordoned: the machine goes nowhere else, and says why.
    _ok(hutch("node", "cordon", node))
    try:
        r = hutch("run", "--dry-run", *C, "-v", "db-data:/data", "busybox")
        assert r.returncode == 125, r.stderr
        why = f"volume db-data is on node {node}: the machine runs nowhere else"
        assert f"  {node}: node is cordoned ({why})" in r.stdout.splitlines()
    finally:
        _ok(hutch("node", "uncordon", node))
