"""`hutch run --timeout`, `hutch machine extend` end to end: the real binary against the shared
`hutch up` (tests/controller.py), in a project of its own, with containers (the lifetime does
not depend on the runtime; containers start in milliseconds)."""

import json
import threading
import time
from typing import Any

from hutch.cli.machines import _ps_status
from tests.controller import Controller, controller, new_project
from tests.helpers.cli import Hutch

__all__ = ["controller"]  # the session fixture, for the tests here

C = ("--runtime", "container")
# Ends at once on SIGTERM (a plain `sleep` as the first process would ignore it).
WORKLOAD = ("busybox", "--", "sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait")


def test_timeouts_stop_or_destroy_a_machine_and_extend_gives_more_time(
    controller: Controller,
) -> None:
    project = new_project(controller)
    hutch = Hutch({**controller.env, "HUTCH_PROJECT": project})

    def refused(*args: str) -> str:
        r = hutch(*args)
        assert r.returncode == 125, (args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr  # one line that says why
        return r.stderr

    def inspect(ref: str) -> dict[str, Any]:
        r = hutch("inspect", ref)
        assert r.returncode == 0, r.stderr
        shown: dict[str, Any] = json.loads(r.stdout)
        return shown

    # Durations no machine can have are refused before one exists.
    assert "must be positive" in refused("run", "-d", *C, "--timeout", "0", *WORKLOAD)
    assert "must be positive" in refused("run", "-d", *C, "--timeout", "-5m", *WORKLOAD)
    assert "not a duration" in refused("run", "-d", *C, "--timeout", "soon", *WORKLOAD)
    assert "at most 366d" in refused("run", "-d", *C, "--timeout", "1000d", *WORKLOAD)
    assert "say stop, suspend or destroy" in refused(
        "run", "-d", *C, "--timeout", "1m", "--on-timeout", "suspnd", *WORKLOAD
    )
    assert "give --timeout" in refused("run", "-d", *C, "--on-timeout", "destroy", *WORKLOAD)
    why = refused("run", "-d", *C, "--timeout", "1m", "--on-timeout", "suspend", *WORKLOAD)
    assert "container runtime cannot be suspended" in why
    assert hutch("ps", "-aq").stdout == ""

    for name, *options in (
        ("stopper", "--timeout", "2s"),  # stop, the default
        ("goner", "--timeout", "2s", "--on-timeout", "destroy"),
        ("keeper", "--timeout", "1m"),
        ("plain",),  # no timeout
    ):
        r = hutch("run", "-d", *C, "--name", name, *options, *WORKLOAD)
        assert r.returncode == 0, r.stderr

    r = hutch("machine", "extend", "keeper", "1h")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("keeper: 1h") and r.stdout.endswith(" left\n"), r.stdout
    assert "no timeout to extend" in refused("machine", "extend", "plain", "1h")
    assert "must be more than 0" in refused("machine", "extend", "keeper", "1000d")

    # The stopper is stopped (its stop signal: the trap exits 0) once it ran 2 s.
    began = time.monotonic()
    r = hutch("wait", "stopper", "--timeout", "60")
    assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr
    assert time.monotonic() - began < 30
    stopper = inspect("stopper")
    assert (stopper["state"], stopper["desired"], stopper["time_left_s"]) == (
        "exited",
        "stopped",
        0,
    )
    assert "is exited" in refused("machine", "extend", "stopper", "1m")
    with controller.client(project) as client:
        client.machines.wait("goner", "destroyed", timeout=60)
        goner = inspect("goner")
        wanted = {
            (stopper["id"], "timed out after 2s: stopped"),
            (goner["id"], "timed out after 2s: destroyed"),
        }

        def listen() -> None:  # every event so far, then it would wait for more
            for event in client.events():
                wanted.discard((event.object, event.message))
                if not wanted:
                    return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        listener.join(30)
    assert not wanted, "no event said why"

    # `ps` shows the time left of those that have one.
    rows = {line.split()[1]: line for line in hutch("ps").stdout.splitlines()[1:]}
    assert "running (1h" in rows["keeper"] and " left)" in rows["keeper"], rows
    assert "left" not in rows["plain"] and "left" not in rows["stopper"], rows
    keeper = inspect("keeper")
    assert keeper["timeout_s"] == 60 and keeper["extended_s"] == 3600
    assert keeper["state"] == "running" and keeper["expires_at"].endswith("Z")
    assert hutch("rm", "-f", "keeper", "plain", "stopper").returncode == 0


def test_ps_says_a_machine_ran_its_whole_timeout() -> None:
    """A machine suspended at its timeout has none left: `ps` says it timed out (a resume is
    refused until it is extended), not "0s left"."""
    seen = {"state": "suspended", "exit_code": None, "error": "", "idled": False}
    assert _ps_status({**seen, "time_left_s": 0}) == "suspended (timed out)"
    assert _ps_status({**seen, "time_left_s": 59.2}) == "suspended (1m left)"
    assert _ps_status({**seen, "time_left_s": None}) == "suspended"
