"""Machines' timeouts over the real store (SQLite and PostgreSQL), as the leader acts on them
(`Machines.time_out`): the deadline is in the store, so a controller that was down when it
passed acts on it once it is back, once, with an event that says why."""

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from hutch import config
from hutch.controller import Controller, build_controller
from hutch.model.machine import Desired, MachineState, OnTimeout, Report
from tests.store import factories as f
from tests.store.postgres import postgres, postgres_url

__all__ = ["postgres", "postgres_url"]  # fixtures, imported for pytest

S = MachineState


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> config.Settings:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    return config.load(
        state_dir=tmp_path, database_url=url, join_secret="j" * 32, controller_secret="c" * 32
    )


@pytest.fixture
async def opened() -> AsyncIterator[list[Controller]]:
    """Controllers a test builds, closed at its end."""
    built: list[Controller] = []
    yield built
    for ctl in built:
        await ctl.link.close()
        await ctl.store.close()


async def _controller(settings: config.Settings, opened: list[Controller]) -> Controller:
    ctl = build_controller(settings)
    await ctl.store.open()
    opened.append(ctl)
    return ctl


@pytest.mark.parametrize(
    ("action", "state", "desired"),
    [
        (OnTimeout.STOP, S.STOPPING, Desired.STOPPED),
        (OnTimeout.DESTROY, S.STOPPING, Desired.DESTROYED),
        # Still running until its node reports it suspended (and its clock stops then).
        (OnTimeout.SUSPEND, S.RUNNING, Desired.SUSPENDED),
    ],
)
async def test_a_timeout_that_passed_while_the_controller_was_down_is_acted_on_once(
    settings: config.Settings,
    opened: list[Controller],
    action: OnTimeout,
    state: MachineState,
    desired: Desired,
) -> None:
    first = await _controller(settings, opened)
    p, node = f.project(), f.node()
    m = f.machine(p.id, timeout_s=2.0, on_timeout=action, state=S.STARTING, node_id=node.id)
    m = replace(m, generation=1)
    async with first.store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(node, "credential-hash")
        await tx.machines.create(m)
    began = time.time()
    running = await first.machines.report(node, m.id, Report(1, S.RUNNING, began))
    assert running.expires_at is not None
    assert began + 2.0 <= running.expires_at <= time.time() + 2.0
    assert await first.machines.time_out(time.time()) == 0  # not yet
    await first.store.close()  # the controller goes down; the machine runs on its node

    again = await _controller(settings, opened)  # back 3 s later: its time is up
    async with again.store.read() as tx:
        revision = await tx.nodes.revision(node.id)
    assert await again.machines.time_out(time.time() + 3.0) == 1
    assert await again.machines.time_out(time.time() + 3.0) == 0  # acted on once
    async with again.store.read() as tx:
        got = await tx.machines.by_id(m.id)
        events = await tx.events.since(p.id, 0)
        told = await tx.nodes.revision(node.id)
    assert (got.state, got.desired) == (state, desired)
    assert events[-1].message == f"timed out after 2s: {action.done}"
    assert told > revision  # its node hears of it
