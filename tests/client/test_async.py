"""hutch.AsyncClient: the same API as Client, awaited, against the same real controller."""

import asyncio
import inspect
import typing
from contextlib import aclosing
from pathlib import Path

import pytest

from hutch.client import (
    AsyncClient,
    AsyncExecSession,
    Conflict,
    NotFound,
    StartFailed,
    Unauthenticated,
    aio,
    log_bytes,
    sync,
)
from hutch.model.machine import MachineState
from tests.controller import BUSYBOX_CONFIG, Controller
from tests.images.ocibuild import write_oci_layout

C = "container"


async def test_run_logs_wait(aclient: AsyncClient) -> None:
    m = await aclient.machines.run(
        "busybox", ["sh", "-c", "echo out; echo err >&2; exit 5"], runtime=C, name="job"
    )
    ended = await aclient.machines.wait("job", timeout=30)
    assert ended.state is MachineState.EXITED and ended.exit_code == 5
    lines = [line async for line in aclient.machines.logs(m)]
    assert [(x.stream, log_bytes(x)) for x in lines] == [("stdout", b"out\n"), ("stderr", b"err\n")]
    assert [x.id async for x in aclient.machines.list(state="exited")] == [m.id]
    await aclient.machines.delete(m)
    with pytest.raises(NotFound):
        await aclient.machines.get("nothing")


async def test_follow_logs_until_the_end(aclient: AsyncClient) -> None:
    m = await aclient.machines.run(
        "busybox", ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"], runtime=C
    )
    followed = [line.data async for line in aclient.machines.logs(m, follow=True)]
    assert "".join(followed) == "1\n2\n3\n"
    assert [x.data async for x in aclient.machines.logs(m, tail=1)] == ["3\n"]


async def test_tail_counts_lines_not_writes(aclient: AsyncClient) -> None:
    m = await aclient.machines.run("busybox", ["printf", "a\\nb\\nc\\n"], runtime=C)
    await aclient.machines.wait(m, timeout=30)
    assert "".join([x.data async for x in aclient.machines.logs(m, tail=2)]) == "b\nc\n"


async def test_exec_and_exec_stream(aclient: AsyncClient) -> None:
    m = await aclient.machines.run("busybox", ["sleep", "600"], runtime=C)
    result = await aclient.machines.exec(m, ["sh", "-c", "cat; pwd"], stdin=b"in\n", workdir="/tmp")
    assert (result.exit_code, result.stdout) == (0, b"in\n/tmp\n")
    async with aclient.machines.exec_stream(
        m, ["sh", "-c", "read x; echo got $x"], stdin=True
    ) as session:
        assert isinstance(session, AsyncExecSession)
        await session.write(b"it\n")
        assert [chunk async for chunk in session] == [("stdout", b"got it\n")]
        assert session.exit_code == 0
    session = await aclient.machines.exec_stream(m, ["sleep", "60"])
    await session.signal("SIGKILL")
    assert await session.wait() == 137
    await session.close()
    with pytest.raises(Conflict):
        await aclient.machines.delete(m)
    await aclient.machines.stop(m, timeout=1)
    await aclient.machines.wait(m, timeout=30)
    await aclient.machines.delete(m)


async def test_events(aclient: AsyncClient) -> None:
    async with aclosing(aclient.events()) as events:
        waiting = asyncio.ensure_future(anext(events))
        m = await aclient.machines.create("busybox", runtime=C, start=False)
        first = await asyncio.wait_for(waiting, 30)
    assert (first.kind, first.object) == ("machine.created", m.id)
    await aclient.machines.delete(m)


async def test_images_and_projects(
    controller: Controller,
    aclient: AsyncClient,
    project: str,
    tmp_path: Path,
    busybox_rootfs: Path,
) -> None:
    write_oci_layout(tmp_path / "layout", [busybox_rootfs], BUSYBOX_CONFIG)
    [mine] = await aclient.images.import_(tmp_path / "layout", names=["async/app:1"])
    assert "docker.io/async/app:1" in (await aclient.images.get("async/app:1")).names
    assert mine.id in [i.id async for i in aclient.images.list()]
    await aclient.images.delete("async/app:1")
    async with AsyncClient(controller.url, controller.token) as admin:
        token = await admin.projects.tokens.create(project, role="admin")
        assert (await admin.projects.get(project)).name == project
        assert project in [p.name async for p in admin.projects.list()]
        assert len([n async for n in admin.nodes.list()]) == 1
        report = await admin.projects.set_quota(project, vcpus=4)
        assert report.quota.vcpus == 4
    async with AsyncClient(controller.url, token.secret) as own:
        assert (await own.projects.quota()).quota.vcpus == 4
        assert [t.id async for t in own.projects.tokens.list()] == [token.id]
        await own.projects.tokens.revoke(token.id)
        with pytest.raises(Unauthenticated):
            await own.projects.get(project)


def _public_methods(cls: type) -> dict[str, object]:
    return {n: v for n, v in vars(cls).items() if not n.startswith("_") and callable(v)}


def test_async_client_has_every_method_of_the_blocking_one_as_a_coroutine() -> None:
    """The README's promise: AsyncClient has Client's methods, awaited (or iterated with
    `async for`, where Client's return an iterator)."""
    pairs = [
        (sync.Client, aio.AsyncClient),
        (sync.Machines, aio.AsyncMachines),
        (sync.Images, aio.AsyncImages),
        (sync.Projects, aio.AsyncProjects),
        (sync.Tokens, aio.AsyncTokens),
        (sync.Nodes, aio.AsyncNodes),
    ]
    for blocking, asynchronous in pairs:
        for name in _public_methods(blocking):
            method = getattr(asynchronous, name, None)
            assert method is not None, f"{asynchronous.__name__} lacks {name}"
            if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
                continue
            returns = typing.get_type_hints(method)["return"]
            returns = typing.get_origin(returns) or returns
            assert hasattr(returns, "__await__"), f"{asynchronous.__name__}.{name} is not awaited"


async def test_listings_are_awaited_or_iterated(aclient: AsyncClient) -> None:
    assert any("busybox" in n for i in await aclient.images.list() for n in i.names)
    m = await aclient.machines.run("busybox", ["echo", "hi"], runtime=C)
    await aclient.machines.wait(m, timeout=30)
    assert [x.id for x in await aclient.machines.list(all=True)] == [m.id]
    assert [x.id async for x in aclient.machines.list(all=True)] == [m.id]
    assert [x.data for x in await aclient.machines.logs(m)] == ["hi\n"]
    assert aclient.project in {p.name for p in await aclient.projects.list()}
    assert [n.state for n in await aclient.nodes.list()] == ["ready"]
    assert await aclient.projects.tokens.list() == []


async def test_run_of_an_image_that_cannot_start_raises(
    aclient: AsyncClient, controller: Controller
) -> None:
    # A registry the node may pull from, where nothing listens: the machine fails to start.
    ref = f"127.0.0.1:{controller.registry_port}/none/here:1"
    with pytest.raises(StartFailed, match="failed to start: cannot pull") as failed:
        await aclient.machines.run(ref, runtime=C)
    assert failed.value.machine.state is MachineState.FAILED
    assert (await aclient.machines.get(failed.value.machine.id)).state is MachineState.FAILED
    with controller.client(aclient.project) as client, pytest.raises(StartFailed):
        client.machines.run(ref, runtime=C)
    ok = await aclient.machines.run("busybox", ["sleep", "60"], runtime=C)  # the same, startable
    assert ok.state is MachineState.RUNNING
    await aclient.machines.delete(ok, force=True)  # the shared node's room, for the next tests
