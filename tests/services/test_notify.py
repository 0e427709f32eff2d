"""Who is woken by a change to a machine."""

from dataclasses import replace

from hutch.model.machine import Desired, MachineState
from hutch.services.notify import SCHEDULER, keys_of
from tests.store import factories as f


def test_the_scheduler_wakes_for_machines_to_place_and_for_shares_given_back() -> None:
    waiting = f.machine("p-1")
    assert keys_of(waiting) == [f"machine:{waiting.id}", "project:p-1", SCHEDULER]
    running = replace(waiting, node_id="n-1", state=MachineState.RUNNING)
    assert keys_of(running) == [f"machine:{waiting.id}", "project:p-1", "node:n-1"]
    ended = replace(running, state=MachineState.EXITED)  # its node has room again
    assert keys_of(ended) == [f"machine:{waiting.id}", "project:p-1", "node:n-1", SCHEDULER]
    stopped = replace(waiting, desired=Desired.STOPPED)  # created, not to run: nothing to place
    assert SCHEDULER not in keys_of(stopped)
