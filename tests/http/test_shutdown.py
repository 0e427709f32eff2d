"""Requests cancelled at the end of a server's shutdown grace end as their client can tell,
not as a traceback; a cancel while the server is not shutting down is left as it is."""

import asyncio
import json

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.http.shutdown import ClosedAtShutdown


class _Gone(Exception):
    """What a handler's cleanup raises when the server has closed its client's connection
    (starlette's WebSocketDisconnect from a `ws.close()` in a `finally`)."""


def _app(start: bool, kind: str = "http", cleanup_fails: bool = False) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if start:
            accept = {"type": "websocket.accept"} if kind == "websocket" else None
            await send(accept or {"type": "http.response.start", "status": 200, "headers": []})
        try:
            await asyncio.sleep(3600)  # a long poll, a followed log
        finally:
            if cleanup_fails:
                raise _Gone

    return app


async def _cancelled(
    kind: str, start: bool, closing: bool, cleanup_fails: bool = False
) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.sleep(3600)
        return {}

    scope = {"type": kind, "path": "/x", "headers": [], "method": "GET"}
    wrapped = ClosedAtShutdown(_app(start, kind, cleanup_fails), lambda: closing)
    task = asyncio.create_task(wrapped(scope, receive, send))
    await asyncio.sleep(0.01)
    task.cancel()
    await task  # ends: the cancel was the server's
    return sent


async def test_nothing_sent_yet_is_a_503_to_try_again() -> None:
    sent = await _cancelled("http", start=False, closing=True)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert "shutting down" in json.loads(sent[1]["body"])["detail"]


async def test_a_started_body_is_left_incomplete_and_a_websocket_goes_away() -> None:
    sent = await _cancelled("http", start=True, closing=True)
    assert [m["type"] for m in sent] == ["http.response.start"]  # no end: uvicorn cuts it
    sent = await _cancelled("websocket", start=True, closing=True)
    assert sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "server shutting down"}


async def test_a_cancel_while_serving_is_a_cancel() -> None:
    with pytest.raises(asyncio.CancelledError):
        await _cancelled("http", start=False, closing=False)


async def test_a_cancel_its_cleanup_hid_is_still_the_servers() -> None:
    # The node's exec session: cancelled at the grace's end, its `finally` closes a socket the
    # server has already closed, and that error (not the cancel) leaves the handler.
    sent = await _cancelled("websocket", start=True, closing=True, cleanup_fails=True)
    assert sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "server shutting down"}
    with pytest.raises(_Gone):  # while serving, an error is an error
        await _cancelled("websocket", start=True, closing=False, cleanup_fails=True)
