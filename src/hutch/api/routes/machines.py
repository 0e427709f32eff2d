"""/v1/machines: create, list, lifecycle, wait, logs (NDJSON), exec and attach (WebSocket),
events (SSE)."""

from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Response, WebSocket, status
from fastapi.responses import StreamingResponse

from hutch.api import convert
from hutch.api.deps import Ctl, Scoped, bearer
from hutch.controller import Controller
from hutch.http import streams
from hutch.http.fair import turn
from hutch.http.problems import PROBLEMS
from hutch.http.streaming import leased
from hutch.model.errors import Invalid
from hutch.model.machine import Machine, MachineState, validate_labels
from hutch.model.tenancy import Principal, Project
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
    m, wiring = await ctl.machines.create(s.caller, s.project, spec, body.name, body.start, net=net)
    return convert.machine_view(m, s.project.name, wiring)


# The page is written straight to bytes, from the rows as the store read them (MachineRepo.records,
# convert.machine_docs): FastAPI would build and validate a MachineView per machine, then
# serialize them; response_model only documents it.
@router.get("/v1/machines", response_model=Page[wire.MachineView])
async def list_machines(
    ctl: Ctl,
    s: Scoped,
    state: Annotated[list[MachineState] | None, Query()] = None,
    label: Annotated[list[str] | None, Query(description="key=value; all must match")] = None,
    all: Annotated[bool, Query(description="include destroyed machines")] = False,
    limit: Annotated[int, Query(ge=1, le=INT32_MAX)] = 100,
    cursor: str | None = None,
) -> Response:
    labels = {}
    for item in label or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise Invalid(f"label filter {item!r} is not key=value")
        labels[key] = value
    validate_labels(labels)  # what no machine can have matches nothing; and a bound on the query
    records, next_cursor = await ctl.machines.page(
        s.caller, s.project, states=tuple(state or ()), labels=labels, include_destroyed=all,
        limit=limit, cursor=cursor,
    )  # fmt: skip
    items = convert.machine_docs(records, s.project.name)
    # orjson: the standard library's encoder took a tenth of the request.
    body = orjson.dumps({"items": items, "next": next_cursor})
    return Response(body, media_type="application/json")


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
    lease, chunks = await streams.log_chunks(
        ctl.machines, ctl.streams, s.caller, s.project, ref, follow=follow, tail=tail, since=since
    )
    return leased(ctl.streams, lease, chunks, "application/x-ndjson")


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
    ctl: Controller = ws.app.state.controller

    async def caller() -> tuple[Principal, Project]:
        return await ctl.tenancy.scope(bearer(ws), project)

    await streams.session(ws, ctl.machines, ctl.streams, caller, ref, attach=attach)
