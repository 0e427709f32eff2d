"""/v1/machines: create, list, lifecycle, wait, logs (NDJSON), exec and attach (WebSocket),
events (SSE)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, WebSocket, status
from fastapi.responses import StreamingResponse
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hutch.api import convert
from hutch.api.deps import Ctl, Scoped, bearer
from hutch.controller import Controller
from hutch.http.fair import taking_turns, turn
from hutch.http.problems import PROBLEMS, ws_error
from hutch.http.streaming import leased
from hutch.model.errors import HutchError, Invalid, Unauthenticated
from hutch.model.machine import Machine, MachineState
from hutch.model.tenancy import Project
from hutch.services.streams import Lease
from hutch.wire import machines as wire
from hutch.wire.common import INT32_MAX, INT64_MAX, Page

router = APIRouter(tags=["machines"], responses=PROBLEMS)
KEEPALIVE = 15.0


async def _view(ctl: Controller, m: Machine, project: Project) -> wire.MachineView:
    wiring = (await ctl.machines.wiring([m]))[m.id]
    return convert.machine_view(m, project.name, wiring)


@router.post(
    "/v1/machines",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": wire.PlacementView, "description": "dry_run: where it would go"}},
)
async def create_machine(
    ctl: Ctl,
    s: Scoped,
    body: wire.MachineCreate,
    response: Response,
    dry_run: Annotated[
        bool, Query(description="create nothing: say where it would go, and why not elsewhere")
    ] = False,
) -> wire.MachineView | wire.PlacementView:
    if body.from_snapshot:
        body = convert.clone_of(
            body, await ctl.snapshots.get(s.caller, s.project, body.from_snapshot)
        )
    spec = convert.spec_of(body)
    net = convert.net_of(body)
    if dry_run:
        response.status_code = status.HTTP_200_OK
        decision = await ctl.machines.explain(s.caller, s.project, spec, net)
        return convert.placement_view(decision)
    m = await ctl.machines.create(s.caller, s.project, spec, body.name, body.start, net=net)
    return await _view(ctl, m, s.project)


@router.get("/v1/machines")
async def list_machines(
    ctl: Ctl,
    s: Scoped,
    state: Annotated[list[MachineState] | None, Query()] = None,
    label: Annotated[list[str] | None, Query(description="key=value; all must match")] = None,
    all: Annotated[bool, Query(description="include destroyed machines")] = False,
    limit: Annotated[int, Query(ge=1, le=INT32_MAX)] = 100,
    cursor: str | None = None,
) -> Page[wire.MachineView]:
    labels = {}
    for item in label or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise Invalid(f"label filter {item!r} is not key=value")
        labels[key] = value
    machines, next_cursor = await ctl.machines.page(
        s.caller, s.project, states=tuple(state or ()), labels=labels, include_destroyed=all,
        limit=limit, cursor=cursor,
    )  # fmt: skip
    wiring = await ctl.machines.wiring(machines)
    return Page(
        items=[convert.machine_view(m, s.project.name, wiring[m.id]) for m in machines],
        next=next_cursor,
    )


@router.get("/v1/machines/{ref}")
async def get_machine(ctl: Ctl, s: Scoped, ref: str) -> wire.MachineView:
    return await _view(ctl, await ctl.machines.get(s.caller, s.project, ref), s.project)


@router.post("/v1/machines/{ref}/start")
async def start_machine(ctl: Ctl, s: Scoped, ref: str) -> wire.MachineView:
    return await _view(ctl, await ctl.machines.start(s.caller, s.project, ref), s.project)


@router.post("/v1/machines/{ref}/suspend")
async def suspend_machine(ctl: Ctl, s: Scoped, ref: str) -> wire.MachineView:
    """Save a running micro-VM's memory and devices on its node and end its process: it keeps
    its disk and addresses, and gives back its CPU and memory (state `suspended`)."""
    return await _view(ctl, await ctl.machines.suspend(s.caller, s.project, ref), s.project)


@router.post("/v1/machines/{ref}/resume")
async def resume_machine(ctl: Ctl, s: Scoped, ref: str) -> wire.MachineView:
    """Continue a suspended machine where it was, on its node (503 when that node is full)."""
    return await _view(ctl, await ctl.machines.resume(s.caller, s.project, ref), s.project)


@router.post("/v1/machines/{ref}/restart")
async def restart_machine(ctl: Ctl, s: Scoped, ref: str) -> wire.MachineView:
    return await _view(ctl, await ctl.machines.restart(s.caller, s.project, ref), s.project)


@router.post("/v1/machines/{ref}/stop")
async def stop_machine(
    ctl: Ctl, s: Scoped, ref: str, body: wire.StopRequest | None = None
) -> wire.MachineView:
    body = body or wire.StopRequest()
    m = await ctl.machines.stop(s.caller, s.project, ref, body.signal, body.timeout)
    return await _view(ctl, m, s.project)


@router.post("/v1/machines/{ref}/extend")
async def extend_machine(
    ctl: Ctl, s: Scoped, ref: str, body: wire.ExtendRequest
) -> wire.MachineView:
    """More time for a machine run with a timeout: `seconds` of running added to its time
    left (409 if it has no timeout, or has ended)."""
    m = await ctl.machines.extend(s.caller, s.project, ref, body.seconds)
    return await _view(ctl, m, s.project)


@router.post("/v1/machines/{ref}/kill")
async def kill_machine(
    ctl: Ctl, s: Scoped, ref: str, body: wire.KillRequest | None = None
) -> wire.MachineView:
    body = body or wire.KillRequest()
    return await _view(
        ctl, await ctl.machines.kill(s.caller, s.project, ref, body.signal), s.project
    )


@router.delete("/v1/machines/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_machine(ctl: Ctl, s: Scoped, ref: str, force: bool = False) -> Response:
    await ctl.machines.delete(s.caller, s.project, ref, force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/machines/{ref}/wait")
async def wait_machine(
    ctl: Ctl,
    s: Scoped,
    ref: str,
    state: Annotated[str, Query(description="a state, or 'finished'")] = "finished",
    timeout: Annotated[float, Query(ge=0, le=300)] = 60.0,
) -> wire.WaitResult:
    m, reached, final = await ctl.machines.wait(s.caller, s.project, ref, state, timeout)
    return wire.WaitResult(machine=await _view(ctl, m, s.project), reached=reached, final=final)


@router.get(
    "/v1/machines/{ref}/logs",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {"schema": wire.LogLine.model_json_schema()}}}
    },
)
async def machine_logs(
    ctl: Ctl,
    s: Scoped,
    ref: str,
    follow: bool = False,
    tail: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    since: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
) -> StreamingResponse:
    lease = ctl.streams.admit(s.caller, s.project)  # 429 before the 200 if it holds too many
    try:  # what the node refuses, before the 200
        stream = await ctl.machines.logs(
            s.caller, s.project, ref, follow=follow, tail=tail, since=since
        )
    except BaseException:
        ctl.streams.release(lease)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in lease.guard(taking_turns(stream)):
                if chunk is not None:
                    yield chunk
        finally:
            ctl.streams.release(lease)

    return leased(ctl.streams, lease, body(), "application/x-ndjson")


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    ctl: Ctl,
    s: Scoped,
    after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    last_event_id: Annotated[
        int | None, Header(ge=0, le=INT64_MAX, description="an event's id: resume after it")
    ] = None,
) -> StreamingResponse:
    if last_event_id is not None:
        after = max(after, last_event_id)
    batches = ctl.machines.events(s.caller, s.project, after)
    lease = ctl.streams.admit(s.caller, s.project)  # 429 before the 200 if it holds too many

    async def body() -> AsyncIterator[bytes]:
        try:
            async for batch in lease.guard(batches, KEEPALIVE):
                if batch is None:
                    yield b": keepalive\n\n"
                    continue
                await turn()  # up to MAX_EVENTS of them to encode
                yield b"".join(
                    f"id: {e.id}\nevent: {e.kind}\ndata: {data}\n\n".encode()
                    for e in batch
                    for data in (convert.event_view(e).model_dump_json(),)
                )
        finally:
            ctl.streams.release(lease)

    return leased(ctl.streams, lease, body(), "text/event-stream")


@router.websocket("/v1/machines/{ref}/exec")
async def exec_machine(ws: WebSocket, ref: str, project: str | None = None) -> None:
    """Relay an exec session between the client and the machine's node (docs/api.md)."""
    await _session(ws, ref, project, attach=False)


@router.websocket("/v1/machines/{ref}/attach")
async def attach_machine(ws: WebSocket, ref: str, project: str | None = None) -> None:
    """Relay an attach session (into the machine's main process) to its node (docs/api.md)."""
    await _session(ws, ref, project, attach=True)


async def _session(ws: WebSocket, ref: str, project: str | None, *, attach: bool) -> None:
    """An exec (its ExecStart first) or attach session, relayed under a streams lease: it ends
    with its token."""
    ctl = ws.app.state.controller
    await ws.accept()
    start: wire.ExecStart | None = None
    try:
        caller, proj = await ctl.tenancy.scope(bearer(ws), project)  # type: ignore[arg-type]
        if not attach:
            start = wire.ExecStart.first_message(await ws.receive_text())
        m, node = await ctl.machines.session(caller, proj, ref, attach=attach)
        lease = ctl.streams.admit(caller, proj)
        try:
            upstream = await ctl.machines.connect(m, node, attach=attach)
        except BaseException:
            ctl.streams.release(lease)
            raise
    except HutchError as e:
        await ws.send_text(ws_error(e))
        await ws.close()
        return
    try:
        if start is not None:
            await upstream.send(start.model_dump_json())
        if await _relay(ws, upstream, lease):
            await ws.send_text(ws_error(Unauthenticated(lease.reason)))
    finally:
        ctl.streams.release(lease)
        await upstream.close()
        with contextlib.suppress(RuntimeError):
            await ws.close()


async def _relay(client: WebSocket, node: ClientConnection, lease: Lease) -> bool:
    """Relay until either side ends (False) or the lease does (True)."""

    async def down() -> None:
        async for message in node:
            await turn()  # output in bulk (a `cat` of a large file) takes turns too
            if not lease.live:  # nothing from after its end, even before `ended` wakes
                return
            if isinstance(message, bytes):
                await client.send_bytes(message)
            else:
                await client.send_text(message)

    async def up() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect" or not lease.live:
                return
            if message.get("bytes") is not None:
                await node.send(message["bytes"])
            elif message.get("text") is not None:
                await node.send(message["text"])

    ended = asyncio.ensure_future(lease.wait())
    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up()), ended]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return not lease.live
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, RuntimeError):
                await task
