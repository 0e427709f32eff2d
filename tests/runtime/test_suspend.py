"""Suspend, resume and snapshots of micro-VMs (the container runtime has none)."""

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hutch.images.rootfs import PreparedRoot
from hutch.model.errors import Conflict, InsufficientStorage, Unavailable, Unsupported
from hutch.model.sandbox import ProcessSpec, SandboxState
from hutch.runtime import snapfiles
from hutch.runtime.driver import SandboxDriver
from tests.helpers.runtime import PATH, driver_in, make_spec, wait_for_line

# Sandbox ids name host-wide cgroups: these tests' own, apart from other tests' "sb" running
# at the same time in another process.
SB = "susp"
# Counts into a file it holds open (fd 3), and says so on stdout.
COUNTER = (
    "exec 3>/tmp/count; i=0; while :; do i=$((i+1)); echo $i >&3; echo tick $i; sleep 0.1; done"
)


async def sh(driver: SandboxDriver, script: str, sandbox_id: str = SB) -> str:
    proc = await driver.exec(sandbox_id, ProcessSpec(args=("/bin/sh", "-c", script), env=(PATH,)))
    status, out, err = await proc.communicate()
    assert status.code == 0, (status, err)
    return out.decode()


async def count(driver: SandboxDriver, sandbox_id: str = SB) -> int:
    """The counter's latest value, read from its open file."""
    return int((await sh(driver, "tail -n1 /tmp/count", sandbox_id)).split()[0])


async def counts_on(driver: SandboxDriver, before: int, sandbox_id: str = SB) -> int:
    """Wait until the same counter goes on past `before`; its new value."""
    for _ in range(100):
        now = await count(driver, sandbox_id)
        if now > before:
            return now
        await asyncio.sleep(0.1)
    raise AssertionError(f"the counter stayed at {before}")


def qemu_pid(driver: SandboxDriver) -> int:
    return int(driver._get(SB).record.pid)


def ended(pid: int) -> bool:
    """The process is gone, or dead and not yet reaped (a driver closed since started it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_a_suspended_vm_resumes_where_it_was(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """One guest through every suspend path: a failed suspend and one a resume cancels leave it
    running; a suspend parks QEMU, paused, its guest RAM given back; a new driver (an agent
    restart) ends that QEMU, knows it suspended and restores it; a suspend and resume within one
    driver go on in the parked QEMU; each time its workload and open file go on, its clock is
    the host's. Stopped while suspended, its parked QEMU ends."""
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", COUNTER, sandbox_id=SB))
    await microvm.start(SB)
    await wait_for_line(microvm, SB, b"tick 3")
    record = microvm._get(SB).record
    ram = Path(record.details["memory"])
    assert ram.parent == Path("/dev/shm/hutch") and ram.stat().st_size == 128 << 20

    # A suspend that fails after the guest was paused (its RAM file cannot be read) leaves it
    # running, nothing saved, and says why as a HutchError (the node reports those).
    keep = ram.with_name(ram.name + ".keep")
    os.link(ram, keep)
    ram.unlink()
    with pytest.raises(Unavailable, match=r"could not be saved: .*No such file"):
        await microvm.suspend(SB)
    os.rename(keep, ram)
    sandbox_dir = short_dir / "state/sandboxes/microvm" / SB
    assert not (sandbox_dir / "suspend").exists()
    assert (await microvm.inspect(SB)).state is SandboxState.RUNNING
    n = await counts_on(microvm, await count(microvm))

    # A resume while it is being suspended cancels the suspend.
    suspending = asyncio.create_task(microvm.suspend(SB))
    await asyncio.sleep(0)
    assert (await microvm.resume(SB)).state is SandboxState.RUNNING
    with pytest.raises(Conflict, match="cancelled its suspend"):
        await suspending
    n = await counts_on(microvm, n)
    with pytest.raises(Conflict, match="not suspended"):
        await microvm.resume(SB)

    pid = qemu_pid(microvm)
    t0 = time.monotonic()
    info = await microvm.suspend(SB)
    suspend_s = time.monotonic() - t0
    # Parked: the same QEMU, holding none of the guest's RAM (its file is all holes).
    assert info.state is SandboxState.SUSPENDED and info.pid == pid
    assert ram.stat().st_size == 128 << 20 and snapfiles.allocated(ram) == 0
    n = int((sandbox_dir / "stdio.log").read_bytes().rsplit(b"tick ", 1)[1].split()[0])
    with pytest.raises(Conflict):
        await microvm.exec(SB, ProcessSpec(args=("/bin/true",)))
    await microvm.close()

    await asyncio.sleep(2)  # the guest's clock stands still meanwhile
    async for driver in driver_in(short_dir / "state", "microvm"):
        [adopted] = await driver.recover()
        assert adopted.state is SandboxState.SUSPENDED and adopted.pid == 0
        assert ended(pid) and not ram.exists()
        t0 = time.monotonic()
        info = await driver.resume(SB)
        restore_s = time.monotonic() - t0
        assert info.state is SandboxState.RUNNING and info.pid
        await counts_on(driver, n)
        guest_time = float(await sh(driver, "date +%s"))
        assert abs(guest_time - time.time()) <= 1.5
        assert not (sandbox_dir / "suspend").exists()

        # Parked and resumed in the same QEMU.
        pid = qemu_pid(driver)
        await driver.suspend(SB)
        n = int((sandbox_dir / "stdio.log").read_bytes().rsplit(b"tick ", 1)[1].split()[0])
        await asyncio.sleep(1)
        t0 = time.monotonic()
        info = await driver.resume(SB)
        resume_s = time.monotonic() - t0
        assert info.state is SandboxState.RUNNING and info.pid == pid
        await counts_on(driver, n)
        guest_time = float(await sh(driver, "date +%s"))
        assert abs(guest_time - time.time()) <= 1.5
        print(f"suspend {suspend_s:.2f} s, restore {restore_s:.2f} s, resume {resume_s:.2f} s")

        # Guest RAM written while parked (the saved state would no longer match QEMU's
        # devices): it is restored anew, in a new QEMU, and goes on all the same.
        await driver.suspend(SB)
        n = int((sandbox_dir / "stdio.log").read_bytes().rsplit(b"tick ", 1)[1].split()[0])
        with ram.open("r+b") as f:
            f.seek(4096)
            f.write(b"x")
        info = await driver.resume(SB)
        assert info.state is SandboxState.RUNNING and info.pid != pid and ended(pid)
        await counts_on(driver, n)
        pid = qemu_pid(driver)

        # Stopped while suspended: its saved state and parked QEMU go as a kill would end
        # them; destroy leaves nothing.
        await driver.suspend(SB)
        assert (await driver.stop(SB)).signal == signal.SIGKILL
        assert ended(pid)
        assert not (sandbox_dir / "suspend").exists()
        await driver.destroy(SB)
        assert not sandbox_dir.exists() and not any(ram.parent.glob(f"{ram.name}*"))


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError("no Pss")


async def test_clones_of_a_snapshot_are_machines_of_their_own(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """A snapshot pauses the running guest without ending it; each clone continues the
    snapshot's workload (its counter, its open file) as a machine of its own: hostname,
    machine-id, random numbers. A clone suspends and resumes like any guest."""
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", COUNTER, sandbox_id=SB))
    await microvm.start(SB)
    await wait_for_line(microvm, SB, b"tick 3")
    # A disk without room for it is not filled (other guests' scratch disks grow there): a
    # clear refusal, and the guest runs on.
    small = short_dir / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(InsufficientStorage, match=r"it keeps 512\.0 MiB free"):
            await microvm.snapshot(SB, small / "snap")
        assert not (small / "snap").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)
    await counts_on(microvm, await count(microvm))
    dest = short_dir / "snap"
    t0 = time.monotonic()
    snapshotting = asyncio.create_task(microvm.snapshot(SB, dest))
    await asyncio.sleep(0)
    with pytest.raises(Conflict, match="being snapshotted"):  # it would run during the copy
        await microvm.suspend(SB)
    snap = await snapshotting
    snapshot_s = time.monotonic() - t0
    assert snap.path == str(dest) and snap.resources.memory_mib == 128
    assert 0 < snap.size_bytes < 200 << 20  # sparse: what the guest touched, not all of it
    at_snapshot = await count(microvm)
    await counts_on(microvm, at_snapshot)  # the original runs on
    with pytest.raises(Conflict, match="exists"):
        await microvm.snapshot(SB, dest)

    clones = ("clone-a", "clone-b")
    restore_s = []
    for name in clones:
        spec = make_spec(busybox_root, "/bin/true", sandbox_id=name)
        spec = dataclasses.replace(spec, restore_from=str(dest), hostname=name)
        t0 = time.monotonic()
        await microvm.create(spec)
        await microvm.start(name)
        restore_s.append(time.monotonic() - t0)
    facts = []
    for name in clones:
        # the snapshot's workload goes on in each, from where the snapshot took it
        assert await counts_on(microvm, at_snapshot - 1, name) >= at_snapshot
        facts.append(
            await sh(
                microvm, "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -x", name
            )
        )
    a, b = (f.splitlines() for f in facts)
    assert a[0] == "clone-a" and b[0] == "clone-b"
    assert len(a[1]) == 32 and a[1] != b[1]
    assert a[2:] != b[2:]
    pss = {name: pss_kib(microvm._get(name).record.pid) for name in (SB, *clones)}

    # Its RAM is private: it goes in the migration stream. Who waited for its end before the
    # suspend learns of it after the resume.
    waiter = asyncio.create_task(microvm.wait("clone-a"))
    await microvm.suspend("clone-a")
    await microvm.resume("clone-a")
    await counts_on(microvm, await count(microvm, "clone-a"), "clone-a")
    await microvm.signal("clone-a", signal.SIGKILL)
    assert (await asyncio.wait_for(waiter, 30)).signal == signal.SIGKILL

    # A snapshot of a clone (its RAM in the stream, no memory file) makes clones too.
    again = short_dir / "snap-of-clone"
    await microvm.snapshot("clone-b", again)
    at_again = await count(microvm, "clone-b")
    spec = make_spec(busybox_root, "/bin/true", sandbox_id="clone-c")
    await microvm.create(dataclasses.replace(spec, restore_from=str(again), hostname="clone-c"))
    await microvm.start("clone-c")
    assert await counts_on(microvm, at_again, "clone-c") > at_again
    assert (await sh(microvm, "hostname", "clone-c")).strip() == "clone-c"
    print(f"snapshot {snapshot_s:.2f} s, restore+start {restore_s}, PSS KiB {pss}")


async def test_containers_cannot_suspend_or_snapshot(
    container: SandboxDriver, busybox_root: PreparedRoot
) -> None:
    assert not container.capabilities().suspend
    await container.create(
        make_spec(busybox_root, "/bin/sh", "-c", "echo up; sleep 600", sandbox_id=SB)
    )
    await container.start(SB)
    await wait_for_line(container, SB, b"up")
    with pytest.raises(Unsupported, match="micro-VMs can"):
        await container.suspend(SB)
    with pytest.raises(Unsupported, match="micro-VMs can"):
        await container.snapshot(SB, Path("/nonexistent"))
    assert (await container.inspect(SB)).state is SandboxState.RUNNING


async def test_a_vm_on_the_uid_of_one_that_ended_keeps_its_ram_file(
    busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """A QEMU's uid is free once it exits, its sandbox's RAM file goes when the sandbox is
    destroyed: destroying the ended one must not take the RAM of the next VM on that uid (which
    could then never be suspended). A uid range of this test's own, so both take its first."""
    async for driver in driver_in(short_dir / "state", "microvm", vm_uid_base=1_400_000):
        await driver.create(make_spec(busybox_root, "/bin/sleep", "600", sandbox_id="ended"))
        await driver.start("ended")
        os.kill(int(driver._get("ended").record.pid), signal.SIGKILL)
        await driver.wait("ended", timeout=60)
        await driver.create(make_spec(busybox_root, "/bin/sleep", "600", sandbox_id="next"))
        await driver.start("next")
        ended, after = driver._get("ended").record, driver._get("next").record
        assert ended.details["uid"] == after.details["uid"] == "1400000"
        await driver.destroy("ended")
        assert Path(after.details["memory"]).exists()
        await driver.suspend("next")
        assert (await driver.inspect("next")).state is SandboxState.SUSPENDED
