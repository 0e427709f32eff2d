"""Idle machines on the node: the connections seen to their published ports, reported to the
controller (which stops or suspends a machine none came to for its `idle_s`), and the waker,
which resumes a machine that idled to suspended when a connection comes to one of its ports.

The waker: while a sandbox sleeps (`Assignment.idled`), the node does not forward its published
ports (`NodeNetwork.set_asleep`), so a new connection lands in the accept queue of the socket
that holds the port on the node. Nothing else can reach that socket: it is the published port
itself, and sandboxes never reach the node's own ports. The waker accepts it (and closes it at
once if the machine's security groups would not let its client in: its own connection to the
machine, from the node, does not meet them again), asks the controller to resume the machine,
connects to the guest's port once the guest answers there (within WAKE_WAIT, else it closes
the client's connection) and copies bytes both ways until both ends are done. Once the
machine runs, its ports are forwarded again; connections held meanwhile keep their copy. A
flood of connections holds at most HELD_MAX per machine (the rest are closed at once) and asks
the controller once (one wake call in flight per machine)."""

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hutch.model.errors import HutchError
from hutch.model.machine import Desired
from hutch.model.network import PortMapping
from hutch.network.activity import Flow, Target, active
from hutch.network.node import NodeNetwork
from hutch.wire.nodes import Assignment

log = logging.getLogger("hutch.agent.idle")
PERIOD = 0.5  # seconds between two looks at the connections: how late activity may be seen
REPORT_MAX = 30.0  # seconds: a machine in use is reported at least this often
WAKE_WAIT = 60.0  # seconds a held connection waits for its guest to answer
CHUNK = 1 << 16
HELD_MAX = 64  # connections held per sleeping machine: each is a descriptor, for WAKE_WAIT

Run = Callable[..., Awaitable[object]]  # runs a blocking function on the network thread


@dataclass(frozen=True, slots=True)
class _Sleeper:
    sandbox: str
    machine: str
    generation: int
    ip4: str


class Idleness:
    """The node agent's part in machines' idleness: `look` every PERIOD, `sleepers` on every
    answer of the controller's."""

    def __init__(
        self,
        network: NodeNetwork,
        in_net_thread: Run,
        report: Callable[[dict[str, float]], Awaitable[None]],
        wake: Callable[[str, int, int], Awaitable[None]],
    ) -> None:
        self.network = network
        self._net = in_net_thread
        self._report = report
        self._wake = wake
        self._sent: dict[str, float] = {}  # machine -> when its activity was last reported
        self._before: set[str] = set()  # the keys of the flows the last look saw
        # sandbox -> the tasks accepting on its ports while it sleeps
        self._accepting: dict[str, list[asyncio.Task[None]]] = {}
        self._held: dict[str, set[asyncio.Task[None]]] = {}  # sandbox -> its held connections
        self._waking: dict[str, asyncio.Future[None]] = {}  # sandbox -> its wake call in flight

    async def look(self, assignments: list[Assignment]) -> None:
        """Report the machines that idle (and run) whose published ports have a connection
        now, each at most every quarter of its idle_s (and at least every REPORT_MAX)."""
        targets: dict[Target, Assignment] = {}
        for a in assignments:
            if a.idle_s is not None and a.desired is Desired.RUNNING and a.networks:
                for p in a.ports:
                    targets[(p.protocol, a.networks[0].ip4, p.port)] = a
        if not targets:
            self._before = set()
            return
        flows: list[Flow] = await self._net(self.network.flows, list(targets))  # type: ignore[assignment]
        seen = active(flows, self._before)
        self._before = {f.key for f in flows}
        now = time.time()
        due: dict[str, float] = {}
        for target in seen:
            a = targets[target]
            every = min(max((a.idle_s or 0.0) / 4, PERIOD), REPORT_MAX)
            if now - self._sent.get(a.machine, 0.0) >= every:
                due[a.machine] = now
        if due:
            await self._report(due)
            self._sent.update(due)

    async def sleepers(self, assignments: list[Assignment]) -> None:
        """The sandboxes that idled to suspended (and publish a port) sleep: their new
        connections come to the waker. Those that wake are forwarded again."""
        asleep = {a.sandbox: a for a in assignments if a.idled and a.networks and a.ports}
        socks: dict[str, dict[PortMapping, socket.socket]] = await self._net(  # type: ignore[assignment]
            self.network.set_asleep, list(asleep)
        )
        for sandbox in [s for s in self._accepting if s not in asleep]:
            for task in self._accepting.pop(sandbox):
                task.cancel()
        for sandbox, held in socks.items():
            a = asleep[sandbox]
            sleeper = _Sleeper(sandbox, a.machine, a.generation, a.networks[0].ip4)
            self._accepting[sandbox] = [
                asyncio.create_task(self._accept(sleeper, p, sock)) for p, sock in held.items()
            ]

    async def close(self) -> None:
        held = [*self._accepting.values(), *self._held.values(), self._waking.values()]
        tasks: list[asyncio.Future[None]] = [t for ts in held for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, s: _Sleeper, p: PortMapping, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        try:
            while True:
                client, (remote, _) = await loop.sock_accept(listener)
                held = self._held.setdefault(s.sandbox, set())
                if len(held) >= HELD_MAX or not self.network.admits(s.sandbox, p.port, remote):
                    client.close()  # too many, or its security groups would not let it in
                    continue
                task = asyncio.create_task(self._hold(s, p, client))
                held.add(task)
                task.add_done_callback(functools.partial(self._release, s.sandbox))
        finally:
            listener.close()

    async def _hold(self, s: _Sleeper, p: PortMapping, client: socket.socket) -> None:
        """Wake the machine, wait for its guest to answer on the port, then copy both ways."""
        guest: socket.socket | None = None
        try:
            try:
                await asyncio.shield(self._wake_once(s, p))
            except HutchError as e:
                log.warning("machine %s not woken by a connection: %s", s.machine, e.message)
                return
            guest = await self._connect(s.ip4, p.port)
            if guest is None:
                log.warning(
                    "machine %s did not answer on port %d within %.0f s: connection closed",
                    s.machine, p.port, WAKE_WAIT,
                )  # fmt: skip
                return
            await _splice(client, guest)
        finally:
            client.close()
            if guest is not None:
                guest.close()

    def _release(self, sandbox: str, task: asyncio.Task[None]) -> None:
        held = self._held.get(sandbox, set())
        held.discard(task)
        if not held:
            self._held.pop(sandbox, None)

    def _wake_once(self, s: _Sleeper, p: PortMapping) -> asyncio.Future[None]:
        """The wake call for `s`: the one in flight, or a new one (by a connection to `p`)."""
        if (task := self._waking.get(s.sandbox)) is None:
            task = asyncio.ensure_future(self._wake(s.machine, s.generation, p.host_port))
            self._waking[s.sandbox] = task
            task.add_done_callback(lambda _: self._waking.pop(s.sandbox, None))
        return task

    async def _connect(self, ip4: str, port: int) -> socket.socket | None:
        """A connection to the guest's port, tried until it answers (None after WAKE_WAIT)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAKE_WAIT
        while loop.time() < deadline:
            sock: socket.socket = await self._net(self.network.waker_socket)  # type: ignore[assignment]
            sock.setblocking(False)
            try:
                async with asyncio.timeout(min(1.0, max(deadline - loop.time(), 0.01))):
                    await loop.sock_connect(sock, (ip4, port))
            except OSError:  # refused, unreachable, timed out (TimeoutError): not back yet
                sock.close()
                await asyncio.sleep(0.05)
            else:
                return sock
        return None


async def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both directions have ended (a half-close is passed on)."""
    loop = asyncio.get_running_loop()
    a.setblocking(False)

    async def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := await loop.sock_recv(src, CHUNK):
                await loop.sock_sendall(dst, data)
            dst.shutdown(socket.SHUT_WR)

    await asyncio.gather(pump(a, b), pump(b, a))
