"""`hutch run -it`: the machine's main process on a terminal, typed into from a real
pseudo-terminal on the client side, in both runtimes; `hutch run -i`: its stdin without one;
and the SDK's attach sessions."""

import re
import time

from hutch.client import log_bytes
from tests.cli.test_terminal import PROMPT, Terminal, env, terminals, use_the_shell
from tests.controller import Controller, controller
from tests.helpers.cli import HUTCH, Hutch

__all__ = ["controller", "env", "terminals"]  # the fixtures, for the tests here


def _the_machine(env: dict[str, str]) -> str:
    """The one machine of the test's project, once it runs."""
    for _ in range(200):
        listed = Hutch(env)("ps", "-q", "--state", "running", timeout=60, check=True)
        if machines := listed.stdout.split():
            assert len(machines) == 1, machines
            return machines[0]
        time.sleep(0.2)
    raise AssertionError("the machine never ran")


def _shell_session(env: dict[str, str], terminals: list[Terminal], runtime: str) -> None:
    """What a user does in `hutch run -it --rm busybox sh`, checked step by step."""
    term = Terminal(
        [HUTCH, "run", "-it", "--rm", "--runtime", runtime, "busybox", "--", "sh"],
        env, rows=30, cols=100,
    )  # fmt: skip
    terminals.append(term)
    before = term.modes()
    term.expect(PROMPT, timeout=180)
    machine = _the_machine(env)
    for _ in range(100):  # raw mode from when the session is attached
        if term.modes() == (0, 0):
            break
        time.sleep(0.1)
    assert term.modes() == (0, 0)
    use_the_shell(term, env, machine)
    term.type(b"exit 3\r")
    assert term.wait(timeout=120) == 3  # the machine's exit code
    assert term.modes() == before  # the client's terminal is restored
    gone = Hutch(env)("ps", "-q", timeout=60, check=True)
    assert gone.stdout.split() == []  # --rm


def test_run_it_is_a_terminal_in_a_container(
    env: dict[str, str], terminals: list[Terminal]
) -> None:
    _shell_session(env, terminals, "container")
    # Ctrl-D ends the shell's input: it exits 0, and so does hutch
    term = Terminal(
        [HUTCH, "run", "-it", "--rm", "--runtime", "container", "busybox", "--", "sh"],
        env, rows=24, cols=80,
    )  # fmt: skip
    terminals.append(term)
    term.expect(PROMPT, timeout=180)
    for _ in range(100):  # attached (in raw mode) before typing
        if term.modes() == (0, 0):
            break
        time.sleep(0.1)
    term.type(b"\x04")
    assert term.wait(timeout=120) == 0


def test_run_it_is_a_terminal_in_a_micro_vm(env: dict[str, str], terminals: list[Terminal]) -> None:
    _shell_session(env, terminals, "microvm")


def test_run_i_alone_gives_stdin_without_a_terminal(env: dict[str, str]) -> None:
    data = b"".join(b"line %d of what is piped in\n" % i for i in range(8000))  # ~230 KB
    ran = Hutch(env).raw(
        "run", "-i", "--rm", "--runtime", "container", "busybox", "--",
        "sh", "-c", "tty; cat; echo done >&2", input=data, timeout=240,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == b"not a tty\n" + data  # all of it, in order, no \r added
    assert ran.stderr.endswith(b"done\n"), ran.stderr
    # Without -i, the command's stdin is /dev/null, whatever hutch's is
    closed = Hutch(env).raw(
        "run", "--rm", "--runtime", "container", "busybox", "--", "sh", "-c", "cat; echo end",
        input=b"not for it\n", timeout=240,
    )  # fmt: skip
    assert (closed.returncode, closed.stdout) == (0, b"end\n"), closed.stderr


def test_the_sdk_attaches_to_a_machine(controller: Controller, env: dict[str, str]) -> None:
    with controller.client(env["HUTCH_PROJECT"]) as client:
        m = client.machines.create("busybox", ["sh"], runtime="container", tty=True, stdin=True)
        assert (m.tty, m.stdin) == (True, True)
        client.machines.wait(m.id, "running", timeout=180)
        with client.machines.attach(m.id, size=(50, 132)) as session:
            assert (session.tty, session.stdin) == (True, True)
            session.write(b"stty size; tty; exit 4\r")
            assert session.wait() == 4
        output = b"".join(log_bytes(line) for line in client.machines.logs(m.id))
        assert b"50 132\r\n" in output, output
        assert re.search(rb"/dev/pts/\d+\r\n", output), output
        assert client.machines.wait(m.id).exit_code == 4
        # A machine without a terminal nor stdin can be attached to, but not typed into
        plain = client.machines.create("busybox", ["sleep", "30"], runtime="container")
        client.machines.wait(plain.id, "running", timeout=180)
        with client.machines.attach(plain.id) as session:
            assert (session.tty, session.stdin) == (False, False)
        client.machines.stop(plain.id, timeout=0)
