"""A relayed stream whose node stops answering midway ends cut short, not as a traceback."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from starlette.types import Message

from hutch.http.streaming import leased
from hutch.model.errors import Unavailable


class _Streams:
    def release(self, lease: object) -> None:
        pass


async def test_a_node_that_stops_answering_midway_cuts_the_body() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"data": "tick 1"}\n'
        raise Unavailable("node vm stopped answering: incomplete chunked read")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    response = leased(cast(Any, _Streams()), cast(Any, object()), body(), "application/x-ndjson")
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET", "path": "/x"}
    await response(scope, receive, send)  # no error: nothing for the server to log
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1]["more_body"] is True  # not ended: the client sees it incomplete
