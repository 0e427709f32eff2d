"""A machine's streams as the API and the dashboard both serve them: its log (in turns, under a
streams lease; the response: hutch.http.streaming) and exec or attach sessions relayed to its
node. The two differ only in how the
caller is known (a bearer token, a session cookie) and in how the log is encoded (NDJSON,
server-sent events of HTML): those are their routes' part, everything else is here once."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import WebSocket, WebSocketDisconnect
from starlette.types import Message
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hutch.http.fair import taking_turns, turn
from hutch.http.problems import ws_error
from hutch.model.errors import HutchError, Unauthenticated
from hutch.model.tenancy import Principal, Project
from hutch.services.machines import Machines
from hutch.services.streams import Lease, Streams
from hutch.wire.machines import ExecStart

Caller = Callable[[], Awaitable[tuple[Principal, Project]]]  # who opens a session, and where
EARLY_MAX = 1 << 20  # bytes a client's session keeps of what it sends while its machine boots


async def log_chunks(
    machines: Machines,
    streams: Streams,
    caller: Principal,
    project: Project,
    ref: str,
    *,
    follow: bool = False,
    tail: int | None = None,
    since: float | None = None,
) -> tuple[Lease, AsyncIterator[bytes]]:
    """The machine's log, as its node's NDJSON chunks, each read in a turn of its own while the
    lease holds; the lease is released when they end (hand both to `streaming.leased`, which
    releases it if they never start). Raised here, before any output: TooManyRequests when the
    caller's token holds too many streams, and what the node refuses."""
    lease = streams.admit(caller, project)
    try:
        stream = await machines.logs(caller, project, ref, follow=follow, tail=tail, since=since)
    except BaseException:
        streams.release(lease)
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in lease.guard(taking_turns(stream)):
                if chunk is not None:
                    yield chunk
        finally:
            streams.release(lease)

    return lease, chunks()


async def session(
    ws: WebSocket,
    machines: Machines,
    streams: Streams,
    caller: Caller,
    ref: str,
    *,
    attach: bool,
    watch: Callable[[Lease], Awaitable[None]] | None = None,
) -> None:
    """Serve an exec (its ExecStart first) or attach session on `ws` (docs/api.md), relayed
    under a streams lease: it ends with its token, or when `watch`, run beside the relay, ends
    the lease (the dashboard's: on signing out). A refusal (of `caller`, of the policy, of
    the node) is the socket's one `error` message; an ended lease's, its last."""
    await ws.accept()
    start: ExecStart | None = None
    try:
        principal, project = await caller()
        if not attach:
            start = ExecStart.first_message(await ws.receive_text())
        lease = streams.admit(principal, project)  # before a wait for a booting machine
        try:
            opened = await _meanwhile(ws, _open(machines, principal, project, ref, attach))
        except BaseException:
            streams.release(lease)
            raise
        if opened is None:  # the client left while its machine booted
            streams.release(lease)
            return
        upstream, early = opened
    except HutchError as e:
        with _gone():
            await ws.send_text(ws_error(e))
            await ws.close()
        return
    try:
        if start is not None:
            await upstream.send(start.model_dump_json())
        for message in early:
            await _forward(upstream, message)
        if await _relay(ws, upstream, lease, watch):
            await ws.send_text(ws_error(Unauthenticated(lease.reason)))
    finally:
        streams.release(lease)
        await upstream.close()
        with _gone():
            await ws.close()


def _gone() -> contextlib.suppress:
    """What a send or close to a client that has already gone raises (Starlette: a
    WebSocketDisconnect for the server's OSError; RuntimeError once closed): the session
    is over either way, and no traceback belongs in the log."""
    return contextlib.suppress(RuntimeError, WebSocketDisconnect)


async def _open(
    machines: Machines, principal: Principal, project: Project, ref: str, attach: bool
) -> ClientConnection:
    m, node = await machines.session(principal, project, ref, attach=attach)
    return await machines.connect(m, node, attach=attach)


async def _meanwhile(
    ws: WebSocket, opening: Awaitable[ClientConnection]
) -> tuple[ClientConnection, list[Message]] | None:
    """The node's socket once `opening` has it (it may wait for a booting machine), with what
    the client sent meanwhile (typed into a shell not yet open), in order; None once the client
    has gone: the wait ends with it, and its lease with the caller."""
    job = asyncio.ensure_future(opening)
    early: list[Message] = []
    gone, size = False, 0
    try:
        while not job.done():
            if size >= EARLY_MAX:  # the rest waits in the socket, under its flow control
                await asyncio.wait((job,))
                break
            heard = asyncio.ensure_future(ws.receive())
            await asyncio.wait((job, heard), return_when=asyncio.FIRST_COMPLETED)
            if not heard.done():
                heard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heard
                continue
            message = heard.result()
            if message["type"] == "websocket.disconnect":
                gone = True
                break
            early.append(message)
            size += len(message.get("bytes") or b"") + len(message.get("text") or "")
    finally:
        if not job.done():  # the client left, or this was cancelled
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    if not gone:
        return job.result(), early
    if not job.cancelled() and job.exception() is None:  # opened as the client left
        await job.result().close()
    return None


async def _forward(node: ClientConnection, message: Message) -> None:
    """A client's message on to the node, as it came (binary: input; text: a control)."""
    if message.get("bytes") is not None:
        await node.send(message["bytes"])
    elif message.get("text") is not None:
        await node.send(message["text"])


async def _relay(
    client: WebSocket,
    node: ClientConnection,
    lease: Lease,
    watch: Callable[[Lease], Awaitable[None]] | None,
) -> bool:
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
            await _forward(node, message)

    ended = asyncio.ensure_future(lease.wait())
    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up()), ended]
    if watch is not None:
        tasks.append(asyncio.ensure_future(watch(lease)))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return not lease.live
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, RuntimeError):
                await task
