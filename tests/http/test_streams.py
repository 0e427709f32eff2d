"""hutch.http.streams: what a session keeps of a client's messages while its machine boots."""

import asyncio
from typing import Any, cast

import pytest
from fastapi import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection

from hutch.http.streams import EARLY_MAX, _gone, _meanwhile

CHUNK = 64 << 10


class Typist:
    """A client that sends stdin frames as fast as it is read, or leaves after `leaves_after`."""

    def __init__(self, leaves_after: int | None = None) -> None:
        self.reads = 0
        self.leaves_after = leaves_after

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        await asyncio.sleep(0)
        if self.leaves_after is not None and self.reads > self.leaves_after:
            return {"type": "websocket.disconnect", "code": 1000}
        return {"type": "websocket.receive", "bytes": b"\0" + b"x" * (CHUNK - 1)}


async def test_what_a_client_sends_while_it_waits_is_kept_in_order_up_to_a_bound() -> None:
    client, opened = Typist(), asyncio.get_running_loop().create_future()
    upstream = cast(ClientConnection, object())
    waiting = asyncio.ensure_future(_meanwhile(cast(WebSocket, client), opened))
    for _ in range(200):  # time to read far more than the bound, were it read
        await asyncio.sleep(0)
    assert client.reads == EARLY_MAX // CHUNK  # the rest waits in the client's socket
    opened.set_result(upstream)
    got = await waiting
    assert got is not None and got[0] is upstream
    assert sum(len(m["bytes"]) for m in got[1]) == EARLY_MAX


async def test_a_client_that_leaves_ends_the_wait() -> None:
    cancelled = asyncio.Event()

    async def boots_for_ever() -> ClientConnection:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    got = await asyncio.wait_for(
        _meanwhile(cast(WebSocket, Typist(leaves_after=3)), boots_for_ever()), 5
    )
    assert got is None and cancelled.is_set()


def test_a_client_already_gone_leaves_no_traceback() -> None:
    """Closing a socket whose client has gone raises (Starlette turns the server's OSError into
    WebSocketDisconnect): uvicorn logged it as an exception in the application after an
    exec, 3 times in 9."""
    for raised in (WebSocketDisconnect(1006), RuntimeError("closed")):
        with _gone():
            raise raised
    with pytest.raises(ValueError, match="not a gone client's"), _gone():
        raise ValueError("not a gone client's")
