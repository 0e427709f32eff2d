"""`hutch run --restart on-failure` end to end: the real binary against a real `hutch up`
(tests/controller.py), in a project of its own."""

import json
import time
from typing import Any

from tests.controller import Controller, controller, new_project
from tests.helpers.cli import Hutch

__all__ = ["controller"]  # the session fixture, for the tests here

C = ("--runtime", "container")  # the policy does not depend on the runtime
PATIENCE = 120.0  # seconds before giving up on a restart (backoffs: 1 s, then 2 s)


def test_on_failure_restarts_a_workload_that_fails_and_not_one_that_succeeds(
    controller: Controller,
) -> None:
    hutch = Hutch({**controller.env, "HUTCH_PROJECT": new_project(controller)})

    def inspect(ref: str) -> dict[str, Any]:
        shown = hutch("inspect", ref)
        assert shown.returncode == 0, shown.stderr
        machine: dict[str, Any] = json.loads(shown.stdout)
        return machine

    for name, script in (("flaky", "exit 3"), ("fine", "exit 0")):
        r = hutch("run", "-d", *C, "--restart", "on-failure", "--name", name, "busybox",
                  "--", "sh", "-c", script)  # fmt: skip
        assert r.returncode == 0, r.stderr

    # Exit 0 ends it: the restart decision is taken with the exit's record, so once it shows
    # exited it stays so.
    r = hutch("wait", "fine", "--timeout", "60")
    assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr
    fine = inspect("fine")
    assert (fine["state"], fine["exit_code"], fine["restarts"]) == ("exited", 0, 0)

    # Exit 3 restarts it, again and again, each after its backoff; the restart is taken with
    # the exit's record, so it never shows ended.
    deadline = time.monotonic() + PATIENCE
    seen = []
    while (flaky := inspect("flaky"))["restarts"] < 2:
        assert flaky["state"] not in ("exited", "failed"), flaky
        seen.append(flaky["restarts"])
        assert time.monotonic() < deadline, f"not restarted twice in {PATIENCE:g} s: {flaky}"
        time.sleep(0.2)
    assert seen == sorted(seen)  # the count only grows
    assert inspect("fine")["restarts"] == 0  # meanwhile, the one that succeeded stayed ended
    r = hutch("rm", "-f", "flaky", "fine")
    assert r.returncode == 0, r.stderr
