"""Slow and greedy clients against the real controller over real sockets: headers that take too
long (slowloris) are cut with 408, a trickling body with 408, and one address's connection past
`connections_per_client` is refused with 429, while other clients are served."""

import asyncio
import contextlib
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from hutch import config
from hutch.api.app import create_app
from hutch.cli.servers import _server, _start
from hutch.controller import build_controller


@contextlib.asynccontextmanager
async def controller(**limits: float) -> AsyncIterator[tuple[int, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    settings = config.load(state_dir=tmp, join_secret="j" * 16, controller_secret="c" * 32,
                           **limits)  # fmt: skip
    server = _server(create_app(build_controller(settings), settings), "127.0.0.1", 0,
                     settings=settings)  # fmt: skip
    task, port = await _start(server)
    try:
        yield port, (tmp / "admin-token").read_text().strip()
    finally:
        server.should_exit = True
        await task


def answer_of(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """What the server sends until it closes (or `within` seconds pass), and when it closed."""
    sock.settimeout(within)
    start, got = time.monotonic(), b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(4096):
            got += chunk
    return got, time.monotonic() - start


async def test_headers_that_come_slowly_are_cut(tmp_path: Path) -> None:
    async with controller(header_timeout=1.0) as (port, _):

        def slowloris() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                for i in range(30):  # a header line every 0.2 s: never done
                    try:
                        s.sendall(b"X-%d: y\r\n" % i)
                    except OSError:
                        break
                    time.sleep(0.2)
                    s.settimeout(0.01)
                    with contextlib.suppress(TimeoutError):
                        if s.recv(1, socket.MSG_PEEK) is not None:
                            break
                return answer_of(s, 5)

        got, _ = await asyncio.to_thread(slowloris)
        assert got.startswith(b"HTTP/1.1 408"), got
        async with httpx.AsyncClient() as http:  # a client that sends its headers is served
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200


async def test_a_trickling_body_is_cut(tmp_path: Path) -> None:
    async with controller(body_timeout=1.0) as (port, admin):

        def trickle() -> bytes:
            body = b'{"name": "slow-project"}'
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          b"\r\nAuthorization: Bearer " + admin.encode() +
                          b"\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
                for byte in body:
                    try:
                        s.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.2)
                return answer_of(s, 5)[0]

        got = await asyncio.to_thread(trickle)
        assert got.startswith(b"HTTP/1.1 408"), got
        async with httpx.AsyncClient() as http:  # the same body sent at once is taken
            r = await http.post(f"http://127.0.0.1:{port}/v1/projects", json={"name": "quick"},
                                headers={"Authorization": f"Bearer {admin}"})  # fmt: skip
            assert r.status_code == 201, r.text


async def test_one_address_holds_a_limited_number_of_connections(tmp_path: Path) -> None:
    async with controller(connections_per_client=3, header_timeout=30) as (port, _):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            await asyncio.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port)) as fourth:
                got, _ = await asyncio.to_thread(answer_of, fourth, 5)
            assert got.startswith(b"HTTP/1.1 429"), got
            # another address is served meanwhile
            with socket.create_connection(
                ("127.0.0.1", port), source_address=("127.0.0.2", 0)
            ) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got, _ = await asyncio.to_thread(answer_of, s, 5)
            assert got.startswith(b"HTTP/1.1 200"), got
            held.pop().close()
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as http:  # a freed place is taken again
                assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        finally:
            for s in held:
                s.close()
