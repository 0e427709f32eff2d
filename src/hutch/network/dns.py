"""DNS for the node's networks: `NAME.PROJECT.internal` and `ID.PROJECT.internal` (A, AAAA) for
the machines of one network, answered on that network's gateway, port 53, UDP and TCP.

Records are per network: a query that arrives on network X's bridge is answered from X's zone
only, so it can never reveal a machine of another network or project (each bridge has sockets of
its own, bound to its device and gateway addresses). Names under `.internal` that the zone does
not hold are NXDOMAIN; everything else is REFUSED: this is not an open resolver and never recurses.

The wire format is parsed here, small and strict: a query is at most 512 bytes, one question, no
answer or authority records, and a question name without compression pointers (the only name of a
query has nothing before it to point to; rejecting pointers makes loops impossible). Work per
packet is bounded by those 512 bytes and one dict lookup.
"""

import asyncio
import ipaddress
import logging
import re
import socket
import struct
import threading
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from hutch.model.errors import Invalid

log = logging.getLogger("hutch.network.dns")
T = TypeVar("T")

DOMAIN = "internal"
TTL = 5  # seconds: records change when machines come and go; the server itself changes at once
MAX_MESSAGE = 512  # bytes: the classic UDP limit; a stub resolver's query is far smaller
MAX_NAME = 255  # bytes of a name in wire form (RFC 1035 2.3.4)
MAX_ANSWERS = 16  # records of one type for one name: keeps every answer under 512 bytes
HEADER = struct.Struct("!6H")  # id, flags, qdcount, ancount, nscount, arcount
TYPE_A, TYPE_AAAA, TYPE_ANY = 1, 28, 255
CLASS_IN = 1
QR, AA, RD = 0x8000, 0x0400, 0x0100
NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# TCP: a client that holds a connection open gets this long between queries, and this many
# connections per listener at once; one that does not read its answers is cut off.
TCP_IDLE = 10.0
TCP_CONNECTIONS = 32
TCP_BUFFER = 64 * 1024


class Malformed(ValueError):
    """A query that cannot be answered other than with FORMERR."""


@dataclass(frozen=True, slots=True)
class Record:
    """One name and its addresses: `web.demo.internal` -> 10.96.3.7, fd..::7."""

    name: str  # fully qualified, without the final dot, under `.internal`
    ip4: str = ""
    ip6: str = ""

    def __post_init__(self) -> None:
        labels = self.name.lower().rstrip(".").split(".")
        if labels[-1] != DOMAIN or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
            raise Invalid(f"DNS name {self.name!r} is not NAME.PROJECT.{DOMAIN}")
        for version, value in ((4, self.ip4), (6, self.ip6)):
            try:
                ok = not value or ipaddress.ip_address(value).version == version
            except ValueError:
                ok = False
            if not ok:
                raise Invalid(f"{value!r} is not an IPv{version} address")


class Peer(Protocol):
    """What the controller tells a node about a machine on one of its networks (`PeerView`)."""

    @property
    def network_id(self) -> str: ...
    @property
    def machine(self) -> str: ...  # the machine's id
    @property
    def name(self) -> str: ...
    @property
    def project(self) -> str: ...  # the project's name
    @property
    def ip4(self) -> str: ...
    @property
    def ip6(self) -> str: ...


def machine_records(name: str, machine_id: str, project: str, ip4: str, ip6: str) -> list[Record]:
    """`NAME.PROJECT.internal` and `ID.PROJECT.internal`; a name that is no DNS label (which the
    controller's naming rules should prevent) has no record rather than failing the zone."""
    out: list[Record] = []
    for label in dict.fromkeys((name.lower(), machine_id.lower())):
        try:
            out.append(Record(f"{label}.{project.lower()}.{DOMAIN}", ip4, ip6))
        except Invalid:
            log.warning("no DNS name for machine %s: %r.%r is not a DNS name", machine_id,
                        label, project)  # fmt: skip
    return out


def zones(peers: Iterable[Peer]) -> dict[str, list[Record]]:
    """Each network's records, from the controller's peer list."""
    out: dict[str, list[Record]] = {}
    for p in peers:
        out.setdefault(p.network_id, []).extend(
            machine_records(p.name, p.machine, p.project, p.ip4, p.ip6)
        )
    return out


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    labels: tuple[bytes, ...]  # lower-cased (ASCII only), without the root
    qtype: int
    qclass: int
    question: bytes  # the question as received (name's case too), echoed in the answer


def parse_query(data: bytes) -> Query:
    """The one question of a query; Malformed if it is not a plain, well-formed one."""
    if len(data) < HEADER.size:
        raise Malformed("shorter than a DNS header")
    if len(data) > MAX_MESSAGE:
        raise Malformed(f"longer than {MAX_MESSAGE} bytes")
    ident, flags, qdcount, ancount, nscount, _ = HEADER.unpack_from(data)
    if qdcount != 1:
        raise Malformed(f"{qdcount} questions, not one")
    if ancount or nscount:
        raise Malformed("a query with answer or authority records")
    labels: list[bytes] = []
    pos = HEADER.size
    while True:
        if pos >= len(data):
            raise Malformed("the name runs past the end")
        length = data[pos]
        if length & 0xC0:  # a compression pointer (0b11) or a long-gone label type
            raise Malformed("a compressed or extended label in the question")
        pos += 1
        if length == 0:
            break
        if pos + length > len(data):
            raise Malformed("a label runs past the end")
        labels.append(data[pos : pos + length].lower())
        pos += length
        if pos - HEADER.size > MAX_NAME:
            raise Malformed(f"a name longer than {MAX_NAME} bytes")
    if pos + 4 > len(data):
        raise Malformed("the question has no type and class")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return Query(ident, flags, tuple(labels), qtype, qclass, data[HEADER.size : pos + 4])


def _header(ident: int, flags: int, rcode: int, questions: int, answers: int) -> bytes:
    return HEADER.pack(ident, QR | flags | rcode, questions, answers, 0, 0)


class Zone:
    """One network's names, ready to answer from; immutable once made (swapped whole)."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        names: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        for r in records:
            v4, v6 = names.setdefault(r.name.lower().rstrip(".").encode(), ([], []))
            if r.ip4 and len(v4) < MAX_ANSWERS:
                v4.append(ipaddress.IPv4Address(r.ip4).packed)
            if r.ip6 and len(v6) < MAX_ANSWERS:
                v6.append(ipaddress.IPv6Address(r.ip6).packed)
        self._names = names

    def __len__(self) -> int:
        return len(self._names)

    def answer(self, data: bytes) -> bytes | None:
        """The response to the message `data`, or None when it gets none (not a query at all:
        too short or too long to be one, or a response)."""
        if len(data) < HEADER.size or len(data) > MAX_MESSAGE:
            return None
        ident, flags = struct.unpack_from("!HH", data)
        if flags & QR:  # never answer an answer: no loops between two servers
            return None
        rd = flags & RD
        if (flags >> 11) & 0xF:  # opcode: only QUERY (0)
            return _header(ident, rd | (flags & 0x7800), NOTIMP, 0, 0)
        try:
            q = parse_query(data)
        except Malformed:
            return _header(ident, rd, FORMERR, 0, 0)
        if not q.labels or q.labels[-1] != DOMAIN.encode() or q.qclass != CLASS_IN:
            return _header(ident, rd, REFUSED, 1, 0) + q.question
        found = self._names.get(b".".join(q.labels))
        if found is None:
            return _header(ident, rd | AA, NXDOMAIN, 1, 0) + q.question
        v4, v6 = found
        rrs: list[bytes] = []
        if q.qtype in (TYPE_A, TYPE_ANY):
            rrs += [_rr(TYPE_A, a) for a in v4]
        if q.qtype in (TYPE_AAAA, TYPE_ANY):
            rrs += [_rr(TYPE_AAAA, a) for a in v6]
        # A name that exists but has no record of the type asked: NOERROR and no answer (NODATA)
        return _header(ident, rd | AA, NOERROR, 1, len(rrs)) + q.question + b"".join(rrs)


def _rr(rtype: int, rdata: bytes) -> bytes:
    # the owner name is the question's, by a pointer to offset 12 (where the question starts)
    return struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata


EMPTY = Zone()


@dataclass(frozen=True, slots=True)
class Listener:
    """Where one network's DNS is answered on this node: its bridge's gateway addresses."""

    network_id: str
    bridge: str
    gateway4: str
    gateway6: str


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: "DnsServer", network_id: str) -> None:
        self.server, self.network_id = server, network_id
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (not an instance of DatagramTransport before Python 3.12, but one in all but name)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.server.zone(self.network_id).answer(data)
        # A full send buffer drops answers rather than queueing them without end.
        if reply and self.transport:
            # asyncio's datagram transports have it, typeshed does not say so
            queued: int = self.transport.get_write_buffer_size()  # type: ignore[attr-defined]
            if queued < TCP_BUFFER:
                self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors of earlier sends: nothing
        pass


class _Tcp(asyncio.Protocol):
    """Messages prefixed by their 2-byte length (RFC 1035 4.2.2), answered in order."""

    def __init__(self, server: "DnsServer", network_id: str, open_: set["_Tcp"]) -> None:
        self.server, self.network_id, self.open = server, network_id, open_
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.open) >= TCP_CONNECTIONS:
            transport.abort()
            return
        self.open.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle:
            self.idle.cancel()
        assert self.transport is not None
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if size > MAX_MESSAGE or self.transport.get_write_buffer_size() > TCP_BUFFER:
                self.transport.abort()
                return
            if len(self.buffer) < 2 + size:
                return
            message, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
            reply = self.server.zone(self.network_id).answer(message)
            if reply is None:
                self.transport.abort()
                return
            self.transport.write(struct.pack("!H", len(reply)) + reply)
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)
        if self.idle:
            self.idle.cancel()


@dataclass(slots=True)
class _Serving:
    key: tuple[Listener, int]  # the listener and its bridge's ifindex when the sockets opened
    closers: list[asyncio.BaseTransport | asyncio.Server]
    tcp: set[_Tcp]


class DnsServer:
    """The node's DNS: one zone per network, answered on each network's bridge.

    `update`/`sync` change the zones (from any thread; the next query sees them). `listen` is
    called by `NodeNetwork` from its thread, inside the node's network namespace, whenever its
    bridges change: the sockets are made there (so they live in that namespace) and served by
    the event loop given to `start`.
    """

    def __init__(self, port: int = 53) -> None:
        self.port = port
        self._zones: dict[str, Zone] = {}
        self._serving: dict[str, _Serving] = {}  # network id -> its sockets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Serve from the running event loop (where every socket's packets are handled)."""
        self._loop = asyncio.get_running_loop()

    def zone(self, network_id: str) -> Zone:
        return self._zones.get(network_id, EMPTY)

    def update(self, network_id: str, records: Iterable[Record]) -> None:
        """The records of one network, replacing what it had."""
        self._zones[network_id] = Zone(records)

    def sync(self, zones: Mapping[str, Iterable[Record]]) -> None:
        """Every network's records at once: networks not in `zones` have none any more."""
        fresh = {network: Zone(records) for network, records in zones.items()}
        self._zones = fresh

    def listen(self, listeners: Iterable[Listener]) -> None:
        """Answer on exactly these listeners' addresses: sockets for new ones opened (in the
        calling thread's network namespace), those of gone ones closed. Blocking: call from a
        thread other than the event loop's. A listener whose sockets cannot be opened is logged
        and tried again at the next call; the others are served."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # no server (a NodeNetwork in a test without DNS, or after close)
        with self._lock:
            wanted: dict[str, tuple[Listener, int]] = {}
            for listener in listeners:
                try:
                    wanted[listener.network_id] = (listener, socket.if_nametoindex(listener.bridge))
                except OSError:
                    log.warning("no bridge %s to answer DNS on", listener.bridge)
            gone = [n for n, s in self._serving.items() if wanted.get(n) != s.key]
            if gone:
                _call(loop, self._close([self._serving.pop(n) for n in gone]))
            for network_id, key in wanted.items():
                if network_id in self._serving:
                    continue
                try:
                    socks = _open_sockets(key[0], self.port)
                except OSError as e:
                    log.warning("cannot answer DNS on %s: %s", key[0].bridge, e)
                    continue
                self._serving[network_id] = _call(loop, self._serve(key, socks))

    async def _serve(self, key: tuple[Listener, int], socks: list[socket.socket]) -> _Serving:
        loop = asyncio.get_running_loop()
        network_id = key[0].network_id
        serving = _Serving(key, [], set())
        try:
            for sock in socks:
                if sock.type == socket.SOCK_DGRAM:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Udp(self, network_id), sock=sock
                    )
                    serving.closers.append(transport)
                else:
                    server = await loop.create_server(
                        lambda: _Tcp(self, network_id, serving.tcp), sock=sock
                    )
                    serving.closers.append(server)
        except BaseException:
            await self._close([serving])
            for sock in socks:
                sock.close()
            raise
        return serving

    async def _close(self, gone: list[_Serving]) -> None:
        for serving in gone:
            for closer in serving.closers:
                closer.close()
            for conn in list(serving.tcp):
                if conn.transport:
                    conn.transport.abort()

    async def close(self) -> None:
        """Stop answering: every socket closed."""
        with self._lock:
            gone, self._serving = list(self._serving.values()), {}
        await self._close(gone)
        self._loop = None


def _call(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on `loop` (another thread's) and wait for it."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("DnsServer.listen blocks: call it from a thread, not the event loop")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)


def _open_sockets(listener: Listener, port: int) -> list[socket.socket]:
    """UDP and TCP sockets on the listener's gateway addresses, bound to its bridge: only
    packets that arrive on that bridge reach them."""
    socks: list[socket.socket] = []
    try:
        for family, address in (
            (socket.AF_INET, listener.gateway4),
            (socket.AF_INET6, listener.gateway6),
        ):
            if not address:
                continue
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, listener.bridge.encode())
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(16)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
