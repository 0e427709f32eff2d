"""The RuntimeDriver contract, run over every driver: real TCG/KVM micro-VMs and real crun
containers, from a busybox root built by the tests."""

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hutch.agent.sandbox import Roots, RunRequest, build_spec
from hutch.images.rootfs import PreparedRoot
from hutch.model.errors import Conflict, Invalid, NoCapacity, NotFound
from hutch.model.sandbox import (
    ProcessSpec,
    Resources,
    SandboxSpec,
    SandboxState,
    User,
)
from hutch.runtime.cgroups import Cgroup, Layout
from hutch.runtime.driver import SandboxDriver
from tests.helpers import CACHE_DIR
from tests.helpers.runtime import (
    LOG_BOUND,
    PATH,
    driver_in,
    kill,
    make_spec,
    output,
    spawn_elsewhere,
    wait_for_line,
)


@dataclass
class Runtime:
    name: str
    driver: SandboxDriver
    root: PreparedRoot
    state_dir: Path

    def spec(self, *args: str, **kw: Any) -> SandboxSpec:
        return make_spec(self.root, *args, **kw)

    async def run(self, spec: SandboxSpec) -> None:
        await self.driver.create(spec)
        await self.driver.start(spec.id)

    async def output(self, sandbox_id: str) -> tuple[bytes, bytes]:
        return await output(self.driver, sandbox_id)

    async def wait_for_line(self, sandbox_id: str, line: bytes) -> None:
        await asyncio.wait_for(wait_for_line(self.driver, sandbox_id, line), 60)


@pytest.fixture(params=["microvm", "container"])
async def rt(
    request: pytest.FixtureRequest, busybox_root: PreparedRoot, short_dir: Path
) -> AsyncIterator[Runtime]:
    state_dir = short_dir / "state"
    async for driver in driver_in(state_dir, request.param):
        runtime = Runtime(request.param, driver, busybox_root, state_dir)
        yield runtime
    assert_nothing_left(runtime)


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def assert_nothing_left(rt: Runtime, sandbox_id: str | None = None) -> None:
    root = rt.state_dir / "sandboxes" / rt.name
    names = [p.name for p in root.iterdir() if not p.name.startswith(".")] if root.exists() else []
    assert names == [] if sandbox_id is None else sandbox_id not in names
    assert str(rt.state_dir) not in mountinfo()
    ids = [sandbox_id] if sandbox_id else names
    for sid in ids:
        assert not Cgroup(Layout.detect(), "hutch", sid).exists()


async def test_exit_code_is_propagated(rt: Runtime) -> None:
    await rt.run(rt.spec("/bin/sh", "-c", "exit 3", sandbox_id="ex3"))
    status = await rt.driver.wait("ex3", timeout=120)
    assert (status.code, status.signal, status.oom_killed, status.error) == (3, 0, False, "")
    info = await rt.driver.inspect("ex3")
    assert info.state is SandboxState.EXITED
    assert info.started_at and info.finished_at and info.finished_at >= info.started_at


async def test_env_workdir_and_user_are_honoured(rt: Runtime) -> None:
    spec = rt.spec(
        "/bin/sh", "-c", "echo $GREETING; pwd; id",
        env=("GREETING=hello from hutch",), cwd="/home/app", user=User(1000, 1000, (1000, 2000)),
    )  # fmt: skip
    await rt.run(spec)
    out, _ = await rt.output("sb")
    assert out.decode().splitlines() == [
        "hello from hutch",
        "/home/app",
        "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)",
    ]


async def test_stdout_and_stderr_are_kept_apart(rt: Runtime) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    await rt.run(rt.spec("/bin/sh", "-c", script))
    out, err = await rt.output("sb")
    assert out == b"out1\nout2\nout3\n"
    assert err == b"err1\nerr2\nerr3\n"


async def test_exec_while_running(rt: Runtime) -> None:
    await rt.run(rt.spec("/bin/sh", "-c", "echo up; sleep 600"))
    await rt.wait_for_line("sb", b"up")
    proc = await rt.driver.exec(
        "sb",
        ProcessSpec(
            args=("/bin/sh", "-c", "read x; echo got:$x; echo oops >&2; exit 5"),
            env=(PATH,),
            stdin=True,
        ),
    )
    status, out, err = await proc.communicate(b"ping\n")
    assert (status.code, out, err) == (5, b"got:ping\n", b"oops\n")
    missing = await rt.driver.exec("sb", ProcessSpec(args=("/no/such",), env=(PATH,)))
    status, _, _ = await missing.communicate()
    assert status.code == 127 and "No such file" in status.error
    await rt.driver.stop("sb", timeout=1)


async def test_sigterm_reaches_a_workload_that_traps_it(rt: Runtime) -> None:
    script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done"
    await rt.run(rt.spec("/bin/sh", "-c", script))
    await rt.wait_for_line("sb", b"ready")
    status = await rt.driver.stop("sb", timeout=30)
    assert (status.code, status.signal) == (42, 0)
    out, _ = await rt.output("sb")
    assert b"got-term" in out


async def test_a_workload_ignoring_sigterm_is_killed_after_the_timeout(rt: Runtime) -> None:
    await rt.run(rt.spec("/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"))
    await rt.wait_for_line("sb", b"ready")
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = await rt.driver.stop("sb", timeout=1.5)
    elapsed = loop.time() - started
    assert (status.code, status.signal, status.error) == (137, 9, "")
    assert 1.5 <= elapsed < 15


async def test_out_of_memory_is_reported_and_the_host_is_unharmed(rt: Runtime) -> None:
    # busybox awk doubles a string until the kernel's OOM killer stops it
    hog = "awk 'BEGIN { s = \"x\"; while (1) s = s s }'"
    await rt.run(rt.spec("/bin/sh", "-c", hog, memory=128))
    status = await rt.driver.wait("sb", timeout=180)
    assert status.oom_killed
    assert (status.code, status.signal, status.error) == (137, 9, "")
    await rt.driver.destroy("sb")
    await rt.run(rt.spec("/bin/echo", "still fine", sandbox_id="after"))
    out, _ = await rt.output("after")
    assert out == b"still fine\n"


async def test_scratch_is_disk_not_memory(rt: Runtime) -> None:
    """A 128 MiB machine writes 320 MB into its 400 MiB scratch; writing past the scratch fails
    with ENOSPC, and nothing is killed as out of memory."""
    script = (
        "dd if=/dev/zero of=/big bs=1M count=320 2>/dev/null && echo wrote-320; "
        "dd if=/dev/zero of=/more bs=1M count=200; echo rc=$?"
    )
    base = rt.spec("/bin/sh", "-c", script)
    resources = Resources(memory_mib=128, scratch_mib=400)
    await rt.run(
        SandboxSpec(
            id="full",
            process=base.process,
            rootfs=base.rootfs,
            root_disk=base.root_disk,
            resources=resources,
        )
    )
    disk = rt.state_dir / "sandboxes" / rt.name / "full" / "scratch"
    assert disk.stat().st_size == 400 << 20  # on the node's disk, as big as asked for
    status = await rt.driver.wait("full", timeout=300)
    out, err = await rt.output("full")
    assert out.decode().split() == ["wrote-320", "rc=1"]
    assert b"No space left on device" in err
    assert (status.code, status.oom_killed, status.error) == (0, False, "")
    assert not (Path(rt.root.rootfs) / "big").exists()  # the shared root is never written
    await rt.driver.destroy("full")
    assert not disk.exists()


async def test_destroy_leaves_nothing_behind(rt: Runtime) -> None:
    await rt.run(rt.spec("/bin/sh", "-c", "echo up; sleep 600", sandbox_id="gone"))
    await rt.wait_for_line("gone", b"up")
    info = await rt.driver.inspect("gone")
    assert info.pid and os.path.exists(f"/proc/{info.pid}")
    with pytest.raises(Conflict):
        await rt.driver.destroy("gone")  # running: needs force
    await rt.driver.destroy("gone", force=True)
    assert not os.path.exists(f"/proc/{info.pid}") or _is_zombie(info.pid)
    assert_nothing_left(rt, "gone")
    await rt.driver.destroy("gone", force=True)  # idempotent
    with pytest.raises(NotFound):
        await rt.driver.inspect("gone")


async def test_recover_after_the_host_process_dies(rt: Runtime) -> None:
    """A driver in another process starts a sandbox and is killed -9; a new driver re-adopts the
    sandbox, its output continues, exec works, and its exit is recorded."""
    script = "i=0; while [ $i -lt 60 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done; exit 9"
    kill(
        spawn_elsewhere(
            rt.name, rt.state_dir, rt.spec("/bin/sh", "-c", script, sandbox_id="orphan")
        )
    )
    adopted = await rt.driver.recover()
    assert [i.id for i in adopted] == ["orphan"]
    assert adopted[0].state is SandboxState.RUNNING
    status = await rt.driver.wait("orphan", timeout=120)
    assert status.code == 9
    out, _ = await rt.output("orphan")
    assert b"tick 59\n" in out
    assert (await rt.driver.recover()) == []  # already adopted: nothing new


async def test_recover_cleans_up_a_sandbox_that_died_unwatched(rt: Runtime) -> None:
    """The host process dies, then its sandbox: a new driver records the death and removes what
    the sandbox held (scratch disk, mounts, cgroup), keeping the record for its owner."""
    ticks = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done"
    spec = rt.spec("/bin/sh", "-c", ticks, sandbox_id="dead")
    kill(spawn_elsewhere(rt.name, rt.state_dir, spec))
    sandbox_dir = rt.state_dir / "sandboxes" / rt.name / "dead"
    pid = json.loads((sandbox_dir / "record.json").read_text())["pid"]
    assert (sandbox_dir / "scratch").exists()
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and not _is_zombie(pid):
        await asyncio.sleep(0.05)

    [info] = await rt.driver.recover()
    assert info.state is SandboxState.FAILED and info.exit is not None
    assert "ended while no hutch process watched it" in info.exit.error
    assert not (sandbox_dir / "scratch").exists()
    assert str(rt.state_dir) not in mountinfo()
    assert not Cgroup(Layout.detect(), "hutch", "dead").exists()
    await rt.driver.destroy("dead")


async def test_output_flood_stays_within_the_log_bound(rt: Runtime) -> None:
    await rt.run(rt.spec("/bin/sh", "-c", "yes hutch-flood | head -c 40000000; echo done >&2"))
    status = await rt.driver.wait("sb", timeout=300)
    assert status.code == 0
    sandbox_dir = rt.state_dir / "sandboxes" / rt.name / "sb"
    logs = sum(p.stat().st_size for p in sandbox_dir.glob("stdio.log*"))
    assert logs <= LOG_BOUND + (64 << 10)
    _, err = await rt.output("sb")
    assert err == b"done\n"  # the newest records are the ones kept


async def test_bad_specs_are_refused(rt: Runtime) -> None:
    with pytest.raises(Invalid, match="does not exist"):
        spec = rt.spec("/bin/true")
        missing = SandboxSpec(
            id="bad", process=spec.process, rootfs="/nonexistent/root", root_disk="/nonexistent.img"
        )
        await rt.driver.create(missing)
    with pytest.raises(Invalid, match="memory"):
        await rt.driver.create(rt.spec("/bin/true", memory=64 << 20))  # 64 TiB
    spec = rt.spec("/bin/true")
    huge = SandboxSpec(
        id="huge",
        process=spec.process,
        rootfs=spec.rootfs,
        root_disk=spec.root_disk,
        resources=Resources(scratch_mib=1 << 30),  # 1 PiB of scratch
    )
    with pytest.raises(NoCapacity, match="scratch disk of 1073741824 MiB does not fit"):
        await rt.driver.create(huge)
    with pytest.raises(Invalid, match="memory"):
        Resources(memory_mib=0)
    with pytest.raises(Invalid, match="command"):
        ProcessSpec(args=())
    with pytest.raises(Invalid, match="nosuchuser"):
        request = RunRequest(image=str(rt.root.rootfs), command=("id",), user="nosuchuser")
        build_spec(request, rt.driver.capabilities(), Roots(CACHE_DIR))
    with pytest.raises(NotFound):
        await rt.driver.start("nosuchsandbox")
    assert await rt.driver.sandboxes() == []


async def test_an_unknown_command_fails_with_a_reason(rt: Runtime) -> None:
    await rt.run(rt.spec("/bin/no-such-program"))
    status = await rt.driver.wait("sb", timeout=120)
    assert status.code == 127
    assert "/bin/no-such-program" in status.error and "No such file" in status.error
    assert (await rt.driver.inspect("sb")).state is SandboxState.FAILED


async def test_stats_and_lifecycle_conflicts(rt: Runtime) -> None:
    await rt.driver.create(rt.spec("/bin/sh", "-c", "echo up; sleep 600"))
    with pytest.raises(Conflict):
        await rt.driver.signal("sb", signal.SIGTERM)  # not started yet
    await rt.driver.start("sb")
    with pytest.raises(Conflict):
        await rt.driver.start("sb")
    await rt.wait_for_line("sb", b"up")
    stats = await rt.driver.stats("sb")
    assert stats.memory_bytes > 0 and stats.cpu_ns > 0 and stats.pids >= 1
    assert stats.memory_limit_bytes >= 128 << 20
    # Telemetry's reading is the same counters, and the disks' I/O where the runtime tells it.
    reading = rt.driver.reading("sb")
    assert reading.state == "running" and reading.stats and reading.stats.cpu_ns >= stats.cpu_ns
    disks = await rt.driver.disk_io("sb")
    if rt.driver.capabilities().isolation == "vm":  # QEMU's own counters of each drive
        assert disks["root"].read_bytes > 0 and disks["root"].read_ops > 0, disks
        assert set(disks) == {"root", "scratch"}, disks
    else:
        assert disks == {}  # a container's I/O goes through the node's page cache, unattributed
    await rt.driver.signal("sb", signal.SIGKILL)
    status = await rt.driver.wait("sb", timeout=60)
    assert status.signal == 9
    ended = rt.driver.reading("sb")
    assert ended.state == "exited" and await rt.driver.disk_io("sb") == {}
    # When it ended: what a sandbox that ran between two of telemetry's turns is metered by.
    assert ended.started_at and ended.finished_at and ended.finished_at >= ended.started_at


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
