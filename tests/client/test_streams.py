"""A followed log and an exec session end when their token is revoked or expires, and deliver
nothing the machine wrote after that; the same streams with a token that stays keep going.
Through the SDK against a real `hutch up` (the events stream: tests/api/test_streams.py)."""

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from hutch.client import Client, Unauthenticated
from hutch.wire.machines import MachineView
from tests.controller import Controller

ENDS_WITHIN = 5.0  # seconds; the promise is one
# Writes "tick" until /tmp/go exists, then the secret.
TALKER = (
    "while :; do if [ -e /tmp/go ]; then echo secret-after; else echo tick; fi; sleep 0.1; done"
)


@dataclass
class Follower:
    """client.machines.logs(follow=True) in a thread: the lines, and whether it ended."""

    client: Client
    machine: MachineView
    lines: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> "Follower":
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            for line in self.client.machines.logs(self.machine, follow=True):
                self.lines.append(line.data)
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()

    def until(self, text: str) -> None:
        deadline = time.monotonic() + 30
        while not any(text in line for line in self.lines):
            assert not self.done.is_set(), f"ended before {text!r}: {self.error!r}"
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines[-5:]}"
            time.sleep(0.05)


def member(ctl: Controller, project: str, **extra: object) -> tuple[Client, str]:
    with ctl.client(project) as admin:
        token = admin.projects.tokens.create(project, role="member", **extra)  # type: ignore[arg-type]
    return ctl.client(project, token.secret), token.id


@pytest.fixture
def talker(client: Client) -> Iterator[MachineView]:
    m = client.machines.run("busybox", ["sh", "-c", TALKER], runtime="container")
    yield m
    client.machines.delete(m, force=True)


def ended_by(how: str, client: Client, token_id: str, expires_at: float) -> None:
    if how == "revoke":
        client.projects.tokens.revoke(token_id)
    else:
        time.sleep(max(0.0, expires_at - time.time()))


@pytest.mark.parametrize("how", ["revoke", "expire"])
def test_a_followed_log_ends_with_its_token(
    controller: Controller, project: str, client: Client, talker: MachineView, how: str
) -> None:
    short, short_id = member(controller, project, **({"expires_in": 8} if how == "expire" else {}))
    kept, _ = member(controller, project)
    expires_at = time.time() + 8
    with short, kept:
        gone, stays = Follower(short, talker).start(), Follower(kept, talker).start()
        gone.until("tick")
        stays.until("tick")
        ended_by(how, client, short_id, expires_at)
        client.machines.exec(talker, ["touch", "/tmp/go"])
        assert gone.done.wait(ENDS_WITHIN), f"the log still follows after the {how}"
        stays.until("secret-after")
        assert not any("secret-after" in line for line in gone.lines)
        assert not stays.done.is_set()


@pytest.mark.parametrize("how", ["revoke", "expire"])
def test_an_exec_session_ends_with_its_token(
    controller: Controller, project: str, client: Client, talker: MachineView, how: str
) -> None:
    short, short_id = member(controller, project, **({"expires_in": 8} if how == "expire" else {}))
    kept, _ = member(controller, project)
    expires_at = time.time() + 8
    with (
        short,
        kept,
        short.machines.exec_stream(talker, ["sh"], stdin=True) as gone,
        kept.machines.exec_stream(talker, ["sh"], stdin=True) as stays,
    ):
        outputs: dict[str, list[bytes]] = {"gone": [], "stays": []}
        ended: dict[str, threading.Event] = {
            "gone": threading.Event(),
            "stays": threading.Event(),
        }
        errors: dict[str, BaseException] = {}

        def read(name: str, session: object) -> None:
            try:
                for _, data in session:  # type: ignore[attr-defined]
                    outputs[name].append(data)
            except BaseException as e:
                errors[name] = e
            finally:
                ended[name].set()

        for name, session in (("gone", gone), ("stays", stays)):
            threading.Thread(target=read, args=(name, session), daemon=True).start()

        def says(name: str, session: object, word: str) -> None:
            session.write(f"echo {word}\n".encode())  # type: ignore[attr-defined]
            deadline = time.monotonic() + 30
            while word.encode() not in b"".join(outputs[name]):
                assert not ended[name].is_set(), f"{name} ended: {errors.get(name)!r}"
                assert time.monotonic() < deadline
                time.sleep(0.05)

        says("gone", gone, "one")
        says("stays", stays, "one")
        ended_by(how, client, short_id, expires_at)
        with_secret = b"cat /dev/null; echo secret-$((40 + 2))\n"
        with contextlib.suppress(Exception):
            gone.write(with_secret)
        assert ended["gone"].wait(ENDS_WITHIN), f"the exec session goes on after the {how}"
        assert b"secret-42" not in b"".join(outputs["gone"])
        assert isinstance(errors.get("gone"), Unauthenticated), errors
        says("stays", stays, "two")
        assert not ended["stays"].is_set()


def test_an_attach_session_ends_with_its_token(
    controller: Controller, project: str, client: Client
) -> None:
    shell = client.machines.run("busybox", ["sh"], runtime="container", stdin=True)
    short, short_id = member(controller, project)
    kept, _ = member(controller, project)
    try:
        with (
            short,
            kept,
            short.machines.attach(shell) as gone,
            kept.machines.attach(shell) as stays,
        ):
            ended, errors = threading.Event(), []

            def wait() -> None:
                try:
                    gone.wait()
                except BaseException as e:
                    errors.append(e)
                finally:
                    ended.set()

            threading.Thread(target=wait, daemon=True).start()
            log = Follower(client, shell).start()
            gone.write(b"echo one\n")
            log.until("one")
            client.projects.tokens.revoke(short_id)
            assert ended.wait(ENDS_WITHIN), "the attach session goes on after the revocation"
            assert isinstance(errors[0], Unauthenticated), errors
            with contextlib.suppress(Exception):
                gone.write(b"echo secret-$((40 + 2))\n")
            stays.write(b"echo two\n")
            log.until("two")
            assert not any("secret-42" in line for line in log.lines)
            assert client.machines.get(shell).state == "running"  # leaving is not ending
    finally:
        client.machines.delete(shell, force=True)
