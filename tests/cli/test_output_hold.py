"""A machine's output is held for a first follower only when a client says it will follow
(`hold_output`: an attached `hutch run`, the SDK's `machines.run`). A detached machine (`hutch
run -d`, the SDK's `create`) that writes more than its log ring before anyone reads is not held
up for a follower that never comes: it runs to its end, and its reader is told how many bytes
the ring dropped. Against a `hutch up` of this module's own whose `log_hold` (60 s) outlasts
every wait here: a held detached machine would not end within them."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.client import log_bytes
from tests.controller import Controller, new_project, running_controller
from tests.helpers.cli import Hutch

RING = 64 << 10  # log_max_bytes: what a machine nobody reads keeps
HOLD = 60.0  # log_hold: far beyond WAIT
WAIT = 30.0  # seconds a detached machine gets to end (it needs about one)
LINES = 100_000  # `seq 1 LINES`: 589 KB, nine rings
LOST = re.compile(rb"hutch: (\d+) bytes of stdout were lost")


def seq(n: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, n + 1))


@pytest.fixture(scope="module")
def ctl(busybox_rootfs: Path) -> Iterator[Controller]:
    settings = {"HUTCH_LOG_MAX_BYTES": str(RING), "HUTCH_LOG_HOLD": str(HOLD)}
    with running_controller(busybox_rootfs, settings) as c:
        yield c


@pytest.fixture
def project(ctl: Controller) -> str:
    return new_project(ctl)


@pytest.fixture
def hutch(ctl: Controller, project: str) -> Hutch:
    return Hutch({**ctl.env, "HUTCH_PROJECT": project})


def test_a_detached_run_is_not_held_and_its_reader_is_told_what_the_ring_dropped(
    hutch: Hutch,
) -> None:
    started = hutch.raw("run", "-d", "--runtime", "container", "--name", "flood", "busybox",
                        "--", "sh", "-c", f"seq 1 {LINES}")  # fmt: skip
    assert started.returncode == 0, started.stderr
    # Held, it would wait HOLD seconds for a follower: `wait` would give up first.
    ended = hutch.raw("wait", "--timeout", str(WAIT), "flood", timeout=WAIT + 30)
    assert (ended.returncode, ended.stdout) == (0, b"0\n"), ended.stderr
    assert json.loads(hutch.raw("inspect", "flood").stdout)["hold_output"] is False
    expected = seq(LINES)
    for args in (("logs", "flood"), ("logs", "-f", "flood")):
        shown = hutch.raw(*args, timeout=60)
        assert shown.returncode == 0, shown.stderr
        [lost] = LOST.findall(shown.stderr)
        assert 0 < int(lost) < len(expected)
        assert shown.stdout == expected[int(lost) :]  # the rest, whole


def test_an_attached_run_through_the_same_small_ring_gets_every_byte(hutch: Hutch) -> None:
    result = hutch.raw("run", "--rm", "--runtime", "container", "busybox",
                       "--", "sh", "-c", f"seq 1 {LINES}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == seq(LINES)
    assert not LOST.search(result.stderr)


def test_the_sdk_holds_for_run_and_not_for_create(ctl: Controller, project: str) -> None:
    command = ["sh", "-c", f"seq 1 {LINES}"]
    with ctl.client(project) as client:
        # create, nobody following: it ends, and the log says what it dropped
        m = client.machines.create("busybox", command, runtime="container")
        m = client.machines.wait(m, timeout=WAIT)  # held, it would still run
        assert (m.state, m.exit_code, m.hold_output) == ("exited", 0, False)
        lines = list(client.machines.logs(m))
        skipped = sum(line.skipped for line in lines)
        assert 0 < skipped < len(seq(LINES))
        assert b"".join(log_bytes(line) for line in lines) == seq(LINES)[skipped:]
        # run, then follow: every byte
        m = client.machines.run("busybox", command, runtime="container")
        assert m.hold_output is True
        lines = list(client.machines.logs(m, follow=True))
        assert sum(line.skipped for line in lines) == 0
        assert b"".join(log_bytes(line) for line in lines) == seq(LINES)
