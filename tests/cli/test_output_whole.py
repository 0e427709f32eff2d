"""Output is never lost: an attached `hutch run` and `hutch logs -f` get every byte, in order,
with stdout and stderr apart (the workload waits for them, as with a pipe); where a log must drop
(nobody reads a machine that writes more than its bound), the reader is told how many bytes are
missing. Through the real binary against a real `hutch up` (tests/controller.py)."""

import os
import re
import subprocess
import time

import pytest

from tests.controller import Controller, controller, new_project
from tests.helpers.cli import Hutch

__all__ = ["controller"]  # the session fixture, for the tests here

# Sizes through an attached run: 50 MB through a container; micro-VMs run under TCG here,
# where the guest itself writes a few MB/s, so they carry less (bench/logs.py has 50 MB).
OUT_LINES = {"container": 6_500_000, "microvm": 4_000_000}  # `seq 1 N`: ~50.8 MB and ~30.9 MB
ERR_LINES = {"container": 200_000, "microvm": 20_000}
LOST = re.compile(rb"hutch: (\d+) bytes of (stdout|stderr) were lost")


def seq(n: int, start: int = 1) -> bytes:
    return b"".join(b"%d\n" % i for i in range(start, n + 1))


def run(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    return Hutch(env).raw(*args, timeout=timeout)


@pytest.fixture
def env(controller: Controller) -> dict[str, str]:
    return {**controller.env, "HUTCH_PROJECT": new_project(controller)}


@pytest.mark.parametrize("runtime", ["container", "microvm"])
def test_an_attached_run_gets_every_byte_of_both_streams_in_order(
    env: dict[str, str], runtime: str
) -> None:
    out, err = OUT_LINES[runtime], ERR_LINES[runtime]
    script = f"seq 1 {err} >&2 & seq 1 {out}; wait"
    result = run(env, "run", "--rm", "--runtime", runtime, "busybox", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = seq(out)
    assert len(result.stdout) == len(expected)
    assert result.stdout == expected
    assert result.stderr == seq(err)


def test_a_log_that_dropped_says_how_many_bytes_are_missing(env: dict[str, str]) -> None:
    # 3.5 MB through the default 1 MiB ring, nobody reading: the oldest part is gone.
    started = run(env, "run", "-d", "--runtime", "container", "--name", "flood", "busybox",
                  "--", "sh", "-c", "seq 1 500000")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert run(env, "wait", "flood").stdout == b"0\n"
    expected = seq(500_000)
    for args in (("logs", "flood"), ("logs", "-f", "flood")):
        shown = run(env, *args, timeout=60)
        assert shown.returncode == 0, shown.stderr
        [lost] = LOST.findall(shown.stderr)
        assert lost[1] == b"stdout"
        assert 0 < int(lost[0]) < len(expected)
        # exactly the bytes that are missing: what is shown is the rest, whole
        assert shown.stdout == expected[int(lost[0]) :]
    tail = run(env, "logs", "-n", "2", "flood")  # --tail counts lines, not chunks
    assert (tail.stdout, tail.stderr) == (b"499999\n500000\n", b"")
    run(env, "rm", "flood")


def test_logs_follow_gets_everything_from_where_it_joins(env: dict[str, str]) -> None:
    # A detached machine writes far more than its ring before anyone reads (nothing waits for
    # a follower: the oldest part is dropped), then, once `hutch logs -f` has read up to there,
    # three times as much: what the follower shows after the part that was gone is every later byte,
    # in order, the second part whole.
    first, n = 500_000, 2_000_000
    script = f"seq 1 {first}; until [ -e /tmp/go ]; do sleep 0.1; done; seq {first + 1} {n}"
    started = run(env, "run", "-d", "--runtime", "container", "--name", "gush", "busybox",
                  "--", "sh", "-c", script)  # fmt: skip
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 120
    while run(env, "logs", "-n", "1", "gush").stdout != b"%d\n" % first:  # the first part is out
        assert time.monotonic() < deadline, "the first part was not written in 120 s"
        time.sleep(0.2)
    follower = Hutch(env).start("logs", "-f", "gush", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert follower.stdout is not None
        got = b""
        while not got.endswith(b"\n%d\n" % first):  # it has read the first part's end
            chunk = os.read(follower.stdout.fileno(), 1 << 16)
            assert chunk, follower.stderr.read() if follower.stderr else b""
            got += chunk
        assert run(env, "exec", "gush", "--", "touch", "/tmp/go").returncode == 0
        rest, err = follower.communicate(timeout=120)
    finally:
        follower.kill()
        follower.wait()
    assert follower.returncode == 0, err
    shown = got + rest
    expected = seq(n)
    lost = LOST.findall(err)
    skipped = int(lost[0][0]) if lost else 0
    assert skipped > 0  # the first part outgrew the ring, unread
    assert shown == expected[skipped:]
    run(env, "rm", "gush")


def test_bytes_that_are_not_utf8_survive_in_chunks(env: dict[str, str]) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do printf 'caf\\351 %d\\n' $i; i=$((i+1)); done"
    result = run(env, "run", "--rm", "--runtime", "container", "busybox", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(b"caf\xe9 %d\n" % i for i in range(2000))
