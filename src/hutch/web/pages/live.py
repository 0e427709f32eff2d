"""A machine page's live parts: its log tail (server-sent events), a shell (the exec WebSocket),
CPU, memory and network sparklines (hutch's own telemetry) and what it has cost so far.

The log and the shell are the API's own (hutch.http.streams), under the same streams lease per
token; only who calls (the session cookie) and the log's encoding (HTML lines) are said here.
"""

import asyncio
import html
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import Query, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from markupsafe import Markup
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from hutch.controller import Controller
from hutch.http import streams
from hutch.http.streaming import leased
from hutch.model.errors import Forbidden, HutchError, Unauthenticated
from hutch.model.machine import NOT_STARTED, Machine, MachineState
from hutch.model.metrics import rate
from hutch.model.prices import UNITS, total, usage_lines
from hutch.model.tenancy import Principal, Project
from hutch.services.policy import Action
from hutch.services.streams import Lease
from hutch.web.render import pages
from hutch.web.visitor import COOKIE, Visiting, Visitor, check_csrf, resolve
from hutch.wire.machines import LogLine

router = pages()
TAIL = 200  # lines of the log a machine's page shows first
MAX_TAIL = 10_000
SINCE = 3600.0  # seconds of metric history the sparklines show
PAGE_LOG = 256 << 10  # characters of output at most in the page's own tail
SESSION_CHECK = 1.0  # seconds: a signed-out session's log and shell end within about this
MAX_RECORD = 1 << 20  # bytes of one NDJSON record (a node's are 64 KiB of output, escaped)


def log_html(line: LogLine) -> str:
    """A log record as the text of `<pre id="logs">`: escaped, stderr marked, and a part the
    log dropped before anyone read it said as such."""
    if line.skipped:
        return f'<span class="lost">[{line.skipped} bytes of {line.stream} were lost here]</span>\n'
    text = html.escape(line.data, quote=False)
    return f'<span class="stderr">{text}</span>' if line.stream == "stderr" else text


async def _records(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[LogLine]]:
    """The node's NDJSON chunks (not cut at lines) as the records each completes: a turn's work
    is its chunk's, and what is held over for the next is at most one record."""
    held: list[bytes] = []  # the start of a record the next chunks complete
    size = 0
    async for chunk in chunks:
        *whole, rest = chunk.split(b"\n")
        if whole:
            whole[0] = b"".join([*held, whole[0]])
            held, size = [], 0
        if rest:
            held.append(rest)
            size += len(rest)
        if size > MAX_RECORD:  # no node writes one: say so, and skip to the next line
            held, size = [], 0
            yield [*map(_record, filter(None, whole)), _unreadable()]
            continue
        yield [_record(raw) for raw in whole if raw]
    if held:
        yield [_record(b"".join(held))]


def _record(raw: bytes) -> LogLine:
    try:
        return LogLine.model_validate_json(raw)
    except ValidationError:  # the node cut it off (it ended), or is not hutch's
        return _unreadable()


def _unreadable() -> LogLine:
    return LogLine(stream="stderr", time=time.time(), data="[a log record was unreadable]\n")


def _event(kind: str, data: str) -> bytes:
    """A server-sent event; a carriage return would end its line, so it is a character
    reference (the data is HTML)."""
    lines = data.replace("\r", "&#13;").split("\n")
    return (f"event: {kind}\n" + "".join(f"data: {d}\n" for d in lines) + "\n").encode()


# Sent first: a (re)connected stream starts again from the tail, over what the page showed.
RESET = _event("log", '<span hx-swap-oob="innerHTML:#logs"></span>')
END = _event("end", "")


@router.get("/ui/machines/{ref}/logs")
async def logs(
    request: Request,
    v: Visiting,
    ref: str,
    tail: Annotated[int, Query(ge=0, le=MAX_TAIL)] = TAIL,
) -> StreamingResponse:
    """The last `tail` lines, then what the machine writes, as `log` events of HTML (an `end`
    event when its log ends); a lease of the visitor's token while it streams."""
    ctl: Controller = request.app.state.controller
    cookie = request.cookies.get(COOKIE)
    await _started(request, v, ref, cookie)
    lease, chunks = await streams.log_chunks(
        ctl.machines, ctl.streams, v.principal, v.project, ref, follow=True, tail=tail
    )
    checked = time.monotonic()

    async def events() -> AsyncIterator[bytes]:
        nonlocal checked
        try:
            yield RESET
            async for records in _records(chunks):
                if time.monotonic() - checked >= SESSION_CHECK:  # signed out: nothing more
                    await ctl.tenancy.session(cookie)
                    checked = time.monotonic()
                if records:
                    yield _event("log", "".join(log_html(r) for r in records))
            yield END
        except Unauthenticated:  # signed out: the page keeps what it shows, and stops
            yield END
        finally:  # ended, or the reader went away (perhaps before the log began)
            ctl.streams.release(lease)

    # A proxy in front must not hold it back (nginx buffers otherwise).
    headers = {"X-Accel-Buffering": "no"}
    return leased(ctl.streams, lease, events(), "text/event-stream", headers)


async def _started(request: Request, v: Visitor, ref: str, cookie: str | None) -> None:
    """Once the machine has started (or ended). One just run (the run form opens its page) has
    no sandbox yet, so no log: its page waits for it, as `hutch run` does, rather than end its
    log before it begins. The wait holds one of the token's streams and ends on signing out,
    or when the page goes away."""
    ctl: Controller = request.app.state.controller
    lease = ctl.streams.admit(v.principal, v.project)
    try:
        while True:
            m, _, _ = await ctl.machines.wait(
                v.principal, v.project, ref, MachineState.RUNNING, SESSION_CHECK
            )
            if m.state not in NOT_STARTED or await request.is_disconnected():
                return
            await ctl.tenancy.session(cookie)
    finally:
        ctl.streams.release(lease)


async def log_tail(ctl: Controller, v: Visitor, m: Machine, lines: int = TAIL) -> Markup:
    """The page's log as it is now (what a reader without JavaScript sees), or why not."""
    try:
        lease, chunks = await streams.log_chunks(
            ctl.machines, ctl.streams, v.principal, v.project, m.id, tail=lines
        )
    except HutchError as e:
        return Markup('<span class="lost">[the log cannot be read now: {}]</span>').format(
            e.message
        )
    kept: deque[LogLine] = deque()  # the newest records, about PAGE_LOG bytes of them
    size = 0
    try:
        async for records in _records(chunks):
            for r in records:
                kept.append(r)
                size += len(r.data)
                while size - len(kept[0].data) >= PAGE_LOG:
                    size -= len(kept.popleft().data)
    finally:
        ctl.streams.release(lease)
    if size > PAGE_LOG:  # the end of the oldest kept: the page says what it leaves out
        first = kept.popleft()
        cut = len(first.data) - (PAGE_LOG - (size - len(first.data)))
        kept.appendleft(first.model_copy(update={"data": first.data[cut:]}))
        notice = f'<span class="lost">[{cut} characters before these are not shown here]</span>\n'
        return Markup(notice + "".join(map(log_html, kept)))
    return Markup("".join(map(log_html, kept)))


@router.websocket("/ui/machines/{ref}/exec")
async def shell(
    ws: WebSocket, ref: str, csrf: str = "", project: str | None = None
) -> None:  # fmt: skip
    """The page's shell: the API's exec session (docs/api.md), its caller the session's."""
    ctl: Controller = ws.app.state.controller

    async def caller() -> tuple[Principal, Project]:
        same_origin(ws)
        v = await resolve(ws, project)
        check_csrf(v, csrf)
        return v.principal, v.project

    async def watch(lease: Lease) -> None:
        """Signing out ends the shell, as revoking the token would."""
        cookie = ws.cookies.get(COOKIE)
        while lease.live:
            await asyncio.sleep(SESSION_CHECK)
            try:
                await ctl.tenancy.session(cookie)
            except Unauthenticated as e:
                lease.end(e.message)
            except HutchError:  # the store is away: the token's own check says when to end
                continue

    await streams.session(ws, ctl.machines, ctl.streams, caller, ref, attach=False, watch=watch)


def same_origin(conn: HTTPConnection) -> None:
    """Forbidden unless the request's Origin is this site (the Host it was sent to): a page of
    another site must not open a shell with the visitor's cookie."""
    origin = urlsplit(conn.headers.get("origin", ""))
    secure = conn.url.scheme in ("https", "wss")
    if origin.scheme != ("https" if secure else "http") or origin.netloc != conn.headers.get(
        "host"
    ):
        raise Forbidden("a shell opens only from this dashboard's own pages (Origin)")


@router.get("/ui/machines/{ref}/metrics")
async def metrics(request: Request, v: Visiting, ref: str) -> JSONResponse:
    """The sparklines' series, oldest first (uPlot's columns): CPU in cores used, memory in
    bytes, network in bytes a second; null where a point has no rate (the first, a restart)."""
    ctl: Controller = request.app.state.controller
    m, _, points = await ctl.telemetry.history(
        v.principal, v.project, ref, time.time() - SINCE, None
    )
    pairs = list(zip([None, *points], points, strict=False))
    series = {
        "time": [p.time for p in points],
        "cpu": [rate(a, b, "cpu_s") if a else None for a, b in pairs],
        "memory": [p.memory_bytes for p in points],
        "rx": [rate(a, b, "rx_bytes") if a else None for a, b in pairs],
        "tx": [rate(a, b, "tx_bytes") if a else None for a, b in pairs],
        "memory_limit": points[-1].memory_limit_bytes if points else None,
        "vcpus": m.spec.cpus,
    }
    return JSONResponse(series)


async def cost(ctl: Controller, v: Visitor, m: Machine) -> dict[str, Any] | None:
    """What the machine has used and cost since it was created, priced as its project's
    invoices price it (its labels' rates), before what a plan includes for the whole
    project; None if the visitor may not read billing."""
    if not v.may(Action.BILLING_READ):
        return None
    totals = await ctl.billing.usage(v.principal, v.project, None, None, "machine")
    used = next((t for t in totals if t.group == m.id), None)
    prices = await ctl.billing.prices(v.principal, v.project)
    lines = [] if used is None else usage_lines(
        replace(prices, included={}, fee=Decimal(0)), [(m.spec.labels, used)]
    )  # fmt: skip
    return {
        "currency": prices.currency,
        "total": total(lines),
        "lines": [(UNITS[line.unit].shown, line.quantity, line.amount) for line in lines],
    }


async def context(request: Request, v: Visitor, m: Machine) -> dict[str, Any]:
    """What machine.html's live parts need (machine_live.html)."""
    ctl: Controller = request.app.state.controller
    return {
        "log": await log_tail(ctl, v, m),
        "cost": await cost(ctl, v, m),
        "may_exec": v.may(Action.MACHINE_EXEC),
        "live_query": urlencode({"project": v.project.name}),
    }
