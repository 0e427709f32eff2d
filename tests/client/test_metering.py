"""Metering with known consumption, end to end: two micro-VMs under a real `hutch up` (its node
samples every second), one keeping its vCPU busy for 20 s, the other idle, read back through
the SDK's usage (`GET /v1/usage`).

The window is cut by the guests' own output: from a line each prints once booted (so the boot's
CPU is outside it) to a couple of seconds after the busy one's loop ended. Each record counts
by its start, so the window holds the whole 20 s of busy loop and only idle time besides."""

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from hutch.client import Client
from hutch.wire.billing import UsageRow, UsageView
from tests.controller import Controller, new_project, running_controller

INTERVAL = 1.0  # the node's sample_interval here
BUSY = 20  # seconds of busy loop
MEMORY_MIB = 256
BOOTED = "booted"


@pytest.fixture(scope="module")
def ctl(busybox_rootfs: Path) -> Iterator[Controller]:
    with running_controller(busybox_rootfs, {"HUTCH_SAMPLE_INTERVAL": str(INTERVAL)}) as c:
        yield c


def printed(client: Client, machine: str, text: str, timeout: float) -> float:
    """When the machine printed `text` (its node's clock), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in client.machines.logs(machine):
            if text in line.data:
                return line.time
        time.sleep(0.5)
    raise AssertionError(f"{machine} did not print {text!r} in {timeout:.0f} s")


def usage(ctl: Controller, project: str, **window: float) -> dict[str, UsageRow]:
    """`GET /v1/usage?by=machine`: the project's usage per machine."""
    answer = httpx.get(
        f"{ctl.url}/v1/usage", params={"project": project, "by": "machine", **window},
        headers={"Authorization": f"Bearer {ctl.token}"}, timeout=30,
    )  # fmt: skip
    answer.raise_for_status()
    return {r.group: r for r in UsageView.model_validate(answer.json()).items}


def test_a_busy_and_an_idle_machine_are_metered_by_what_they_used(ctl: Controller) -> None:
    """Busy: 20 +- 1 CPU-seconds. Idle: near zero CPU-seconds, but its vCPU-seconds in full,
    as the busy one's. Memory: GiB asked x seconds running."""
    project = new_project(ctl)
    with ctl.client(project) as client:
        loop = f"sleep 3; timeout {BUSY} sh -c 'while :; do :; done'; echo finished; sleep 600"
        busy = client.machines.create("busybox", ["sh", "-c", f"echo {BOOTED}; {loop}"],
                                      name="busy", memory_mib=MEMORY_MIB)  # fmt: skip
        idle = client.machines.create("busybox", ["sh", "-c", f"echo {BOOTED}; sleep 600"],
                                      name="idle", memory_mib=MEMORY_MIB)  # fmt: skip
        since = max(printed(client, m.name, BOOTED, 120) for m in (busy, idle))
        until = printed(client, busy.name, "finished", BUSY + 60) + 2 * INTERVAL
        time.sleep(max(0.0, until - time.time() + 3 * INTERVAL))  # samples past `until` are in
        rows = usage(ctl, project, since=since, until=until)
        whole = usage(ctl, project)
    used = {name: rows[m.id] for name, m in (("busy", busy), ("idle", idle))}
    window = Decimal(until - since)
    report = {k: r.model_dump() for k, r in used.items()} | {"window": window}
    assert abs(Decimal(used["busy"].cpu_seconds) - BUSY) <= 1, report
    assert Decimal(used["idle"].cpu_seconds) < Decimal("0.5"), report
    for r in used.values():
        assert abs(Decimal(r.vcpu_seconds) - window) <= 2 * INTERVAL, report
        asked = Decimal(r.vcpu_seconds) * MEMORY_MIB / 1024  # 1 vCPU: seconds running
        assert abs(Decimal(r.memory_gib_seconds) - asked) < Decimal("0.001"), report
    # Each generation started once; the boot's CPU outside the window is in the whole.
    assert [whole[m.id].starts for m in (busy, idle)] == [1, 1]
    assert Decimal(whole[idle.id].cpu_seconds) > Decimal(used["idle"].cpu_seconds)
