"""A machine's metric history through the SDK, sync and async alike, on the shared `hutch up`
(tests/controller.py, sampling every second): a container machine's samples arrive; another
project's client finds no such machine, next to the owner's succeeding."""

import time

import pytest

from hutch.client import AsyncClient, Client, NotFound
from tests.controller import Controller, new_project


async def test_a_machines_history_in_its_project_only(
    client: Client, aclient: AsyncClient, controller: Controller
) -> None:
    m = client.machines.create("busybox", ["sleep", "600"], runtime="container", name="hist")
    deadline = time.monotonic() + 60
    while len((history := client.machines.metrics(m)).points) < 2:
        assert time.monotonic() < deadline, history
        time.sleep(0.5)
    assert (history.machine, history.name) == (m.id, "hist")
    first, last = history.points[0], history.points[-1]
    assert last.time > first.time and last.running_s > first.running_s
    assert last.memory_limit_bytes == 128 << 20 and last.vcpus == 1
    got = await aclient.machines.metrics("hist", since=first.time, step=60)
    assert got.step == 60 and got.points and got.points[-1].time >= first.time
    other = controller.client(new_project(controller, "atk"))
    with other, pytest.raises(NotFound, match="no machine"):
        other.machines.metrics(m.id)
    client.machines.delete(m, force=True)
