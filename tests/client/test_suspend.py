"""Suspend, resume, machine snapshots and their clones through the SDK (sync and async), with
real micro-VMs on the shared `hutch up` (tests/controller.py): one machine is booted (for the
module), the rest are restored from it. Each other project's attempt is refused next to the
owner's succeeding."""

import contextlib
import time
from collections.abc import Iterator

import pytest

from hutch.client import AsyncClient, Client
from hutch.client.errors import ApiError, Conflict, Invalid, NotFound, QuotaExceeded
from hutch.wire.machines import MachineView
from tests.controller import Controller, controller, new_project

__all__ = ["controller"]

# A process whose state is only in its memory: its pid, and a counter it writes each 0.2 s.
COUNTER = (
    "echo $$ > /tmp/pid; i=0; while :; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n;"
    " sleep 0.2; done"
)


@pytest.fixture
def other(controller: Controller) -> Iterator[Client]:
    with controller.client(new_project(controller, "atk")) as c:
        yield c


@pytest.fixture(scope="module")
def owner(controller: Controller) -> Iterator[Client]:
    """The project of the module's machines: destroyed, with its snapshots, after its tests."""
    with controller.client(new_project(controller, "snap")) as c:
        yield c
        with contextlib.suppress(ApiError):
            for m in list(c.machines.list()):
                c.machines.delete(m, force=True)
            for m in list(c.machines.list()):
                c.machines.wait(m, "destroyed", timeout=60)
            for snap in list(c.snapshots.list()):
                c.snapshots.delete(snap.name)


@pytest.fixture(scope="module")
def warm(owner: Client) -> MachineView:
    """A running micro-VM with a process whose state is only in its memory (COUNTER)."""
    return owner.machines.run("busybox", ["sh", "-c", COUNTER], name="warm", hold_output=False)


def _state_of(client: Client, machine: str) -> tuple[int, int]:
    """The counter's pid and count in `machine`."""
    read = "until [ -s /tmp/n ]; do sleep 0.1; done; cat /tmp/pid /tmp/n"
    out = client.machines.exec(machine, ["sh", "-c", read]).stdout.split()
    return int(out[0]), int(out[1])


def _memory_allocated(controller: Controller, node_id: str) -> int:
    with controller.client(None) as admin:
        return admin.nodes.get(node_id).allocated.memory_mib


async def test_suspend_and_resume(
    controller: Controller, owner: Client, warm: MachineView, other: Client
) -> None:
    client = owner
    assert warm.node is not None
    pid, count = _state_of(client, "warm")
    held = _memory_allocated(controller, warm.node)
    project = client.project
    assert project is not None
    disk = client.projects.quota().usage.disk_mib

    for attempt in (other.machines.suspend, other.machines.resume):
        with pytest.raises(NotFound):
            attempt("warm")
    suspended = client.machines.suspend("warm", wait=True, timeout=120)
    assert suspended.state == "suspended"
    assert [m.state for m in client.machines.list()] == ["suspended"]
    gave_back = held - _memory_allocated(controller, warm.node)
    assert gave_back > warm.memory_mib, gave_back  # its memory and the VM's overhead
    with pytest.raises(Invalid, match="suspended, not running: resume it first"):
        client.machines.exec("warm", ["true"])
    # Its memory is saved on its node's disk: the project's disk holds it until it resumes.
    on_disk = disk + warm.memory_mib
    assert client.projects.quota().usage.disk_mib == on_disk
    with controller.client(None) as admin:
        admin.projects.set_quota(project, disk_mib=on_disk)
        try:
            with pytest.raises(QuotaExceeded, match="disk"):
                client.machines.create("busybox", disk_mib=warm.memory_mib, start=False)

            # It resumes within a disk quota that its saved memory alone is over.
            admin.projects.set_quota(project, disk_mib=disk)
            async with AsyncClient(
                controller.url, controller.token, project=client.project
            ) as aclient:
                resumed = await aclient.machines.resume("warm", wait=True, timeout=120)
            assert resumed.state == "running"
            # Resumed, its memory is memory again: the same machine fits in the disk quota.
            admin.projects.set_quota(project, disk_mib=on_disk)
            client.machines.delete(
                client.machines.create("busybox", disk_mib=warm.memory_mib, start=False)
            )
        finally:
            admin.projects.set_quota(project)
    time.sleep(0.5)
    after = _state_of(client, "warm")
    assert after[0] == pid and after[1] > count, (pid, count, after)  # the same process, on
    assert _memory_allocated(controller, warm.node) == held


def test_snapshot_and_clones(
    controller: Controller, owner: Client, warm: MachineView, other: Client
) -> None:
    client = owner
    project = client.project
    assert project is not None
    pid, _ = _state_of(client, "warm")
    with pytest.raises(NotFound):
        other.snapshots.create("warm", "stolen")
    snap = client.snapshots.create("warm", "tmpl")
    assert (snap.name, snap.state, snap.node_id, snap.clones) == ("tmpl", "ready", warm.node, [])
    assert snap.size_bytes > 0
    # Each snapshot holds the machine's memory and disk on its node: within snapshot_gib.
    assert client.projects.quota().usage.snapshot_gib == snap.size_bytes / (1 << 30)
    with controller.client(None) as admin:
        admin.projects.set_quota(project, snapshot_gib=0)
        try:
            with pytest.raises(QuotaExceeded, match="snapshot_gib"):
                client.snapshots.create("warm", "over")
        finally:
            admin.projects.set_quota(project)
    with pytest.raises(NotFound):
        other.machines.run(from_snapshot="tmpl")
    with pytest.raises(Invalid, match="cpus 1, not 2"):
        client.machines.run(from_snapshot="tmpl", cpus=2)

    clones = [client.machines.run(from_snapshot="tmpl", name=f"copy{i}") for i in (1, 2)]
    identities = set()
    for clone in clones:
        assert (clone.state, clone.node, clone.from_snapshot) == ("running", warm.node, snap.id)
        assert _state_of(client, clone.name)[0] == pid  # the snapshot's process continues
        hostname = client.machines.exec(clone, ["hostname"]).stdout.decode().strip()
        mac = client.machines.exec(clone, ["cat", "/sys/class/net/eth0/address"]).stdout.decode()
        ip4 = client.machines.exec(clone, ["ip", "-4", "addr", "show", "eth0"]).stdout.decode()
        assert hostname == clone.id != warm.id  # a machine's hostname is its id
        assert mac.strip() == clone.addresses[0].mac
        assert f"inet {clone.addresses[0].ip4}/" in ip4 and f" {warm.addresses[0].ip4}/" not in ip4
        identities.add((hostname, mac))
    assert len(identities) == 2

    with pytest.raises(Conflict, match="copy1, copy2"):
        client.snapshots.delete("tmpl")
    for m in clones:
        client.machines.delete(m, force=True)
    for m in clones:
        client.machines.wait(m, "destroyed", timeout=60)
    with pytest.raises(NotFound):
        other.snapshots.delete("tmpl")
    client.snapshots.delete("tmpl")
    assert list(client.snapshots.list()) == []
