"""Machines' timeouts over the real store (SQLite and PostgreSQL), as the leader acts on them
(`Machines.time_out`): the deadline is in the store, so a controller that was down when it
passed acts on it once it is back, once, with an event that says why."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from hutch import config
from hutch.controller import Controller, build_controller
from hutch.model.errors import Conflict, NotFound
from hutch.model.machine import Desired, Machine, MachineState, OnIdle, OnTimeout, Report
from hutch.model.tenancy import Principal, Role
from hutch.placement import need
from hutch.services.machines import request_of
from tests.store import factories as f
from tests.store.at_head import controller_db_at_head

S = MachineState


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> config.Settings:
    url = controller_db_at_head(request, request.param, tmp_path)
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


async def test_suspended_time_does_not_count_and_a_failed_suspend_at_the_timeout_stops(
    settings: config.Settings, opened: list[Controller]
) -> None:
    ctl = await _controller(settings, opened)
    p, node = f.project(), f.node()
    m = f.machine(p.id, timeout_s=1.0, on_timeout=OnTimeout.SUSPEND, state=S.STARTING)
    m = replace(m, generation=1, node_id=node.id)
    node = replace(node, allocated=need(request_of(m.spec), node))  # it holds its share
    async with ctl.store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(node, "credential-hash")
        await tx.machines.create(m)
    member = Principal("t-1", p.id, Role.MEMBER)

    async def said(state: MachineState, resumed: bool = False, error: str = "") -> Machine:
        report = Report(1, state, time.time(), error=error, resumed=resumed)
        return await ctl.machines.report(node, m.id, report)

    ran_from = time.time()
    await said(S.RUNNING)
    await asyncio.sleep(0.3)  # it runs 0.3 s of its 1 s (more on a loaded machine)
    await ctl.machines.suspend(member, p, m.id)
    suspended = await said(S.SUSPENDED)
    ran = time.time() - ran_from
    assert ran < 0.9, "too slow a machine for what follows"
    assert suspended.expires_at is None and 0.3 <= suspended.ran_s <= ran
    await asyncio.sleep(1.0)  # suspended longer than its whole timeout: the clock stands
    assert await ctl.machines.time_out(time.time()) == 0
    await ctl.machines.resume(member, p, m.id)
    resumed = await said(S.RUNNING, resumed=True)
    # A second suspended, longer than its whole timeout, and time is still left: what it ran.
    assert 0 < (resumed.time_left(time.time()) or 0) <= 1.0 - suspended.ran_s
    assert await ctl.machines.time_out(time.time()) == 0

    await asyncio.sleep(0.8)  # now its time is up: suspended, as it says
    assert await ctl.machines.time_out(time.time()) == 1
    # Its node could not suspend it: it does not run on past its lifetime, it is stopped.
    failed = await said(S.RUNNING, error="not suspended: migration failed")
    assert (failed.state, failed.desired) == (S.STOPPING, Desired.STOPPED)
    async with ctl.store.read() as tx:
        messages = [e.message for e in await tx.events.since(p.id, 0)]
    assert messages[-2:] == [
        "timed out after 1s: suspended",
        "timed out after 1s: not suspended: migration failed; stopped",
    ]


async def test_an_idle_machine_is_suspended_and_a_connection_wakes_it(
    settings: config.Settings, opened: list[Controller]
) -> None:
    """Idleness as the leader and the node's reports make it: connections the node saw move
    the machine's idle time on; once none came for idle_s it is suspended, saying why; a
    connection the node holds wakes it, saying the port, but only a machine that idled, and
    only from its own node."""
    ctl = await _controller(settings, opened)
    p, node, other = f.project(), f.node(), f.node()
    m = f.machine(p.id, idle_s=1.0, on_idle=OnIdle.SUSPEND, state=S.STARTING)
    m = replace(m, generation=1, node_id=node.id)
    node = replace(node, allocated=need(request_of(m.spec), node))  # it holds its share
    async with ctl.store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(node, "credential-hash")
        await tx.nodes.create(other, "other-hash")
        await tx.machines.create(m)

    async def said(state: MachineState, resumed: bool = False) -> Machine:
        return await ctl.machines.report(node, m.id, Report(1, state, time.time(), resumed=resumed))

    began = time.time()
    running = await said(S.RUNNING)
    assert running.idle_at is not None and began + 1.0 <= running.idle_at <= time.time() + 1.0
    seen = time.time() + 0.5
    await ctl.machines.activity(other, {m.id: seen + 10})  # not its node's word: ignored
    await ctl.machines.activity(node, {m.id: seen, "m-gone": seen})
    assert await ctl.machines.idle_out(seen + 0.9) == 0  # a connection 0.9 s ago
    assert await ctl.machines.wake(node, m.id, 1, 8080) == await _get(ctl, m.id)  # runs: as is
    assert await ctl.machines.idle_out(seen + 1.1) == 1
    idled = await _get(ctl, m.id)
    assert (idled.state, idled.desired, idled.idled) == (S.RUNNING, Desired.SUSPENDED, True)
    await said(S.SUSPENDED)
    with pytest.raises(NotFound):  # another node's connection does not wake it
        await ctl.machines.wake(other, m.id, 1, 8080)
    woken = await ctl.machines.wake(node, m.id, 1, 8080)
    assert (woken.state, woken.desired, woken.idled) == (S.STARTING, Desired.RUNNING, False)
    await said(S.RUNNING, resumed=True)
    # Suspended by its user, it stays suspended whatever connects.
    member = Principal("t-1", p.id, Role.MEMBER)
    await ctl.machines.suspend(member, p, m.id)
    await said(S.SUSPENDED)
    assert (await ctl.machines.wake(node, m.id, 1, 8080)).state is S.SUSPENDED
    async with ctl.store.read() as tx:
        messages = [e.message for e in await tx.events.since(p.id, 0)]
    assert messages[-6:] == [
        "idle for 1s: suspended",
        "suspended",
        "woken by a connection to port 8080",
        "resumed",
        "suspend requested",
        "suspended",
    ]


async def _get(ctl: Controller, machine_id: str) -> Machine:
    async with ctl.store.read() as tx:
        return await tx.machines.by_id(machine_id)


async def test_an_idle_machine_is_stopped_by_default(
    settings: config.Settings, opened: list[Controller]
) -> None:
    ctl = await _controller(settings, opened)
    p, node = f.project(), f.node()
    m = replace(f.machine(p.id, idle_s=1.0, state=S.STARTING), generation=1, node_id=node.id)
    async with ctl.store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(node, "credential-hash")
        await tx.machines.create(m)
    await ctl.machines.report(node, m.id, Report(1, S.RUNNING, time.time()))
    assert await ctl.machines.idle_out(time.time() + 1.1) == 1
    stopped = await _get(ctl, m.id)
    assert (stopped.state, stopped.desired, stopped.idled) == (S.STOPPING, Desired.STOPPED, False)
    assert stopped.idle_at is None  # not running: it idles no more
    async with ctl.store.read() as tx:
        assert (await tx.events.since(p.id, 0))[-1].message == "idle for 1s: stopped"


async def test_a_machine_suspended_at_its_timeout_resumes_only_once_extended(
    settings: config.Settings, opened: list[Controller]
) -> None:
    ctl = await _controller(settings, opened)
    p, node = f.project(), f.node()
    m = f.machine(p.id, timeout_s=0.5, on_timeout=OnTimeout.SUSPEND, state=S.STARTING)
    m = replace(m, generation=1, node_id=node.id)
    node = replace(node, allocated=need(request_of(m.spec), node))
    async with ctl.store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(node, "credential-hash")
        await tx.machines.create(m)
    member = Principal("t-1", p.id, Role.MEMBER)
    await ctl.machines.report(node, m.id, Report(1, S.RUNNING, time.time()))
    await asyncio.sleep(0.6)
    assert await ctl.machines.time_out(time.time()) == 1
    await ctl.machines.report(node, m.id, Report(1, S.SUSPENDED, time.time()))
    # A resume now would run it for no time before suspending it again: refused, saying how.
    with pytest.raises(Conflict, match=r"has run its whole timeout \(0\.5s\): .* extend"):
        await ctl.machines.resume(member, p, m.id)
    await ctl.machines.extend(member, p, m.id, 60.0)
    resumed = await ctl.machines.resume(member, p, m.id)
    assert (resumed.state, resumed.desired) == (S.STARTING, Desired.RUNNING)
