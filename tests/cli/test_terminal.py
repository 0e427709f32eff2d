"""`hutch exec -it`: a terminal in the machine, driven from a real pseudo-terminal on the client
side (as a user's terminal emulator would), in both runtimes; and the SDK's `tty` sessions."""

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator

import pytest

from hutch.client import AsyncClient
from tests.controller import Controller, controller, new_project
from tests.helpers.cli import HUTCH, Hutch

__all__ = ["controller"]  # the session fixture, for the tests here

# busybox sh's prompt, as root or not, then (on a terminal) its query of the cursor's position
PROMPT = re.compile(rb"[#$] (?:\x1b\[6n)?$")


class Terminal:
    """A command run on a pseudo-terminal of its own (its controlling terminal): type into it,
    expect its output, resize its window."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            # its controlling terminal: SIGWINCH reaches it when the window changes
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 60) -> bytes:
        """Read until `pattern` shows up in what came since the last match; that part."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        while not (found := regex.search(self.seen)):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {regex.pattern!r} in {self.seen[-2000:]!r}")
        part, self.seen = self.seen[: found.end()], self.seen[found.end() :]
        return part

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:  # EIO: the command and its terminal are gone
            return False
        self.seen += data
        return bool(data)

    def wait(self, timeout: float = 60) -> int:
        """The command's exit status, once it ended and its output is read."""
        deadline = time.monotonic() + timeout
        while self._read(0.1) or self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: where it hangs
                time.sleep(1)
                self._read(1)
                raise AssertionError(f"still running; output {self.seen[-4000:]!r}")
            time.sleep(0.05)
        return self.proc.returncode

    def modes(self) -> tuple[int, int]:
        """(lflag, oflag) of the client's terminal: raw mode clears ICANON, ECHO and OPOST."""
        attrs = termios.tcgetattr(self.master)
        return attrs[3] & (termios.ICANON | termios.ECHO | termios.ISIG), attrs[1] & termios.OPOST

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def env(controller: Controller) -> dict[str, str]:
    project = new_project(controller)
    return {**controller.env, "HUTCH_PROJECT": project, "PYTHONFAULTHANDLER": "1"}


@pytest.fixture
def terminals(env: dict[str, str]) -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def _machine(env: dict[str, str], runtime: str) -> str:
    hutch = Hutch(env)
    started = hutch("run", "-d", "--runtime", runtime, "busybox", "--", "sleep", "3600")
    assert started.returncode == 0, started.stderr
    machine = started.stdout.strip()
    for _ in range(200):  # `run -d` returns before the machine runs
        ran = hutch("exec", machine, "--", "true")
        if ran.returncode == 0:
            break
        time.sleep(0.5)
    assert ran.returncode == 0, ran.stderr
    return machine


def _running(env: dict[str, str], machine: str, what: str) -> bool:
    """Whether a process whose command line is `what` runs in the machine."""
    found = Hutch(env)("exec", machine, "--", "sh", "-c", f"ps -o args | grep -x '{what}'")
    return found.returncode == 0


def _shell_session(env: dict[str, str], terminals: list[Terminal], machine: str) -> None:
    """What a user does in `hutch exec -it MACHINE sh`, checked step by step."""
    term = Terminal([HUTCH, "exec", "-it", machine, "--", "sh"], env, rows=30, cols=100)
    terminals.append(term)
    before = term.modes()
    term.expect(PROMPT)
    assert term.modes() == (0, 0)  # raw mode while the session runs
    use_the_shell(term, env, machine)
    term.type(b"exit 3\r")
    assert term.wait() == 3
    assert term.modes() == before  # the client's terminal is restored


def use_the_shell(term: Terminal, env: dict[str, str], machine: str) -> None:
    """Arithmetic, the tty, its size at 30x100 then resized, and Ctrl-C of a foreground job."""
    term.type(b"echo $((6*7))\r")
    assert b"42\r\n" in term.expect(PROMPT)  # the remote terminal turns \n into \r\n
    term.type(b"tty\r")
    assert re.search(rb"/dev/pts/\d+\r\n", term.expect(PROMPT))
    term.type(b"stty size; echo $TERM\r")
    assert b"30 100\r\nxterm\r\n" in term.expect(PROMPT)
    term.resize(45, 132)  # the client's window changes: SIGWINCH, then a resize message
    for _ in range(100):
        term.type(b"stty size\r")
        if b"45 132" in term.expect(PROMPT):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the terminal was never resized")
    term.type(b"sleep 1234\r")
    for _ in range(100):
        if _running(env, machine, "sleep 1234"):
            break
        time.sleep(0.2)
    term.type(b"\x03")  # Ctrl-C: SIGINT for the foreground job, the shell goes on
    term.expect(PROMPT)
    term.type(b"echo status $?\r")
    assert b"status 130" in term.expect(PROMPT)
    assert not _running(env, machine, "sleep 1234")


def test_exec_it_is_a_terminal_in_a_container(
    env: dict[str, str], terminals: list[Terminal]
) -> None:
    machine = _machine(env, "container")
    _shell_session(env, terminals, machine)
    # Ctrl-D ends the shell's input: it exits 0
    term = Terminal([HUTCH, "exec", "-it", machine, "--", "sh"], env, rows=24, cols=80)
    terminals.append(term)
    term.expect(PROMPT)
    term.type(b"\x04")
    assert term.wait() == 0


def test_exec_it_is_a_terminal_in_a_micro_vm(
    env: dict[str, str], terminals: list[Terminal]
) -> None:
    _shell_session(env, terminals, _machine(env, "microvm"))


def test_exec_i_alone_keeps_stdin_without_a_terminal(
    env: dict[str, str], terminals: list[Terminal]
) -> None:
    machine = _machine(env, "container")
    term = Terminal(
        [HUTCH, "exec", "-i", machine, "--", "sh", "-c", "tty; read line; echo got $line"],
        env, rows=24, cols=80,
    )  # fmt: skip
    terminals.append(term)
    cooked = term.modes()
    term.expect(b"not a tty")
    assert term.modes() == cooked  # no raw mode without -t
    term.type(b"typed\n")
    term.expect(b"got typed")
    assert term.wait() == 0
    # -t alone: a terminal, nothing typed into it
    alone = Hutch(env).raw("exec", "-t", machine, "--", "sh", "-c", "tty; stty size")
    assert alone.returncode == 0, alone.stderr
    assert re.fullmatch(rb"/dev/pts/\d+\r\n24 80\r\n", alone.stdout), alone.stdout


def test_the_sdk_opens_a_terminal(controller: Controller, env: dict[str, str]) -> None:
    machine = _machine(env, "container")
    with (
        controller.client(env["HUTCH_PROJECT"]) as client,
        client.machines.exec_stream(
            machine, ["sh"], stdin=True, tty=True, size=(50, 132)
        ) as session,
    ):
        chunks: list[tuple[str, bytes]] = []
        reading = iter(session)
        session.write(b"stty size; tty >&2\r")
        while b"/dev/pts/" not in b"".join(data for _, data in chunks):
            chunks.append(next(reading))
        session.resize(20, 60)
        session.write(b"stty size; exit 3\r")
        chunks.extend(reading)
    assert {stream for stream, _ in chunks} == {"stdout"}  # one stream: the terminal
    output = b"".join(data for _, data in chunks)
    assert b"50 132\r\n" in output and b"20 60\r\n" in output, output
    assert re.search(rb"/dev/pts/\d+\r\n", output), output
    assert session.exit_code == 3


async def test_the_async_sdk_opens_a_terminal(controller: Controller, env: dict[str, str]) -> None:
    machine = _machine(env, "container")
    async with (
        AsyncClient(controller.url, controller.token, project=env["HUTCH_PROJECT"]) as client,
        client.machines.exec_stream(machine, ["sh"], stdin=True, tty=True) as session,
    ):
        await session.write(b"stty size; exit 4\r")
        output = b"".join([data async for _, data in session])
    assert b"24 80\r\n" in output, output
    assert session.exit_code == 4
