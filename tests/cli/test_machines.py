"""`hutch run`, `ps`, `logs`, `exec`, `stop`, `rm`, `wait`, `inspect`, through the real binary
against a real `hutch up` (tests/controller.py), each test in a project of its own."""

import contextlib
import ctypes
import json
import os
import re
import signal
import struct
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from hutch.cli.remote import data
from tests.controller import (
    BUSYBOX_CONFIG,
    Controller,
    controller,
    new_project,
    registry_with_app,
)
from tests.helpers.cli import Hutch, one_clear_line
from tests.images.ocibuild import write_oci_layout

__all__ = ["controller"]  # the session fixture, for the tests here

IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10
C = ("--runtime", "container")  # where the runtime does not matter


@pytest.fixture
def env(controller: Controller) -> dict[str, str]:
    """The controller's `local` context, acting in a fresh project."""
    return {**controller.env, "HUTCH_PROJECT": new_project(controller)}


@pytest.fixture
def hutch(env: dict[str, str]) -> Hutch:
    return Hutch(env)


def test_ps_reads_the_listing_without_the_sdks_models(
    hutch: Hutch, env: dict[str, str], controller: Controller
) -> None:
    """`hutch ps` (its table, its ids, its JSON) prints what the SDK's models would, and loads
    neither them nor YAML, asyncio, websockets or rich (bench/cli.py: the CLI answers at once)."""
    hutch("run", "-d", *C, "--name", "one", "--label", "app=web", "busybox", "--", "true")
    assert hutch("wait", "one").stdout == "0\n"
    listed = json.loads(hutch("ps", "-o", "json").stdout)
    with controller.client(env["HUTCH_PROJECT"]) as client:  # as the SDK's models give them
        assert listed == [data(m) for m in client.machines.list()]
    for args in (
        ("ps",), ("ps", "-a", "--state", "exited", "-l", "app=web"), ("ps", "-q"),
        ("ps", "-o", "json"),
    ):  # fmt: skip
        done, modules = hutch.imports(*args)
        assert done.returncode == 0, done.stderr
        assert "hutch.client.plain" in modules
        slow = ("pydantic", "hutch.wire", "yaml", "asyncio", "websockets", "rich")
        assert not {m for m in modules if m.startswith(slow)}, args
        if args == ("ps", "-q"):
            assert done.stdout.split() == [listed[0]["id"]]
        elif args == ("ps", "-o", "json"):
            assert json.loads(done.stdout) == listed
        else:
            header, row = done.stdout.splitlines()
            assert header.split() == [
                "ID",
                "NAME",
                "IMAGE",
                "RUNTIME",
                "STATUS",
                "ADDRESS",
                "PORTS",
                "CREATED",
            ]
            assert row.split()[:6] == [
                listed[0]["id"],
                "one",
                "busybox",
                "container",
                "exited",
                "(0)",
            ]
    assert hutch("ps", "--state", "running").stdout.split() == header.split()


def test_run_prints_the_output_and_exits_0(hutch: Hutch) -> None:
    result = hutch("run", "busybox", "--", "echo", "hi")  # the default runtime: a micro-VM
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
    [machine] = json.loads(hutch("ps", "-o", "json").stdout)
    assert machine["runtime"] == "microvm" and machine["state"] == "exited"


def test_run_keeps_streams_apart_and_passes_the_exit_code(hutch: Hutch) -> None:
    result = hutch(
        "run",
        "--rm",
        *C,
        "--name",
        "job",
        "-e",
        "WHO=you",
        "-w",
        "/tmp",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo $WHO in $(pwd); echo err >&2; exit 7",
    )
    assert result.returncode == 7
    assert (result.stdout, result.stderr) == ("you in /tmp\n", "err\n")
    assert "job" not in hutch("ps").stdout  # --rm: destroyed once it ended


def test_run_detached_then_ps_logs_exec_stop_wait_rm(hutch: Hutch) -> None:
    started = hutch(
        "run",
        "-d",
        *C,
        "--name",
        "web",
        "-l",
        "app=web",
        "-m",
        "64M",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    )
    assert started.returncode == 0, started.stderr
    machine_id = started.stdout.strip()
    assert machine_id.startswith("m-") and "\n" not in machine_id
    table = hutch("ps").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "NAME",
        "IMAGE",
        "RUNTIME",
        "STATUS",
        "ADDRESS",
        "PORTS",
        "CREATED",
    ]
    assert table[1].split()[:4] == [machine_id, "web", "busybox", "container"]
    assert hutch("ps", "-q").stdout == machine_id + "\n"
    assert hutch("ps", "-q", "--label", "app=other").stdout == ""
    [listed] = yaml.safe_load(hutch("ps", "-o", "yaml").stdout)
    assert (listed["memory_mib"], listed["labels"]) == (64, {"app": "web"})
    for _ in range(50):  # `run -d` returns before the machine runs
        if hutch("logs", "web").stdout:
            break
        time.sleep(0.1)
    assert hutch("logs", "web").stdout == "ready\n"
    echoed = hutch("exec", "-i", "web", "--", "sh", "-c", "cat; exit 3", input="piped\n")
    assert (echoed.returncode, echoed.stdout) == (3, "piped\n")
    refused = hutch("rm", "web")
    assert refused.returncode == 125 and "force" in one_clear_line(refused.stderr)
    assert json.loads(hutch("inspect", "web").stdout)["id"] == machine_id
    assert hutch("stop", "-t", "2", "web").stdout == "web\n"
    assert hutch("wait", "web").stdout == "143\n"
    assert hutch("rm", "web").stdout == "web\n"
    assert hutch("ps", "-q").stdout == ""
    assert machine_id in hutch("ps", "-a", "-q").stdout


def test_an_exec_sent_as_a_machine_boots_waits_for_it(
    hutch: Hutch, controller: Controller, env: dict[str, str]
) -> None:
    """A create returns before its micro-VM has booted: an exec sent at once (from the SDK, or
    the dashboard's shell opened while the page shows it starting) waits for it to run, where
    it was refused. One that has ended is refused at once, saying why."""
    with controller.client(env["HUTCH_PROJECT"]) as client:
        m = client.machines.create("busybox", ["sleep", "600"], name="early")
        try:
            assert m.state in ("created", "starting")
            said = client.machines.exec(m, ["echo", "in"])
            assert (said.exit_code, said.stdout) == (0, b"in\n")
        finally:
            client.machines.delete(m, force=True)
    assert hutch("run", "-d", "--name", "ended", *C, "busybox", "--", "true").returncode == 0
    assert hutch("wait", "ended").stdout == "0\n"
    for _ in range(4):  # with stdin too: its thread's write into the refused session once
        refused = hutch("exec", "-i", "ended", "--", "sort", input="b\na\n")  # raised
        assert (
            refused.returncode == 125
            and "exited, not running: start it first" in one_clear_line(refused.stderr)
        )
    hutch("rm", "ended")


def test_logs_tail_and_rm_force(hutch: Hutch) -> None:
    script = "echo 1; sleep 0.1; printf '2\\n3\\n'"  # the last write holds two lines
    hutch("run", *C, "--name", "counter", "busybox", "--", "sh", "-c", script)
    assert hutch("logs", "-n", "1", "counter").stdout == "3\n"
    assert hutch("logs", "-f", "counter").stdout == "1\n2\n3\n"
    hutch("run", "-d", *C, "--name", "sleeper", "busybox", "--", "sleep", "600")
    forced = hutch("rm", "-f", "sleeper", "counter")
    assert forced.returncode == 0 and forced.stdout == "sleeper\ncounter\n"


def _log_opens(sandbox_dir: Path, run: Callable[[], object]) -> int:
    """How often the sandbox's log files are opened while `run` runs (inotify)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0
    try:
        # Opens and closes both: inotify merges an event only into an identical one before it.
        assert libc.inotify_add_watch(fd, bytes(sandbox_dir), IN_OPEN | IN_CLOSE_NOWRITE) >= 0
        run()
        events = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 1 << 16):
                events += chunk
    finally:
        os.close(fd)
    opens, at = 0, 0
    while at < len(events):
        _, mask, _, size = struct.unpack_from("iIII", events, at)
        name = events[at + 16 : at + 16 + size].rstrip(b"\0")
        opens += bool(mask & IN_OPEN) and name.startswith(b"stdio.log")
        at += 16 + size
    return opens


def test_logs_tail_reads_the_log_once(hutch: Hutch, controller: Controller) -> None:
    """--tail costs what a whole log costs: one pass over it, not one to count the lines and
    another to send them (which a rotation in between would also cut wrong)."""
    script = "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done"
    sandboxes = controller.state_dir / "node" / "sandboxes" / "container"
    before = set(sandboxes.iterdir())
    done = hutch("run", *C, "--name", "lines", "busybox", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    [sandbox_dir] = set(sandboxes.iterdir()) - before
    results: list[subprocess.CompletedProcess[str]] = []
    whole = _log_opens(sandbox_dir, lambda: results.append(hutch("logs", "lines")))
    tail = _log_opens(sandbox_dir, lambda: results.append(hutch("logs", "-n", "2", "lines")))
    assert results[0].stdout.count("\n") == 200
    assert results[1].stdout == "line 198\nline 199\n"
    assert 0 < tail <= whole
    hutch("rm", "lines")


def test_ctrl_c_stops_the_machine(env: dict[str, str], hutch: Hutch) -> None:
    attached = hutch.start(
        "run", *C, "--name", "long", "busybox", "--", "sh", "-c", "echo up; exec sleep 600",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert attached.stdout is not None and attached.stdout.readline() == "up\n"
    attached.send_signal(signal.SIGINT)
    _, err = attached.communicate(timeout=60)
    assert attached.returncode == 128 + signal.SIGTERM  # sleep ended by the graceful stop
    assert "stopping long" in err
    assert "exited (143)" in hutch("ps").stdout


def test_refusals_are_one_clear_line(hutch: Hutch, env: dict[str, str]) -> None:
    for args, expected in [
        (("run", "-m", "lots", "busybox"), "'lots' is not a size"),
        (("run", "-e", "NOEQUALS", "busybox"), "--env 'NOEQUALS' is not KEY=VALUE"),
        (("run", "-e", "=v", "busybox"), "--env '=v' is not KEY=VALUE"),
        (("run", "--runtime", "qemu", "busybox"), "runtime"),
        (("ps", "-o", "xml"), "unknown output format 'xml'"),
        (("ps", "--state", "Running"), "--state 'Running': say created, starting"),
        (("exec", "nothing"), "give the command to run"),
        (("logs", "nothing"), "no machine 'nothing'"),
        (("wait", "nothing"), "no machine 'nothing'"),
    ]:
        result = hutch(*args)
        assert result.returncode == 125, (args, result.stderr)
        assert one_clear_line(result.stderr).startswith("hutch: ")
        assert expected in result.stderr


def test_a_bad_token_is_one_clear_line(env: dict[str, str], controller: Controller) -> None:
    bad = {**env, "HUTCH_URL": controller.url, "HUTCH_TOKEN": "not-a-token"}
    result = Hutch(bad)("ps")
    assert result.returncode == 125
    assert one_clear_line(result.stderr) == "hutch: unknown token"


def test_a_command_that_cannot_start_is_127(hutch: Hutch) -> None:
    result = hutch("run", *C, "busybox", "--", "/no/such/program")
    assert result.returncode == 127, result.stderr
    assert "/no/such/program" in one_clear_line(result.stderr)


def test_a_machine_that_fails_exits_125_saying_why(hutch: Hutch, controller: Controller) -> None:
    registry = f"127.0.0.1:{controller.registry_port}"  # configured, and down
    result = hutch("run", *C, f"{registry}/missing:1")  # its node cannot pull it
    assert result.returncode == 125
    line = one_clear_line(result.stderr)
    assert f"failed: cannot pull {registry}/missing:1: cannot reach registry {registry}" in line


def test_a_machine_from_an_unlisted_registry_is_refused_at_once(hutch: Hutch) -> None:
    result = hutch("run", *C, "127.0.0.1:9/missing:1")
    assert result.returncode == 125
    line = one_clear_line(result.stderr)
    assert "registry 127.0.0.1:9 is not allowed" in line and "registry_allow" in line


def test_images_and_nodes_through_the_controller(
    hutch: Hutch, env: dict[str, str], tmp_path: Path, busybox_rootfs: Path
) -> None:
    table = hutch("image", "ls")
    assert table.returncode == 0 and "busybox:latest" in table.stdout
    [busybox] = json.loads(hutch("image", "ls", "-o", "json").stdout)
    assert busybox["public"] and busybox["id"].startswith("sha256:")
    assert json.loads(hutch("image", "inspect", "busybox").stdout)["id"] == busybox["id"]
    write_oci_layout(tmp_path / "app", [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", "app"]})
    with tarfile.open(tmp_path / "app.tar", "w") as tar:  # an OCI archive, piped to stdin
        for child in sorted((tmp_path / "app").iterdir()):
            tar.add(child, arcname=child.name)
    with (tmp_path / "app.tar").open("rb") as archive:
        imported = hutch("image", "import", "-", "--name", "app:1", stdin=archive)
    assert imported.returncode == 0 and imported.stdout.startswith("sha256:"), imported.stderr
    assert "app:1" in hutch("image", "ls").stdout
    assert hutch("run", "--rm", *C, "app:1").stdout == "app\n"  # --rm: it holds no image
    # The node's own store, read directly: the project's image is there under the project's id
    # (names are kept by id there), like the catalogue's; its name alone is the host's own.
    projects = json.loads(hutch("project", "ls", "-o", "json").stdout)
    [project_id] = [p["id"] for p in projects if p["name"] == env["HUTCH_PROJECT"]]
    assert "app:1" in hutch("image", "ls", "--local", "--project", project_id).stdout
    assert "app:1" not in hutch("image", "ls", "--local", "--project", env["HUTCH_PROJECT"]).stdout
    assert hutch("image", "rm", "app:1").stdout == imported.stdout
    assert "app:1" not in hutch("image", "ls").stdout
    nodes = hutch("node", "ls")
    assert nodes.returncode == 0 and "ready" in nodes.stdout
    assert json.loads(hutch("node", "ls", "-o", "json").stdout)[0]["accel"] in ("kvm", "tcg")


def test_image_pull_through_the_controller(
    hutch: Hutch, controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with registry_with_app(controller, tmp_path, busybox_rootfs) as ref:
        pulled = hutch("image", "pull", ref)
    assert pulled.returncode == 0 and pulled.stdout.startswith("sha256:"), pulled.stderr
    assert f"pulled {ref}" in pulled.stderr and "layer" in pulled.stderr  # progress
    assert hutch("run", "--rm", *C, ref).stdout == "app\n"
    refused = hutch("image", "pull", "--username", "u", ref)
    assert refused.returncode == 125 and "--local" in one_clear_line(refused.stderr)


def test_too_little_memory_is_refused_before_a_machine_exists(hutch: Hutch) -> None:
    for runtime, least in (("microvm", 96), ("container", 16)):
        too_little = hutch("run", "--runtime", runtime, "-m", f"{least - 1}M", "busybox", "true")
        assert too_little.returncode == 125
        line = one_clear_line(too_little.stderr)
        assert f"memory {least - 1} MiB is too little" in line and f"at least {least} MiB" in line
        detached = hutch("run", "-d", "--runtime", runtime, "-m", f"{least - 1}M", "busybox")
        assert detached.returncode == 125 and "too little" in one_clear_line(detached.stderr)
    assert hutch("ps", "-a", "-q").stdout == ""  # no failed machine left behind
    ran = hutch("run", *C, "-m", "16M", "busybox", "--", "echo", "ok")  # at the least: runs
    assert (ran.returncode, ran.stdout) == (0, "ok\n"), ran.stderr


def test_ps_is_newest_first_with_times_for_people_and_scripts(
    hutch: Hutch, controller: Controller
) -> None:
    registry = f"127.0.0.1:{controller.registry_port}"  # configured, and down: they fail
    ref = f"{registry}/{'a-long-repository-name/' * 4}missing:1"
    for name in ("older", "newer"):
        assert hutch("run", "-d", *C, "--name", name, ref).returncode == 0
        hutch("wait", name)
    listed = json.loads(hutch("ps", "-o", "json").stdout)
    assert [m["name"] for m in listed] == ["newer", "older"]
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    for key in ("created_at", "finished_at"):
        assert iso.fullmatch(listed[0][key]), listed[0]
    assert (
        yaml.safe_load(hutch("ps", "-o", "yaml").stdout)[1]["created_at"] == listed[1]["created_at"]
    )
    assert iso.fullmatch(json.loads(hutch("inspect", "older").stdout)["created_at"])
    # The table: newest first, times for people, the long reason cut; `inspect` has it whole.
    _, newer, older = hutch("ps").stdout.splitlines()
    assert "newer" in newer and "older" in older
    assert "just now" in newer or "seconds ago" in newer
    [error] = {m["error"] for m in listed}
    assert len(error) > 60 and error not in newer and "…" in newer
    assert json.loads(hutch("inspect", "newer").stdout)["error"] == error


def test_image_rm_local_keeps_the_root_a_machine_runs_on(
    hutch: Hutch, env: dict[str, str], tmp_path: Path, busybox_rootfs: Path
) -> None:
    """`hutch image rm --local` looks at the node agent's sandboxes (not only `hutch sandbox`'s):
    the root a machine runs on stays, and the machine with it."""
    write_oci_layout(
        tmp_path / "held", [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["sleep", "600"]}
    )
    assert hutch("image", "import", str(tmp_path / "held"), "--name", "held:1").returncode == 0
    started = hutch("run", "-d", *C, "held:1")
    assert started.returncode == 0, started.stderr
    machine = started.stdout.strip()
    projects = json.loads(hutch("project", "ls", "-o", "json").stdout)
    [project_id] = [p["id"] for p in projects if p["name"] == env["HUTCH_PROJECT"]]
    removed = hutch("image", "rm", "--local", "--project", project_id, "held:1")
    assert removed.returncode == 0, removed.stderr
    assert "its root stays: a sandbox runs on it" in removed.stderr
    assert hutch("exec", machine, "--", "ls", "/bin/busybox").stdout == "/bin/busybox\n"
    assert hutch("rm", "-f", machine).returncode == 0
