import asyncio
import struct
from pathlib import Path

import pytest

from hutch.model.sandbox import ProcessSpec, User
from hutch.runtime.channel import (
    ACK,
    SYN,
    Connection,
    ProtocolError,
    T,
    decode_exit,
    encode_frame,
    encode_process,
)


async def fake_guest(path: Path, reply: bytes) -> asyncio.AbstractServer:
    """Answers the handshake after `reply` (stale bytes), then echoes nothing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await reader.readexactly(len(SYN) + 16)
        nonce = hello[len(SYN) :]
        writer.write(reply + ACK + nonce + struct.pack(">IIQ", 1, 1, 123))
        writer.write(encode_frame(T.STDOUT, 1, b"hi") + struct.pack(">B3xII", 18, 1, 1 << 30))
        await writer.drain()

    return await asyncio.start_unix_server(handle, str(path))


async def test_handshake_skips_stale_bytes_and_frames_follow(short_dir: Path) -> None:
    server = await fake_guest(short_dir / "g.sock", b"\x12\x00 stale half frame" * 1000)
    conn = await Connection.open(str(short_dir / "g.sock"), timeout=2)
    frame = await conn.recv()  # does the handshake itself
    hello = await conn.hello()
    assert (hello.version, hello.main_started, hello.uptime_ns) == (1, True, 123)
    assert frame is not None and (frame.type, frame.id, frame.payload) == (T.STDOUT, 1, b"hi")
    with pytest.raises(ProtocolError, match="limit"):  # a hostile length is refused, not read
        await conn.recv()
    await conn.close()
    server.close()


async def test_open_gives_up_when_nothing_listens(short_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await Connection.open(str(short_dir / "none.sock"), timeout=0.05)


def test_process_spec_encoding_is_tagged_records() -> None:
    data = encode_process(ProcessSpec(args=("a",), env=("K=V",), cwd="/w", user=User(1, 2, (3,))))
    tags = []
    off = 0
    while off < len(data):
        tag, length = struct.unpack(">BI", data[off : off + 5])
        tags.append((tag, data[off + 5 : off + 5 + length]))
        off += 5 + length
    assert tags == [
        (1, b"a"), (2, b"K=V"), (3, b"/w"), (4, b"\0\0\0\1"), (5, b"\0\0\0\2"),
        (6, b"\0\0\0\3"), (7, b"\0"),
    ]  # fmt: skip


def test_exit_decoding_clamps_hostile_values() -> None:
    assert decode_exit(struct.pack(">iII", 300, 99, 1)) == (300 & 0xFF, 0, True)
    with pytest.raises(ProtocolError):
        decode_exit(b"\0")
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(T.STDIN, 2, bytes(2 << 20))
