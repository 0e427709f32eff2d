"""Metering with known consumption, end to end: two micro-VMs under a real `hutch up` (its node
samples every second), one keeping its vCPU busy for 20 s of CPU, the other idle, read back
through the SDK's usage (`GET /v1/usage`).

The busy loop runs until its QEMU has had 20 s of CPU by the kernel's count of that process
(/proc/PID/stat, not the cgroup metering reads), then is told to stop: on a loaded host a
vCPU busy for 20 s of wall time gets less than 20 s of CPU, and that is what is metered. The
ledger keeps a row per generation per hour, so the window is the difference between two reads
of the usage: one once both guests printed a line when booted and their boot's samples are in
(the boot's CPU is outside it), one a couple of sampling periods after the loop ended. So the
window holds the whole busy loop and only idle time besides."""

import contextlib
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from hutch.client import Client
from hutch.wire.billing import UsageRow
from tests.controller import Controller, new_project, running_controller

INTERVAL = 1.0  # the node's sample_interval here
BUSY = 20  # seconds of busy loop
MEMORY_MIB = 256
BOOTED = "booted"
GO, STOP = "/tmp/go", "/tmp/stop"  # the busy loop runs from the first file to the second


@pytest.fixture(scope="module")
def ctl(busybox_rootfs: Path) -> Iterator[Controller]:
    with running_controller(busybox_rootfs, {"HUTCH_SAMPLE_INTERVAL": str(INTERVAL)}) as c:
        yield c


def printed(client: Client, machine: str, text: str, timeout: float) -> None:
    """Wait for the machine to print `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line.data for line in client.machines.logs(machine)):
            return
        time.sleep(0.2)
    raise AssertionError(f"{machine} did not print {text!r} in {timeout:.0f} s")


def qemu_cpu_s(machine_id: str) -> float:
    """The CPU seconds the machine's QEMU has used (every thread), by /proc."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if f"hutch-{machine_id}-".encode() in cmdline.read_bytes():
                fields = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise AssertionError(f"no QEMU process of {machine_id}")


def usage(client: Client, **window: float) -> dict[str, UsageRow]:
    """`client.usage` by machine."""
    return {r.group: r for r in client.usage.get(by="machine", **window).items}


def minus(after: UsageRow, before: UsageRow | None) -> dict[str, Decimal]:
    """What a machine used between two reads of its usage."""
    names = ("vcpu_seconds", "cpu_seconds", "memory_gib_seconds")
    return {n: Decimal(getattr(after, n)) - Decimal(getattr(before, n) if before else 0)
            for n in names}  # fmt: skip


def test_a_busy_and_an_idle_machine_are_metered_by_what_they_used(ctl: Controller) -> None:
    """Busy for 20 s of CPU: 20 +- 1 CPU-seconds. Idle: near zero CPU-seconds, but its
    vCPU-seconds in full, as the busy one's. Memory: GiB asked x seconds running."""
    with ctl.client(new_project(ctl)) as client:
        loop = (f"until [ -e {GO} ]; do sleep 0.2; done; while [ ! -e {STOP} ]; do :; done; "
                "echo finished; sleep 600")  # fmt: skip
        busy = client.machines.create("busybox", ["sh", "-c", f"echo {BOOTED}; {loop}"],
                                      name="busy", memory_mib=MEMORY_MIB)  # fmt: skip
        idle = client.machines.create("busybox", ["sh", "-c", f"echo {BOOTED}; sleep 600"],
                                      name="idle", memory_mib=MEMORY_MIB)  # fmt: skip
        for m in (busy, idle):
            printed(client, m.name, BOOTED, 120)
        time.sleep(2 * INTERVAL)  # the boot's samples are in
        before, since = usage(client), time.time()
        time.sleep(2 * INTERVAL)  # idle time before the loop starts
        started = qemu_cpu_s(busy.id)
        client.machines.exec(busy, ["touch", GO])
        deadline = time.monotonic() + 10 * BUSY
        while qemu_cpu_s(busy.id) - started < BUSY and time.monotonic() < deadline:
            time.sleep(0.05)
        client.machines.exec(busy, ["touch", STOP])
        printed(client, busy.name, "finished", 30)
        time.sleep(2 * INTERVAL)  # the loop's last samples are in, and idle time after
        whole, until = usage(client), time.time()
    used = {
        name: minus(whole[m.id], before.get(m.id)) for name, m in (("busy", busy), ("idle", idle))
    }
    window = Decimal(until - since)
    report = used | {"window": window}
    assert abs(used["busy"]["cpu_seconds"] - BUSY) <= 1, report
    # Near none: under 5% of the time it ran (an idle micro-VM under TCG takes about 1%).
    assert used["idle"]["cpu_seconds"] < used["idle"]["vcpu_seconds"] / 20, report
    for r in used.values():
        assert abs(r["vcpu_seconds"] - window) <= 2 * INTERVAL, report
        asked = r["vcpu_seconds"] * MEMORY_MIB / 1024  # 1 vCPU: seconds running
        assert abs(r["memory_gib_seconds"] - asked) < Decimal("0.001"), report
    # Each generation started once; the boot's CPU outside the window is in the whole.
    assert [whole[m.id].starts for m in (busy, idle)] == [1, 1]
    assert Decimal(whole[idle.id].cpu_seconds) > used["idle"]["cpu_seconds"]
