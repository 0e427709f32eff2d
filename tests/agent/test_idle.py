"""The waker under a flood: connections to a sleeping machine's published port are held up to
HELD_MAX at a time (more are closed at once: each holds a descriptor of the node agent's for up
to WAKE_WAIT), and one controller call wakes it, however many connections came. Real sockets on
the loopback; the node's network stood in for (tests/network/test_node.py has the real one)."""

import asyncio
import contextlib
import socket
from types import SimpleNamespace

from hutch.agent import idle
from hutch.agent.idle import Idleness
from hutch.model.network import PortMapping


class _Network:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4 * idle.HELD_MAX)
        self.port = self.listener.getsockname()[1]

    def set_asleep(self, sandboxes: list[str]) -> dict[str, dict[PortMapping, socket.socket]]:
        return {s: {PortMapping.parse(f"{self.port}:80"): self.listener} for s in sandboxes}

    def admits(self, sandbox: str, port: int, remote: str) -> bool:
        return True

    def waker_socket(self) -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


async def test_a_flood_of_connections_to_a_sleeping_machine_is_bounded_and_wakes_it_once() -> None:
    network = _Network()
    woken: list[str] = []
    never = asyncio.Event()

    async def wake(machine: str, generation: int, port: int) -> None:
        woken.append(machine)
        await never.wait()  # a resume that takes its time

    async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
        return fn(*args)

    async def report(seen: dict[str, float]) -> None:
        pass

    waker = Idleness(network, in_thread, report, wake)  # type: ignore[arg-type]
    a = SimpleNamespace(  # the fields of an Assignment the waker reads
        machine="m-1", sandbox="s-1", generation=1, idled=True,
        networks=[SimpleNamespace(ip4="127.0.0.2")], ports=[80],
    )  # fmt: skip
    await waker.sleepers([a])  # type: ignore[list-item]
    clients = [
        socket.create_connection(("127.0.0.1", network.port)) for _ in range(2 * idle.HELD_MAX)
    ]
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            closed = 0
            for c in clients:
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    closed += c.recv(1) == b""
            if closed >= idle.HELD_MAX:
                break
        assert closed == idle.HELD_MAX, closed  # the rest are held
        assert woken == ["m-1"], woken
    finally:
        for c in clients:
            c.close()
        await waker.close()
        network.listener.close()
