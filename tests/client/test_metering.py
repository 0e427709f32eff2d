"""Metering with known consumption, end to end: two micro-VMs under a real `hutch up` (its node
samples every second), one keeping its vCPU busy for 20 s of CPU, the other idle, read back
through the SDK's usage (`GET /v1/usage`).

The busy loop runs until its QEMU has had 20 s of CPU by the kernel's count of that process
(/proc/PID/stat, not the cgroup metering reads), then is told to stop: on a loaded host a
vCPU busy for 20 s of wall time gets less than 20 s of CPU, and that is what is metered. The
window is cut by the guests' own output: from a line each prints once booted (so the boot's CPU
is outside it) to a couple of seconds after the loop ended. Each record counts by its start, so
the window holds the whole busy loop and only idle time besides."""

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
        since = time.time()  # both booted: only idle time until GO
        time.sleep(2 * INTERVAL)  # a sample after `since` before the loop starts
        started = qemu_cpu_s(busy.id)
        client.machines.exec(busy, ["touch", GO])
        deadline = time.monotonic() + 10 * BUSY
        while qemu_cpu_s(busy.id) - started < BUSY and time.monotonic() < deadline:
            time.sleep(0.05)
        client.machines.exec(busy, ["touch", STOP])
        printed(client, busy.name, "finished", 30)
        until = time.time() + 2 * INTERVAL  # and a sample or two of idle time after
        time.sleep(until - time.time() + 3 * INTERVAL)  # the samples past `until` are in
        rows, whole = usage(client, since=since, until=until), usage(client)
    used = {name: rows[m.id] for name, m in (("busy", busy), ("idle", idle))}
    window = Decimal(until - since)
    report = {k: r.model_dump() for k, r in used.items()} | {"window": window}
    assert abs(Decimal(used["busy"].cpu_seconds) - BUSY) <= 1, report
    # Near none: under 5% of the time it ran (an idle micro-VM under TCG takes about 1%).
    assert Decimal(used["idle"].cpu_seconds) < Decimal(used["idle"].vcpu_seconds) / 20, report
    for r in used.values():
        assert abs(Decimal(r.vcpu_seconds) - window) <= 2 * INTERVAL, report
        asked = Decimal(r.vcpu_seconds) * MEMORY_MIB / 1024  # 1 vCPU: seconds running
        assert abs(Decimal(r.memory_gib_seconds) - asked) < Decimal("0.001"), report
    # Each generation started once; the boot's CPU outside the window is in the whole.
    assert [whole[m.id].starts for m in (busy, idle)] == [1, 1]
    assert Decimal(whole[idle.id].cpu_seconds) > Decimal(used["idle"].cpu_seconds)
