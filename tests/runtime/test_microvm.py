"""What only the micro-VM promises: QEMU confined on the host, the guest given nothing of it."""

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from hutch.agent.runtimes import open_driver
from hutch.images.rootfs import PreparedRoot
from hutch.model.sandbox import SandboxState
from hutch.runtime import accel
from hutch.runtime.cgroups import Cgroup, Layout
from hutch.runtime.driver import SandboxDriver
from hutch.runtime.guest.build import GuestArtifacts
from hutch.runtime.logs import read_log
from hutch.runtime.microvm import MicroVMBackend, kernel_cmdline
from hutch.runtime.procs import ProcessRef
from tests.helpers.runtime import (
    CONSOLE_BOUND,
    driver_in,
    kill,
    make_spec,
    output,
    settings_for,
    spawn_elsewhere,
    status_fields,
    wait_for_line,
)


async def test_qemu_runs_confined(microvm: SandboxDriver, busybox_root: PreparedRoot) -> None:
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", "echo up; sleep 600"))
    await microvm.start("sb")
    await wait_for_line(microvm, "sb", b"up")
    pid = (await microvm.inspect("sb")).pid
    status = status_fields(pid)
    assert status["Uid"].split()[0] != "0" and status["Gid"].split()[0] != "0"
    assert int(status["CapEff"], 16) == 0
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert os.readlink(f"/proc/{pid}/root").endswith("/sb/jail")
    files = {
        os.readlink(f"/proc/{pid}/fd/{fd}"): fd
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/")
    }
    # its disks (root, scratch, exit), its RAM file, /dev/null and the lease on its uid:
    # nothing else of the host; its stderr is a pipe to the copier that caps its log
    uid = status["Uid"].split()[0]
    disk = Path(str(busybox_root.disk)).name
    assert {Path(f).name for f in files} == {disk, "scratch", "exit", f"vm-{uid}", "null", uid}
    assert os.readlink(f"/proc/{pid}/fd/2").startswith("pipe:")
    lease = next(fd for f, fd in files.items() if Path(f).name == uid)
    flags = Path(f"/proc/{pid}/fdinfo/{lease}").read_text().split()[3]
    assert int(flags, 8) & os.O_ACCMODE == os.O_RDONLY  # it can hold the lease, not rewrite it
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert "/hutch/sb" in cgroup
    stats = await microvm.stats("sb")
    assert stats.memory_limit_bytes == (128 + microvm.capabilities().overhead_mib) << 20


async def test_vms_of_two_hutch_processes_never_share_a_uid(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """`hutch sandbox run` and the node agent keep their sandboxes apart but take QEMU's uid
    from one host-wide pool: a VM started by another process, from another sandboxes
    directory, at the same time, never runs as the same uid."""
    other_state = short_dir / "other"
    ticks = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done"
    theirs = make_spec(busybox_root, "/bin/sh", "-c", ticks, sandbox_id="b")
    ours = make_spec(busybox_root, "/bin/sh", "-c", "echo up; sleep 600")
    other, _ = await asyncio.gather(
        asyncio.to_thread(spawn_elsewhere, "microvm", other_state, theirs), microvm.create(ours)
    )
    try:
        await microvm.start("sb")
        await wait_for_line(microvm, "sb", b"up")
        their_pid = json.loads((other_state / "sandboxes/microvm/b/record.json").read_text())["pid"]
        our_pid = (await microvm.inspect("sb")).pid
        assert status_fields(our_pid)["Uid"] != status_fields(their_pid)["Uid"]
    finally:
        kill(other)
        async for driver in driver_in(other_state, "microvm"):
            await driver.recover()


async def test_the_guest_sees_only_its_own_disk(
    microvm: SandboxDriver, busybox_root: PreparedRoot
) -> None:
    script = "cut -d' ' -f1-3 /proc/mounts; ls /sys/class/net; ls /sys/class/virtio-ports | wc -l"
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", script))
    await microvm.start("sb")
    out, _ = await output(microvm, "sb")
    lines = out.decode().splitlines()
    assert lines[-2:] == ["lo", "1"]  # no network device; one port, the agent's
    filesystems = {line.split()[2] for line in lines[:-2]}
    assert filesystems <= {"overlay", "proc", "sysfs", "tmpfs", "devpts"}  # no 9p, no virtiofs


async def test_a_console_flood_stays_within_its_bound(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    # The guest is root in its VM: it can make the serial device node and write to it forever.
    flood = "mknod /tmp/ttyS0 c 4 64 && yes console-flood | head -c 1000000 > /tmp/ttyS0"
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", flood))
    await microvm.start("sb")
    status = await microvm.wait("sb", timeout=300)
    assert status.code == 0
    logs = list((short_dir / "state" / "sandboxes" / "microvm" / "sb").glob("console.log*"))
    assert logs and sum(p.stat().st_size for p in logs) <= CONSOLE_BOUND + (64 << 10)
    assert b"console-flood" in logs[0].read_bytes() + logs[-1].read_bytes()


async def test_a_guest_that_cannot_boot_is_explained(
    microvm: SandboxDriver, busybox_root: PreparedRoot, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(os.urandom(1 << 20))
    spec = make_spec(busybox_root, "/bin/true")
    spec = type(spec)(id="broken", process=spec.process, root_disk=str(garbage))
    await microvm.create(spec)
    await microvm.start("broken")
    status = await microvm.wait("broken", timeout=120)
    assert status.failed
    assert "mount /dev/vda" in status.error


async def test_debug_guests_explain_a_failed_boot(
    busybox_root: PreparedRoot, short_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(short_dir / "state").model_copy(update={"vm_debug": True})
    driver = open_driver(settings, "microvm")
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(bytes(1 << 20))
    spec = make_spec(busybox_root, "/bin/true")
    await driver.create(type(spec)(id="dbg", process=spec.process, root_disk=str(garbage)))
    await driver.start("dbg")
    status = await driver.wait("dbg", timeout=120)
    assert "mount /dev/vda" in status.error
    console = b"".join(
        r.data for r in read_log(short_dir / "state/sandboxes/microvm/dbg/console.log")
    )
    assert b"# devices" in console and b"vda" in console and b"# virtio ports" in console
    await driver.destroy("dbg")
    await driver.close()


async def test_qemu_killed_from_outside_is_reported(
    microvm: SandboxDriver, busybox_root: PreparedRoot
) -> None:
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", "echo up; sleep 600"))
    await microvm.start("sb")
    await wait_for_line(microvm, "sb", b"up")
    os.kill((await microvm.inspect("sb")).pid, signal.SIGKILL)
    status = await microvm.wait("sb", timeout=30)
    # Said as it happened; not a line the guest printed at boot (its console is not the cause).
    assert status.failed and status.error == "QEMU was killed by signal 9 (SIGKILL)"


def test_tcg_guests_are_told_the_tsc_rate() -> None:
    line = kernel_cmdline("tcg", "erofs")
    assert "tsc_early_khz=" in line and "tsc=reliable" in line and "hutch.rootfstype=erofs" in line
    assert "tsc_early_khz" not in kernel_cmdline("kvm", "ext4")
    assert kernel_cmdline("kvm", "ext4", debug=True).endswith(" hutch.debug")


def test_the_accel_probe_is_cached(
    guest: GuestArtifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def fake_probe(qemu: str, g: GuestArtifacts) -> accel.Accel:
        calls.append(1)
        return accel.Accel("tcg", "probed", 1.0)

    monkeypatch.setattr(accel, "probe", fake_probe)
    first = accel.choose("qemu-system-x86_64", guest, tmp_path)
    second = accel.choose("qemu-system-x86_64", guest, tmp_path)
    assert first == second and len(calls) == 1
    accel.choose("qemu-system-x86_64", guest, tmp_path, refresh=True)
    assert len(calls) == 2
    assert accel.choose("qemu-system-x86_64", guest, tmp_path, "tcg").reason == "configured"


def test_this_host_reports_its_accelerator(microvm: SandboxDriver) -> None:
    assert isinstance(microvm.backend, MicroVMBackend)
    caps = microvm.capabilities()
    assert caps.accel in ("kvm", "tcg") and caps.isolation == "vm" and caps.root == "disk"
    facts = microvm.fingerprint()
    assert facts["accel"] == caps.accel and facts["accel_reason"] and "QEMU" in facts["qemu"]


async def test_a_vm_does_not_outlive_its_sandbox_directory(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """Its state directory removed, nothing could ever read the VM's record or logs: its QEMU
    ends (and its cgroup goes) instead of holding the guest's memory for ever."""
    await microvm.create(make_spec(busybox_root, "/bin/sh", "-c", "echo up; sleep 600"))
    await microvm.start("sb")
    await wait_for_line(microvm, "sb", b"up")
    pid = (await microvm.inspect("sb")).pid
    shutil.rmtree(short_dir / "state" / "sandboxes" / "microvm" / "sb")
    status = await microvm.wait("sb", timeout=60)
    assert status.failed and status.error == "its sandbox directory was removed"
    while os.path.exists(f"/proc/{pid}"):  # reaped: not even a zombie is left
        await asyncio.sleep(0.1)
    while Cgroup(Layout.detect(), "hutch", "sb").exists():
        await asyncio.sleep(0.1)


async def _gone(pid: int, start: int, within: float = 90) -> bool:
    """Whether the process ends (not even a zombie left) within `within` seconds."""
    ref = ProcessRef(pid, start)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while ref.alive() or (os.path.exists(f"/proc/{pid}") and ProcessRef.of(pid) == ref):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def test_a_workload_that_ends_unwatched_leaves_its_exit_not_its_vm(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """Its host process is gone (an agent that is down) when the workload ends: the guest saves
    its exit status and powers off, so the ended machine holds no host memory; the next driver
    that adopts it reports the true exit code, and the logs written while watched."""
    script = "i=0; while [ $i -lt 4 ]; do echo tick $i; i=$((i+1)); done; sleep 2; exit 7"
    state = short_dir / "state"
    spec = make_spec(busybox_root, "/bin/sh", "-c", script, sandbox_id="ended-unwatched")
    kill(spawn_elsewhere("microvm", state, spec))
    record = json.loads((state / "sandboxes/microvm/ended-unwatched/record.json").read_text())
    assert await _gone(record["pid"], record["pid_start"]), "QEMU outlived its workload"

    [info] = await microvm.recover()
    assert info.exit is not None and not info.exit.failed, info.exit
    assert info.exit.code == 7 and info.state is SandboxState.EXITED
    out, _ = await output(microvm, "ended-unwatched")
    assert b"tick 3\n" in out


async def test_agent_start_ends_vms_whose_sandbox_directory_is_gone(
    microvm: SandboxDriver, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """Nobody watched the VM when its directory was removed: the next driver's recovery (the
    node agent's start) ends it; a VM whose directory is there is left running."""
    ticks = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done"
    state = short_dir / "state"
    kept_state = short_dir / "swept-kept"
    for where, sandbox_id in ((state, "swept-lost"), (kept_state, "swept-kept")):
        spec = make_spec(busybox_root, "/bin/sh", "-c", ticks, sandbox_id=sandbox_id)
        kill(spawn_elsewhere("microvm", where, spec))
    lost = json.loads((state / "sandboxes/microvm/swept-lost/record.json").read_text())
    kept = json.loads((kept_state / "sandboxes/microvm/swept-kept/record.json").read_text())
    shutil.rmtree(state / "sandboxes" / "microvm" / "swept-lost")

    assert await microvm.recover() == []
    assert await _gone(lost["pid"], lost["pid_start"], within=30)
    assert not Cgroup(Layout.detect(), "hutch", "swept-lost").exists()
    assert ProcessRef(kept["pid"], kept["pid_start"]).alive()  # its directory is still there
    async for other in driver_in(kept_state, "microvm"):
        assert [i.id for i in await other.recover()] == ["swept-kept"]
