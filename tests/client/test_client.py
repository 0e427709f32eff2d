"""hutch.Client against a real controller, node agent, micro-VMs and containers."""

import contextlib
import threading
import time
from pathlib import Path

import pytest

import hutch
from hutch.client import Client, Conflict, ExecSession, PullFailed, WaitTimeout, log_bytes
from hutch.model.machine import Desired, MachineState
from hutch.model.tenancy import Role
from hutch.wire.images import PullEvent
from tests.controller import BUSYBOX_CONFIG, Controller, registry_with_app
from tests.images.ocibuild import write_oci_layout

C = "container"  # where the runtime does not matter: milliseconds instead of a VM boot


def output(client: Client, ref: str) -> tuple[bytes, bytes]:
    out = {"stdout": b"", "stderr": b""}
    for line in client.machines.logs(ref):
        out[line.stream] += log_bytes(line)
    return out["stdout"], out["stderr"]


def test_hutch_exports_the_clients_lazily() -> None:
    assert hutch.Client is Client
    assert hutch.AsyncClient.__name__ == "AsyncClient"


def test_run_exec_stop_in_a_micro_vm(client: Client) -> None:
    script = "echo out; echo err >&2; printf '\\377'; exec sleep 600"
    m = client.machines.run("busybox", ["sh", "-c", script], name="vm", memory_mib=128)
    assert m.runtime == "microvm" and m.name == "vm"
    assert m.state is MachineState.RUNNING  # run() returns once it is there
    result = client.machines.exec(
        m, ["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 3"], stdin=b"shout"
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"SHOUT", b"oops\n")
    stopped = client.machines.stop("vm", timeout=5)
    assert stopped.desired is Desired.STOPPED
    ended = client.machines.wait("vm", timeout=60)
    assert ended.state is MachineState.EXITED and ended.exit_code == 128 + 15
    assert output(client, "vm") == (b"out\n\xff", b"err\n")  # exact bytes, not U+FFFD
    client.machines.delete("vm")


def test_lifecycle(client: Client) -> None:
    m = client.machines.create("busybox", ["sleep", "600"], runtime=C, start=False)
    assert (m.state, m.desired, m.node) == (MachineState.CREATED, Desired.STOPPED, None)
    client.machines.start(m)
    assert client.machines.wait(m, "running", timeout=30).started_at is not None
    client.machines.kill(m, "SIGTERM")  # delivered, not a stop
    assert client.machines.wait(m, timeout=30).exit_code == 143
    client.machines.restart(m)
    assert client.machines.wait(m, "running", timeout=30).exit_code is None
    client.machines.kill(m)  # the end (see test_kill_is_without_grace)
    assert client.machines.wait(m, timeout=30).state is MachineState.EXITED
    client.machines.delete(m)
    assert client.machines.wait(m, "destroyed", timeout=30).state is MachineState.DESTROYED
    assert [x.id for x in client.machines.list()] == []
    assert [x.id for x in client.machines.list(all=True)] == [m.id]


def test_kill_is_without_grace(client: Client) -> None:
    m = client.machines.run("busybox", ["sleep", "600"], runtime=C)
    client.machines.kill(m)
    assert client.machines.wait(m, timeout=30).exit_code == 128 + 9


def test_quick_machine_and_auto_destroy(client: Client) -> None:
    m = client.machines.run("busybox", ["sh", "-c", "echo hi; exit 4"], runtime=C)
    assert client.machines.wait(m, timeout=30).exit_code == 4
    assert output(client, m.id) == (b"hi\n", b"")
    gone = client.machines.run("busybox", ["true"], runtime=C, auto_destroy=True)
    assert client.machines.wait(gone, "destroyed", timeout=30).exit_code == 0


def test_auto_destroy_leaves_followers_their_whole_log(client: Client) -> None:
    m = client.machines.run("busybox", ["seq", "1", "100000"], runtime=C, auto_destroy=True)
    lines = client.machines.logs(m, follow=True)
    text = next(lines).data
    client.machines.wait(m, timeout=30)  # it ended, and is destroyed while being read
    text += "".join(line.data for line in lines)
    assert text.splitlines() == [str(i) for i in range(1, 100001)]
    assert client.machines.wait(m, "destroyed", timeout=30).exit_code == 0


def test_env_workdir_user_and_entrypoint(client: Client) -> None:
    m = client.machines.run(
        "busybox",
        ["-c", "echo $GREETING; pwd; id -u"],
        entrypoint=["/bin/sh"],
        runtime=C,
        env={"GREETING": "hello"},
        workdir="/tmp",
        user="1234",
    )
    client.machines.wait(m, timeout=30)
    assert output(client, m.id)[0].split() == [b"hello", b"/tmp", b"1234"]


def test_exec_stream(client: Client) -> None:
    m = client.machines.run("busybox", ["sleep", "600"], runtime=C)
    with client.machines.exec_stream(
        m, ["sh", "-c", "cat; echo $X >&2; exit 2"], stdin=True, env={"X": "ex"}
    ) as session:
        assert isinstance(session, ExecSession) and session.exit_code is None
        session.write(b"a" * 200_000)  # several frames
        session.close_stdin()
        chunks = list(session)
    assert b"".join(d for s, d in chunks if s == "stdout") == b"a" * 200_000
    assert b"".join(d for s, d in chunks if s == "stderr") == b"ex\n"
    assert session.exit_code == 2
    with client.machines.exec_stream(m, ["sleep", "60"]) as session:
        time.sleep(0.2)
        session.signal("SIGINT")
        assert session.wait() == 128 + 2
    client.machines.delete(m, force=True)


def test_list_follows_pages_and_filters(client: Client) -> None:
    made = [
        client.machines.create(
            "busybox", runtime=C, start=False, name=f"m{i}", labels={"tier": "a" if i % 2 else "b"}
        )
        for i in range(5)
    ]
    assert [m.name for m in client.machines.list(page_size=2)] == [m.name for m in made]
    assert [m.name for m in client.machines.list(labels={"tier": "a"})] == ["m1", "m3"]
    assert [m.name for m in client.machines.list(state="running")] == []
    assert len(list(client.machines.list(state=["created", "running"]))) == 5
    for m in made:
        client.machines.delete(m)
    assert list(client.machines.list()) == []


def test_events_from_the_start_and_after(client: Client) -> None:
    m = client.machines.create("busybox", runtime=C, start=False)
    client.machines.delete(m)
    events = client.events()
    first, second = next(events), next(events)
    events.close()
    assert (first.kind, first.object, first.state) == ("machine.created", m.id, "created")
    assert (second.object, second.state) == (m.id, "destroyed")
    later = client.events(after=first.id)
    assert next(later).id == second.id
    later.close()


def test_events_arrive_as_they_happen(client: Client) -> None:
    seen: list[str] = []

    def listen() -> None:
        for event in client.events():
            seen.append(event.state)
            if event.state == "exited":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    client.machines.run("busybox", ["true"], runtime=C)
    listener.join(30)
    assert seen[0] == "created" and seen[-1] == "exited" and "running" in seen


def test_images(client: Client, tmp_path: Path, busybox_rootfs: Path) -> None:
    busybox = client.images.get("busybox")
    assert busybox.public and "docker.io/library/busybox:latest" in busybox.names
    layout = tmp_path / "layout"
    write_oci_layout(layout, [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", "mine"]})
    [mine] = client.images.import_(layout, names=["team/mine:1"])
    assert not mine.public and mine.names == ["docker.io/team/mine:1"]
    assert {i.id for i in client.images.list()} >= {busybox.id, mine.id}
    m = client.machines.run("team/mine:1", runtime=C)
    assert client.machines.wait(m, timeout=30).exit_code == 0
    assert output(client, m.id)[0] == b"mine\n"
    client.machines.delete(m)
    client.images.delete("team/mine:1")
    assert mine.id not in {i.id for i in client.images.list()}


def test_pull_with_progress(
    controller: Controller, client: Client, tmp_path: Path, busybox_rootfs: Path
) -> None:
    events: list[PullEvent] = []
    with registry_with_app(controller, tmp_path, busybox_rootfs) as ref:
        image = client.images.pull(ref, progress=events.append)
    assert image.names == [ref] and not image.public
    assert events and events[-1].done == events[-1].total > 0
    m = client.machines.run(ref, runtime=C)
    client.machines.wait(m, timeout=30)
    assert output(client, m.id)[0] == b"app\n"
    client.machines.delete(m)
    client.images.delete(ref)


def test_a_failed_pull_says_why(controller: Controller, client: Client) -> None:
    events: list[PullEvent] = []
    registry = f"127.0.0.1:{controller.registry_port}"  # configured, and down
    with pytest.raises(PullFailed) as failed:
        client.images.pull(f"{registry}/nothing:1", progress=events.append)
    assert failed.value.status == 502 and f"cannot reach registry {registry}" in failed.value.detail


def test_ended_machines_hold_no_quota(controller: Controller, client: Client) -> None:
    """They hold nothing on a node, so nothing of the quota: a project at its quota of one
    machine runs one after another; a start of an ended one checks the quota again."""
    with controller.client(None) as admin:
        admin.projects.set_quota(client.project or "", machines=1, vcpus=1)
    first = client.machines.run("busybox", ["true"], runtime=C)
    assert client.machines.wait(first, timeout=30).state is MachineState.EXITED
    assert client.projects.quota().usage.machines == 0
    second = client.machines.run("busybox", ["sleep", "600"], runtime=C)  # refused on main
    assert client.projects.quota().usage.vcpus == 1
    with pytest.raises(hutch.client.QuotaExceeded, match="stop some") as over:
        client.machines.start(first)  # the second holds the one machine the project may run
    assert "machines would be 2, the quota is 1" in over.value.detail
    assert client.machines.get(first).state is MachineState.EXITED  # refused, left as it was
    client.machines.stop(second, timeout=0)
    client.machines.wait(second, timeout=30)
    assert client.machines.start(first).desired is Desired.RUNNING  # now it may
    assert client.machines.wait(first, timeout=30).exit_code == 0


def test_projects_tokens_and_quotas(controller: Controller, project: str) -> None:
    with controller.client(None) as admin:
        assert project in [p.name for p in admin.projects.list()]
        assert admin.projects.get(project).quota.machines is None
        report = admin.projects.set_quota(project, machines=1, memory_mib=1024)
        assert (report.quota.machines, report.quota.vcpus, report.usage.machines) == (1, None, 0)
        token = admin.projects.tokens.create(project, role=Role.MEMBER, name="ci")
        assert token.secret and token.project == project and token.role is Role.MEMBER
        assert [t.name for t in admin.projects.tokens.list(project)] == ["ci"]
    with Client(controller.url, token.secret) as member:  # no project named: the token's own
        assert [p.name for p in member.projects.list()] == [project]
        assert member.projects.quota().quota.machines == 1
        m = member.machines.run("busybox", ["sleep", "600"], runtime=C)
        assert member.projects.quota().usage.machines == 1
        with pytest.raises(hutch.client.QuotaExceeded) as over:
            member.machines.create("busybox", runtime=C)
        assert over.value.status == 403
        member.machines.delete(m, force=True)
        with pytest.raises(hutch.client.Forbidden):
            list(member.projects.tokens.list())  # admin only
    with controller.client(None) as admin:
        reader = admin.projects.tokens.create(project, role="reader")
        admin.projects.tokens.revoke(token.id, project)
        revocations = {t.id: t.revoked_at for t in admin.projects.tokens.list(project)}
        assert revocations[token.id] is not None and revocations[reader.id] is None
    with (
        Client(controller.url, token.secret) as revoked,
        pytest.raises(hutch.client.Unauthenticated),
    ):
        revoked.projects.get(project)
    with Client(controller.url, reader.secret) as ro:
        assert ro.projects.get(project).name == project


def test_create_and_delete_a_project(controller: Controller) -> None:
    with controller.client(None) as admin:
        made = admin.projects.create("scratch-x")
        assert made.name == "scratch-x"
    with controller.client("scratch-x") as client:
        m = client.machines.create("busybox", runtime=C, start=False)
        with pytest.raises(Conflict):
            client.projects.delete("scratch-x")  # it has a machine
        client.machines.delete(m)
        client.projects.delete("scratch-x")
        with pytest.raises(hutch.client.NotFound):
            client.projects.get("scratch-x")


def test_nodes(controller: Controller) -> None:
    with controller.client(None) as admin:
        [node] = admin.nodes.list()
    assert node.state == "ready" and {"microvm", "container"} <= set(node.runtimes)


def test_wait_for_a_state_a_finished_machine_will_not_reach(client: Client) -> None:
    m = client.machines.run("busybox", ["true"], runtime=C)
    assert client.machines.wait(m, timeout=30).state is MachineState.EXITED
    started = time.monotonic()
    with pytest.raises(hutch.client.Unreachable, match="exited and will not be running"):
        client.machines.wait(m, "running", timeout=60)
    assert time.monotonic() - started < 10  # answered at once, not at the timeout
    assert client.machines.wait(m, "started", timeout=60).state is MachineState.EXITED


def test_wait_gives_up_at_its_timeout(client: Client) -> None:
    m = client.machines.create("busybox", runtime=C, start=False)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="not running"):
        client.machines.wait(m, "running", timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    with contextlib.suppress(TimeoutError):  # a TimeoutError too
        client.machines.wait(m, "running", timeout=0)
    client.machines.delete(m)
