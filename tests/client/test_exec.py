"""Exec sessions against a server that refuses at once: the refusal is raised, whether it
closed before or after the client sent its start message."""

import json
import threading
from collections.abc import Iterator

import pytest
from websockets.sync.server import ServerConnection, serve

from hutch.client import Unauthenticated
from hutch.client.exec import AsyncExecSession, ExecSession, Opening

REFUSAL = {"type": "error", "status": 401, "title": "Unauthenticated", "detail": "unknown token"}


@pytest.fixture(scope="module")
def refusing() -> Iterator[Opening]:
    def handler(ws: ServerConnection) -> None:
        ws.send(json.dumps(REFUSAL))  # then close, without reading the start
        ws.close()

    with serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        yield Opening(f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{port}", {}, "{}", 5.0)
        server.shutdown()


def test_a_refusal_before_the_start_is_raised(refusing: Opening) -> None:
    for _ in range(20):  # the close races the client's send: both orders must raise it
        session = None
        with pytest.raises(Unauthenticated, match="unknown token"):
            session = ExecSession.open(refusing)
            session.wait()
        if session is not None:
            session.close()


async def test_a_refusal_before_the_start_is_raised_async(refusing: Opening) -> None:
    for _ in range(20):
        session = None
        with pytest.raises(Unauthenticated, match="unknown token"):
            session = await AsyncExecSession.open(refusing)
            await session.wait()
        if session is not None:
            await session.close()
