"""Requests still open when a server's shutdown grace ends (long polls, followed logs, event
streams, shells) are cancelled by uvicorn. That is the server closing them, not an error of
theirs, and each ends as its client can tell instead of as a traceback in the log: a 503 when
nothing was sent yet; a body cut short (uvicorn closes the connection and says so in a line:
the client sees the body incomplete, not ended); a websocket's 1001 "going away"."""

import asyncio
import contextlib
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.http.problems import problem


class ClosedAtShutdown:
    def __init__(self, app: ASGIApp, closing: Callable[[], bool]) -> None:
        self.app = app
        self.closing = closing  # the server is shutting down

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] in ("http.response.start", "websocket.accept")
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except (asyncio.CancelledError, Exception) as e:
            if not self.closing() or not _cancelled(e):
                raise
            # Not raised again: the cancel was for this request's own task, which ends here.
            with contextlib.suppress(Exception):  # its client may have gone as well
                await _close(scope, receive, send, started)


def _cancelled(e: BaseException) -> bool:
    """The request's task was cancelled: `e` is the cancel, or an error its handler's cleanup
    raised meanwhile (a `ws.close()` in a `finally`, on the connection the server has closed),
    the cancel still pending on the task."""
    task = asyncio.current_task()
    return isinstance(e, asyncio.CancelledError) or (task is not None and task.cancelling() > 0)


async def _close(scope: Scope, receive: Receive, send: Send, started: bool) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1001, "reason": "server shutting down"})
    elif not started:
        detail = "the server is shutting down: try again (another controller, or this one)"
        await problem(503, "Shutting down", detail, {"Retry-After": "1"})(scope, receive, send)
