"""Machines: the list (filter, sort, live states, bulk actions, a run form), a machine's page
(state, spec, events, actions), and /ui/events, the stream that keeps both live.

The live parts are htmx's SSE extension swapping what the server renders: /ui/events sends
each changed machine's row (event `machine`, the `<tr id="m-…">` to swap in place) or, for a
machine's page (`?machine=ID`), its state, actions and new events (event `state`). A page says
from which event on (`after`): the number of the project's newest event before it was read.
"""

import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import Form, Header, Query, Request, Response
from fastapi.responses import HTMLResponse

from hutch.http.streaming import leased
from hutch.model.errors import HutchError, Invalid
from hutch.model.machine import (
    Desired,
    Event,
    Machine,
    MachineLine,
    MachineSpec,
    MachineState,
)
from hutch.services.policy import Action
from hutch.web.pages import live
from hutch.web.render import html, page, pages, see_other
from hutch.web.visitor import COOKIE, Acting, Visiting, Visitor, controller
from hutch.wire.common import INT64_MAX

router = pages()
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies close idle ones)

Sort = Literal["name", "state", "created", "image"]
Direction = Literal["asc", "desc"]
Bulk = Literal["stop", "start", "remove"]
Verb = Literal["stop", "start", "restart", "suspend", "resume", "remove"]
_KEYS: dict[str, Callable[[MachineLine], Any]] = {
    "name": lambda m: m.name,
    "state": lambda m: (m.state.value, m.name),
    "created": lambda m: (m.created_at, m.name),
    "image": lambda m: (m.image, m.name),
}


def actions(m: Machine) -> list[Verb]:
    """What the machine's page offers for its state (the services still decide)."""
    if m.state is MachineState.DESTROYED or m.desired is Desired.DESTROYED:
        return []
    verbs: list[Verb] = []
    waiting = m.state is MachineState.CREATED
    if m.state.finished or (waiting and m.desired is Desired.STOPPED):
        verbs.append("start")
    if m.state in (MachineState.STARTING, MachineState.READY, MachineState.RUNNING) or (
        waiting and m.desired is not Desired.STOPPED
    ):
        verbs.append("stop")
    if m.state is MachineState.RUNNING:
        verbs.append("restart")
        if m.spec.runtime == "microvm":
            verbs.append("suspend")
    if m.state is MachineState.SUSPENDED:
        verbs += ["resume", "stop"]
    return [*verbs, "remove"]


async def act(request: Request, v: Visitor, ref: str, verb: Verb) -> Machine | None:
    """Do `verb` to the machine as the visitor (None once removed)."""
    ms = controller(request).machines
    match verb:
        case "stop":
            return await ms.stop(v.principal, v.project, ref)
        case "start":
            return await ms.start(v.principal, v.project, ref)
        case "restart":
            return await ms.restart(v.principal, v.project, ref)
        case "suspend":
            return await ms.suspend(v.principal, v.project, ref)
        case "resume":
            return await ms.resume(v.principal, v.project, ref)
        case "remove":  # the button says what it does: a running machine is destroyed too
            await ms.delete(v.principal, v.project, ref, force=True)
            return None


def _shown(
    machines: Sequence[MachineLine], q: str, state: MachineState | None
) -> list[MachineLine]:
    needle = q.strip().lower()
    return [
        m
        for m in machines
        if (state is None or m.state is state)
        and (not needle or any(needle in f.lower() for f in (m.name, m.image, m.state.value)))
    ]


async def _list_page(
    request: Request,
    v: Visitor,
    q: str = "",
    state: MachineState | None = None,
    sort: Sort = "created",
    dir: Direction = "desc",
    status: int = 200,
    alerts: Sequence[str] = (),
    done: Sequence[str] = (),
) -> HTMLResponse:
    machines, after = await controller(request).machines.listing(v.principal, v.project)
    shown = sorted(_shown(machines, q, state), key=_KEYS[sort], reverse=dir == "desc")
    return page(
        request, v, "machines.html", status,
        machines=shown, total=len(machines), after=after, q=q, state=state, sort=sort, dir=dir,
        states=list(MachineState), writable=v.may(Action.MACHINE_WRITE), alerts=alerts, done=done,
    )  # fmt: skip


@router.get("/ui/machines")
async def machines(
    request: Request,
    v: Visiting,
    q: Annotated[str, Query(max_length=200)] = "",
    state: MachineState | Literal[""] = "",
    sort: Sort = "created",
    dir: Direction = "desc",
) -> HTMLResponse:
    return await _list_page(request, v, q, state or None, sort, dir)


@router.post("/ui/machines")
async def run(
    request: Request,
    v: Acting,
    image: Annotated[str, Form(max_length=512)],
    name: Annotated[str, Form(max_length=63)] = "",
    command: Annotated[str, Form(max_length=4096)] = "",
    cpus: Annotated[int, Form(ge=1, le=256)] = 1,
    memory: Annotated[int, Form(ge=1, le=1 << 22, description="MiB")] = 128,
) -> Response:
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise Invalid(f"the command is not valid shell words: {e}") from None
    spec = MachineSpec(image=image.strip(), command=argv or None, cpus=cpus, memory_mib=memory)
    m, _ = await controller(request).machines.create(
        v.principal, v.project, spec, name.strip() or None, True
    )
    return see_other(f"/ui/machines/{m.id}")


@router.post("/ui/machines/bulk")
async def bulk(
    request: Request,
    v: Acting,
    action: Annotated[Bulk, Form()],
    id: Annotated[list[str], Form(max_length=1000)] = [],  # noqa: B006 (FastAPI copies it)
) -> Response:
    if not id:
        raise Invalid("select at least one machine")
    refused, done = [], []
    for ref in dict.fromkeys(id):
        try:
            await act(request, v, ref, action)
            done.append(ref)
        except HutchError as e:
            refused.append((type(e).status, f"{ref}: {e.message}"))
    if not refused:
        return see_other("/ui/machines")
    # What was done stays done; the page says what was refused, with the first refusal's status.
    return await _list_page(request, v, status=refused[0][0], alerts=[r for _, r in refused],
                            done=[f"{action}: {ref}" for ref in done])  # fmt: skip


@router.get("/ui/machines/{ref}")
async def machine(request: Request, v: Visiting, ref: str) -> HTMLResponse:
    m, events, after = await controller(request).machines.history(v.principal, v.project, ref)
    return page(request, v, "machine.html", m=m, events=events, after=after,
                actions=actions(m), writable=v.may(Action.MACHINE_WRITE),
                **await live.context(request, v, m))  # fmt: skip


@router.post("/ui/machines/{ref}/{verb}")
async def machine_action(request: Request, v: Acting, ref: str, verb: Verb) -> Response:
    m = await act(request, v, ref, verb)
    return see_other("/ui/machines" if m is None else f"/ui/machines/{m.id}")


# -- the live stream ------------------------------------------------------------------------------


def _sse(kind: str, fragment: str, event_id: int | None) -> bytes:
    data = "".join(f"data: {line}\n" for line in fragment.splitlines() or [""])
    said = f"id: {event_id}\n" if event_id is not None else ""
    return f"{said}event: {kind}\n{data}\n".encode()


def _messages(
    v: Visitor,
    batch: list[Event],
    machines: list[Machine],
    one: str,
    shown: Callable[[MachineLine, bool], bool],
) -> bytes:
    """The batch as SSE messages: the last carries the batch's last id, where to resume. Rows
    go to a list only if `shown(line, new)` (its filter) says so."""
    created = {e.object_id for e in batch if e.kind == "machine.created"}
    writable = v.may(Action.MACHINE_WRITE)
    if one:
        parts = [
            ("state", html("machine_live.html", v=v, m=m, actions=actions(m), writable=writable,
                           events=[e for e in reversed(batch) if e.object_id == m.id]))
            for m in machines
        ]  # fmt: skip
    else:
        lines = [(MachineLine.of(m), m.id in created) for m in machines if not m.pool]
        parts = [
            ("machine", html("machine_row.html", m=line, writable=writable,
                             oob="new" if new else "update"))
            for line, new in lines if shown(line, new)
        ]  # fmt: skip
    last = batch[-1].id
    if not parts:  # nothing to show, but where to resume moved on
        return f"id: {last}\n: nothing here\n\n".encode()
    return b"".join(
        _sse(kind, fragment, last if i == len(parts) - 1 else None)
        for i, (kind, fragment) in enumerate(parts)
    )


@router.get("/ui/events")
async def events(
    request: Request,
    v: Visiting,
    after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    machine: Annotated[str, Query(max_length=64)] = "",
    q: Annotated[str, Query(max_length=200)] = "",
    state: MachineState | Literal[""] = "",
    last_event_id: Annotated[int | None, Header(ge=0, le=INT64_MAX)] = None,
) -> Response:
    ctl = controller(request)
    if machine:  # the machine's page: refused now if it is not the project's
        machine = (await ctl.machines.get(v.principal, v.project, machine)).id
    if last_event_id is not None:  # EventSource reconnecting
        after = max(after, last_event_id)
    batches = ctl.machines.events(v.principal, v.project, after)
    lease = ctl.streams.admit(v.principal, v.project)  # 429 if the token holds too many

    cookie = request.cookies.get(COOKIE)

    def shown(line: MachineLine, new: bool) -> bool:
        # A row the page shows may leave the state it was filtered by: it is updated still.
        return bool(_shown([line], q, (state or None) if new else None))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for batch in lease.guard(batches, KEEPALIVE):
                # The lease ends it with its token; signing out ends it here, before it sends.
                await ctl.tenancy.session(cookie)
                if batch is None:
                    yield b": keepalive\n\n"
                    continue
                ids = {e.object_id for e in batch if e.kind.startswith("machine.")}
                if machine:
                    ids &= {machine}
                found = await ctl.machines.several(v.principal, v.project, sorted(ids))
                yield _messages(v, batch, found, machine, shown)
        except HutchError as e:  # signed out, the project went: the page keeps what it shows
            yield _sse("error", html("alert.html", message=e.message), None)
        finally:
            ctl.streams.release(lease)

    return leased(ctl.streams, lease, body(), "text/event-stream")
