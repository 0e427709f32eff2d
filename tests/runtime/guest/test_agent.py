"""hutch-agent's protocol, exercised directly: in --listen-fd mode it is an ordinary process, so
these tests need no VM and no container (the contract tests run it in both)."""

import asyncio
import os
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.model.sandbox import ProcessSpec, User
from hutch.runtime.channel import (
    HEADER,
    INITIAL_WINDOW,
    Connection,
    Frame,
    T,
    decode_exit,
    decode_u32,
    encode_frame,
    encode_process,
)
from hutch.runtime.guest.build import GuestArtifacts

PATH = ("PATH=/usr/bin:/bin",)


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    sock: Path

    async def connect(self) -> Connection:
        conn = await Connection.open(str(self.sock), timeout=5)
        await asyncio.wait_for(conn.hello(), 5)
        return conn


@pytest.fixture
async def agent(guest: GuestArtifacts, short_dir: Path) -> AsyncIterator[Agent]:
    path = short_dir / "a.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    proc = subprocess.Popen(
        [str(guest.agent), "--listen-fd", "3"],
        pass_fds=(3,),
        preexec_fn=lambda: os.dup2(listener.fileno(), 3),
    )
    listener.close()
    yield Agent(proc, path)
    proc.kill()
    proc.wait()


def spec(*args: str, **kw: object) -> bytes:
    return encode_process(ProcessSpec(args=args, env=PATH, **kw))  # type: ignore[arg-type]


async def frames_until_exit(conn: Connection, proc_id: int, ack: bool = True) -> list[Frame]:
    out = []
    while True:
        frame = await asyncio.wait_for(conn.recv(), 10)
        assert frame is not None, "connection closed before EXIT"
        if frame.id != proc_id:
            continue
        out.append(frame)
        if frame.type == T.EXIT:
            if ack:
                await conn.send(T.EXIT_ACK, proc_id)
            return out


def collect(frames: list[Frame], type_: T) -> bytes:
    return b"".join(f.payload for f in frames if f.type == type_)


async def test_main_process_streams_apart_and_exit_code(agent: Agent) -> None:
    conn = await agent.connect()
    await conn.send(T.RUN, 1, spec("/bin/sh", "-c", "echo out; echo err >&2; exit 3"))
    frames = await frames_until_exit(conn, 1)
    assert collect(frames, T.STDOUT) == b"out\n"
    assert collect(frames, T.STDERR) == b"err\n"
    assert decode_exit(frames[-1].payload) == (3, 0, False)
    # both streams end (empty frames) before the exit
    eofs = [f.type for f in frames[:-1] if f.type in (T.STDOUT, T.STDERR) and not f.payload]
    assert sorted(eofs) == [T.STDOUT, T.STDERR]
    assert agent.proc.wait(5) == 0  # acknowledged main exit: the agent is done


async def test_env_cwd_and_user(agent: Agent, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    conn = await agent.connect()
    payload = encode_process(
        ProcessSpec(
            args=("/bin/sh", "-c", "echo $GREETING; pwd; id -u; id -g; id -G"),
            env=(*PATH, "GREETING=hi there"),
            cwd=str(tmp_path),
            user=User(1000, 1000, (1000, 2000)),
        )
    )
    await conn.send(T.RUN, 1, payload)
    frames = await frames_until_exit(conn, 1)
    assert collect(frames, T.STDOUT).decode().split("\n")[:5] == [
        "hi there",
        str(tmp_path),
        "1000",
        "1000",
        "1000 2000",
    ]


async def test_spawn_failures_are_explained(agent: Agent) -> None:
    conn = await agent.connect()
    await conn.send(T.EXEC, 5, spec("/no/such/binary"))
    frames = await frames_until_exit(conn, 5)
    assert b"No such file" in collect(frames, T.ERROR)
    assert decode_exit(frames[-1].payload)[0] == 127
    await conn.send(T.EXEC, 6, encode_process(ProcessSpec(args=("/bin/true",), cwd="/no/dir")))
    frames = await frames_until_exit(conn, 6)
    assert b"working directory /no/dir" in collect(frames, T.ERROR)
    assert decode_exit(frames[-1].payload)[0] == 126
    await conn.send(T.EXEC, 7, b"\x01\xff\xff\xff\xff")  # a record longer than the frame
    frames = await frames_until_exit(conn, 7)
    assert b"malformed" in collect(frames, T.ERROR)


async def test_exec_with_stdin(agent: Agent) -> None:
    conn = await agent.connect()
    await conn.send(T.EXEC, 9, spec("/bin/sh", "-c", "read a; read b; echo got $a $b", stdin=True))
    await conn.send(T.STDIN, 9, b"one\ntwo\n")
    await conn.send(T.STDIN, 9, b"")
    frames = await frames_until_exit(conn, 9)
    assert collect(frames, T.STDOUT) == b"got one two\n"
    assert decode_u32(next(f for f in frames if f.type == T.STDIN_ACK).payload) == 8


async def test_signal_reaches_the_process(agent: Agent) -> None:
    conn = await agent.connect()
    script = "trap 'echo term; exit 42' TERM; echo ready; while :; do sleep 0.05; done"
    await conn.send(T.EXEC, 2, spec("/bin/sh", "-c", script))
    while True:
        frame = await asyncio.wait_for(conn.recv(), 10)
        assert frame is not None
        if frame.type == T.STDOUT and b"ready" in frame.payload:
            break
    await conn.send(T.SIGNAL, 2, (15).to_bytes(4, "big"))
    frames = await frames_until_exit(conn, 2)
    assert b"term" in collect(frames, T.STDOUT)
    assert decode_exit(frames[-1].payload) == (42, 0, False)
    await conn.send(T.EXEC, 3, spec("/bin/sleep", "30"))
    await conn.send(T.SIGNAL, 3, (9).to_bytes(4, "big"))
    frames = await frames_until_exit(conn, 3)
    assert decode_exit(frames[-1].payload) == (137, 9, False)


async def test_output_waits_for_the_window(agent: Agent) -> None:
    conn = await agent.connect()
    total = 4 * INITIAL_WINDOW
    await conn.send(T.EXEC, 4, spec("/bin/sh", "-c", f"head -c {total} /dev/zero"))
    got = 0
    while True:
        try:
            frame = await asyncio.wait_for(conn.recv(), 1.0)
        except TimeoutError:
            break  # the guest stopped: window spent
        assert frame is not None
        if frame.type == T.STDOUT:
            got += len(frame.payload)
    assert got == INITIAL_WINDOW
    await conn.send(T.WINDOW, 4, total.to_bytes(4, "big"))
    frames = await frames_until_exit(conn, 4)
    assert got + len(collect(frames, T.STDOUT)) == total


async def test_unacknowledged_exit_is_sent_again_after_reconnect(agent: Agent) -> None:
    conn = await agent.connect()
    await conn.send(T.RUN, 1, spec("/bin/sh", "-c", "exit 7"))
    frames = await frames_until_exit(conn, 1, ack=False)
    assert decode_exit(frames[-1].payload)[0] == 7
    await conn.close()  # a host crash before it stored the exit
    conn = await agent.connect()
    hello = await conn.hello()
    assert hello.main_started
    frames = await frames_until_exit(conn, 1)
    assert decode_exit(frames[-1].payload)[0] == 7
    assert agent.proc.wait(5) == 0


async def test_running_process_survives_a_host_reconnect(agent: Agent) -> None:
    conn = await agent.connect()
    script = "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 0.02; done; exit 4"
    await conn.send(T.RUN, 1, spec("/bin/sh", "-c", script))
    frame = await asyncio.wait_for(conn.recv(), 10)
    assert frame is not None
    await conn.close()
    await asyncio.sleep(0.3)  # the workload runs on while no host is connected
    conn = await agent.connect()
    frames = await frames_until_exit(conn, 1)
    assert b"tick 39\n" in collect(frames, T.STDOUT)
    assert decode_exit(frames[-1].payload)[0] == 4


async def test_garbage_makes_the_agent_resynchronise(agent: Agent) -> None:
    reader, writer = await asyncio.open_unix_connection(str(agent.sock))
    writer.write(b"HUTCHSYN" + bytes(16))
    writer.write(HEADER.pack(200, 1, 0xFFFFFFF0))  # absurd length: the agent must not wait for it
    nonce = os.urandom(16)
    writer.write(b"HUTCHSYN" + nonce)
    writer.write(encode_frame(T.EXEC, 2, spec("/bin/echo", "still here")))
    data = b""
    while b"still here" not in data:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk
        data += chunk
    assert b"HUTCHACK" + nonce in data
    writer.close()


def test_unknown_arguments_are_refused(guest: GuestArtifacts) -> None:
    out = subprocess.run([str(guest.agent), "--bogus"], capture_output=True, check=False)
    assert out.returncode == 2
    assert b"usage" in out.stderr
    out = subprocess.run([str(guest.agent), "--listen-fd", "9"], capture_output=True, check=False)
    assert out.returncode == 2
    assert b"not an open file descriptor" in out.stderr


def test_frame_header_layout() -> None:
    assert (
        encode_frame(T.SIGNAL, 3, b"\x00\x00\x00\x0f")
        == struct.pack(">B3xII", 4, 3, 4) + b"\x00\x00\x00\x0f"
    )
