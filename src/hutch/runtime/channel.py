"""Host side of docs/guest-protocol.md: framing, the handshake, one connection to a guest agent."""

import asyncio
import contextlib
import os
import struct
import time
from dataclasses import dataclass
from enum import IntEnum

from hutch.model.sandbox import ProcessSpec

SYN = b"HUTCHSYN"
ACK = b"HUTCHACK"
NONCE_LEN = 16
HEADER = struct.Struct(">B3xII")
MAX_GUEST_PAYLOAD = 64 << 10  # the guest agent never sends more; a guest that does is cut off
MAX_HOST_PAYLOAD = 1 << 20
INITIAL_WINDOW = 256 << 10  # matches the guest agent: output it may send before we grant more
STDIN_WINDOW = 256 << 10


class T(IntEnum):
    RUN = 1
    EXEC = 2
    STDIN = 3
    SIGNAL = 4
    EXIT_ACK = 5
    WINDOW = 6
    RESIZE = 7
    FREEZE = 8  # payload: a mount point in the guest; answered by FS_DONE of the same id
    THAW = 9
    CLOCK = 10  # payload: u64 ns since the epoch: the guest sets CLOCK_REALTIME to it
    PAUSE = 11  # SIGSTOP every process but the guest agent; answered by FS_DONE of the same id
    CONTINUE = 12  # SIGCONT them (the guest agent does so itself after FREEZE_MAX_MS)
    IDENTITY = 13  # a clone's own identity (encode_identity); answered by FS_DONE
    PRELOAD = 14  # a process spec: its program into the page cache; answered by FS_DONE
    STARTED = 17
    STDOUT = 18
    STDERR = 19
    EXIT = 20
    ERROR = 21
    STDIN_ACK = 22
    FS_DONE = 23  # payload: u32 errno (0: done)


class _Tag(IntEnum):
    ARG = 1
    ENV = 2
    CWD = 3
    UID = 4
    GID = 5
    GROUP = 6
    STDIN = 7
    HOSTNAME = 8
    TTY = 9
    WINSIZE = 10


class _Id(IntEnum):
    HOSTNAME = 1
    MACHINE_ID = 2  # 32 lowercase hex digits, written to /etc/machine-id if the image has /etc
    ENTROPY = 3  # bytes the guest credits to its random pool (RNDADDENTROPY) and reseeds from
    MAC = 4  # u8 NIC index (eth<i>) + 6 bytes
    NET = 5  # eth0's addresses, routes, resolv.conf, hosts: the boot's flags (wiring.py)


def encode_identity(
    hostname: str, machine_id: str, entropy: bytes, macs: tuple[str, ...], net: str
) -> bytes:
    """IDENTITY's payload: a clone's hostname, machine-id, entropy, NIC MACs and network (each
    left out when empty)."""
    out = bytearray()

    def rec(tag: _Id, value: bytes) -> None:
        out.extend(struct.pack(">BI", tag, len(value)))
        out.extend(value)

    if hostname:
        rec(_Id.HOSTNAME, hostname.encode())
    if machine_id:
        rec(_Id.MACHINE_ID, machine_id.encode())
    if entropy:
        rec(_Id.ENTROPY, entropy)
    for index, mac in enumerate(macs):
        rec(_Id.MAC, bytes([index]) + bytes.fromhex(mac.replace(":", "")))
    if net:
        rec(_Id.NET, net.encode())
    return bytes(out)


class ProtocolError(Exception):
    """The guest broke the protocol: the connection is dropped, the host is unharmed."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    """What the guest agent says when a connection is established."""

    version: int
    main_started: bool
    uptime_ns: int


def encode_frame(type_: T, id_: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_HOST_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_HOST_PAYLOAD}")
    return HEADER.pack(type_, id_, len(payload)) + payload


def encode_process(spec: ProcessSpec, hostname: str = "") -> bytes:
    out = bytearray()

    def rec(tag: _Tag, value: bytes) -> None:
        out.extend(struct.pack(">BI", tag, len(value)))
        out.extend(value)

    for arg in spec.args:
        rec(_Tag.ARG, arg.encode())
    for env in spec.env:
        rec(_Tag.ENV, env.encode())
    rec(_Tag.CWD, spec.cwd.encode())
    rec(_Tag.UID, struct.pack(">I", spec.user.uid))
    rec(_Tag.GID, struct.pack(">I", spec.user.gid))
    for gid in spec.user.groups:
        rec(_Tag.GROUP, struct.pack(">I", gid))
    rec(_Tag.STDIN, b"\x01" if spec.stdin else b"\x00")
    if hostname:
        rec(_Tag.HOSTNAME, hostname.encode())
    if spec.tty:
        rec(_Tag.TTY, b"\x01")
        rec(_Tag.WINSIZE, encode_size(spec.rows, spec.cols))
    return bytes(out)


def encode_size(rows: int, cols: int) -> bytes:
    """A terminal size as WINSIZE and RESIZE carry it (each clamped to 16 bits)."""
    return struct.pack(">HH", min(max(rows, 0), 0xFFFF), min(max(cols, 0), 0xFFFF))


def encode_clock() -> bytes:
    """This host's time now, as CLOCK carries it."""
    return struct.pack(">Q", time.time_ns())


def decode_exit(payload: bytes) -> tuple[int, int, bool]:
    """(code, signal, oom_killed) from an EXIT payload."""
    if len(payload) < 12:
        raise ProtocolError("short EXIT frame")
    code, sig, flags = struct.unpack(">iII", payload[:12])
    return code & 0xFF, sig if 0 < sig < 65 else 0, bool(flags & 1)


def decode_u32(payload: bytes) -> int:
    if len(payload) < 4:
        raise ProtocolError("short frame")
    return int(struct.unpack(">I", payload[:4])[0])


class Connection:
    """One established connection: frames in, frames out.

    `open` returns once the socket is connected and SYN is sent, without waiting for the guest to
    answer (a VM that is still booting answers later); `hello()` waits for the answer. Frames may
    be sent right away: the guest agent reads them after the handshake.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nonce: bytes):
        self._reader = reader
        self._writer = writer
        self._nonce = nonce
        self._hello: Hello | None = None
        self._send_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, timeout: float) -> "Connection":
        """Connect to the unix socket at `path`, retrying until it exists or `timeout` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    path, limit=4 * MAX_GUEST_PAYLOAD
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.005)
        nonce = os.urandom(NONCE_LEN)
        writer.write(SYN + nonce)
        return cls(reader, writer, nonce)

    async def hello(self) -> Hello:
        """Wait for the guest agent's acknowledgement; everything before it is stale and dropped."""
        if self._hello is None:
            marker = ACK + self._nonce
            try:
                while True:
                    try:
                        await self._reader.readuntil(marker)
                        break
                    except asyncio.LimitOverrunError as e:
                        # A long stale prefix: drop the part that cannot hold the marker's start.
                        await self._reader.readexactly(e.consumed)
                version, flags, uptime = struct.unpack(">IIQ", await self._reader.readexactly(16))
            except asyncio.IncompleteReadError:
                raise ConnectionResetError(
                    "the guest agent closed the connection before answering"
                ) from None
            self._hello = Hello(version, bool(flags & 1), uptime)
        return self._hello

    async def recv(self) -> Frame | None:
        """The next frame, or None at end of stream (after the handshake, waiting for it)."""
        if self._hello is None:
            await self.hello()
        try:
            header = await self._reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError:
            return None
        type_, id_, length = HEADER.unpack(header)
        if length > MAX_GUEST_PAYLOAD:
            raise ProtocolError(f"guest sent a {length}-byte frame (limit {MAX_GUEST_PAYLOAD})")
        try:
            payload = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return None
        return Frame(type_, id_, payload)

    async def send(self, type_: T, id_: int, payload: bytes = b"") -> None:
        async with self._send_lock:
            self._writer.write(encode_frame(type_, id_, payload))
            await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
