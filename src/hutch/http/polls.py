"""Long polls that end with their client: a poll's handler would otherwise wait out its whole
wait for nobody, and hold a server's shutdown for its grace."""

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


async def unless_gone(request: Request, work: Awaitable[T]) -> T | None:
    """What `work` gives, or None (it cancelled) once the client has gone."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not gone.done():
            gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if gone.done() and not gone.cancelled() and (refused := gone.exception()) is not None:
        raise refused  # reading the request failed (a body past the limit: 413), not the client
    return None if task.cancelled() else task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the request's body (a poll's is empty): the next message is its end
