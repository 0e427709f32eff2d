"""Volumes in both runtimes, through the driver: real TCG/KVM micro-VMs and real crun
containers on ext4 (or raw) files made here with mkfs.ext4, as a storage backend makes them."""

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.images.rootfs import PreparedRoot, prepare_root
from hutch.model.errors import Invalid, Unsupported
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec, SandboxState, VolumeMount
from hutch.runtime.driver import SandboxDriver
from tests.helpers import CACHE_DIR
from tests.helpers.runtime import (
    PATH,
    driver_in,
    kill,
    make_spec,
    output,
    spawn_elsewhere,
    wait_for_line,
)

# flock(2) is what the test needs and busybox has no flock applet: a static probe, compiled here.
LOCK_PROBE = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int a = open(argv[1], O_RDWR | O_CREAT, 0644), b = open(argv[1], O_RDWR);
    if (a < 0 || b < 0 || flock(a, LOCK_EX) < 0) { perror("open/flock"); return 1; }
    if (flock(b, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) {
        puts("not-exclusive");
        return 1;
    }
    puts("locked-out");
    flock(a, LOCK_UN);
    if (flock(b, LOCK_EX | LOCK_NB) < 0) { perror("relock"); return 1; }
    puts("relocked");
    return 0;
}
"""

# SQLite (Debian's libsqlite3.a, linked statically) in WAL mode with synchronous=FULL:
# `sqlprobe DB write` commits one row per transaction, forever, printing "ack N" after each
# COMMIT returns; `sqlprobe DB check` prints the journal mode, the integrity check, the last row.
SQL_PROBE = r"""
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static sqlite3 *db;
static int show(void *unused, int n, char **values, char **names) {
    for (int i = 0; i < n; i++) printf("%s=%s\n", names[i], values[i] ? values[i] : "NULL");
    return 0;
}
static void run(const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, show, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, err);
        exit(1);
    }
    fflush(stdout);
}
int main(int argc, char **argv) {
    char sql[128];
    if (argc != 3 || sqlite3_open(argv[1], &db) != SQLITE_OK) return 2;
    if (strcmp(argv[2], "check") == 0) {
        run("PRAGMA journal_mode; PRAGMA integrity_check; SELECT max(n) AS last FROM t");
        return 0;
    }
    run("PRAGMA journal_mode=WAL");
    run("PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=16;"  /* checkpoints too */
        "CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY, pad BLOB)");
    for (long i = 1;; i++) {
        snprintf(sql, sizeof sql, "BEGIN; INSERT INTO t VALUES (%ld, randomblob(2000)); COMMIT", i);
        run(sql);
        printf("ack %ld\n", i);
        fflush(stdout);
    }
}
"""


def make_volume(path: Path, mib: int = 64, fs: str = "ext4") -> Path:
    """A raw sparse file of `mib` MiB, ext4 with a journal inside (as volumes are made)."""
    with path.open("wb") as f:
        f.truncate(mib << 20)
    if fs == "ext4":
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", str(path)], check=True)
    return path


def fsck(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["e2fsck", "-fn", str(path)], capture_output=True, text=True, check=False)


@dataclasses.dataclass
class Rt:
    name: str
    driver: SandboxDriver
    root: PreparedRoot

    def spec(self, script: str, *volumes: VolumeMount, sandbox_id: str = "vol") -> SandboxSpec:
        base = make_spec(self.root, "/bin/sh", "-c", script, sandbox_id=sandbox_id)
        return dataclasses.replace(base, volumes=volumes)

    async def run(self, spec: SandboxSpec) -> tuple[int, str, str]:
        """Run `spec` to its end, destroy it; its exit code, stdout and stderr."""
        await self.driver.create(spec)
        await self.driver.start(spec.id)
        out, err = await output(self.driver, spec.id)
        status = await self.driver.wait(spec.id, timeout=180)
        await self.driver.destroy(spec.id)
        return status.code, out.decode(), err.decode() + status.error

    def with_program(self, tmp_path: Path, name: str, source: str, *libs: str) -> "Rt":
        """This runtime on a copy of its root with /bin/`name`: C `source`, compiled static
        here (linked with `libs`, e.g. -lsqlite3)."""
        (tmp_path / f"{name}.c").write_text(source)
        root_dir = tmp_path / f"{name}-root"
        subprocess.run(["cp", "-a", str(self.root.rootfs), str(root_dir)], check=True)
        binary = root_dir / "bin" / name
        subprocess.run(
            ["gcc", "-static", "-Os", "-o", str(binary), str(tmp_path / f"{name}.c"), *libs],
            check=True,
            capture_output=True,  # libsqlite3.a's dlopen: a warning for static binaries
        )
        return Rt(self.name, self.driver, prepare_root(root_dir, CACHE_DIR, disk=True))

    async def kill_hard(self, sandbox_id: str) -> None:
        """SIGKILL the sandbox as a crash would: QEMU, or every process of the container."""
        info = await self.driver.inspect(sandbox_id)
        if self.name == "microvm":
            os.kill(info.pid, signal.SIGKILL)  # QEMU
        else:
            procs = Path(f"/sys/fs/cgroup/hutch/{sandbox_id}/cgroup.procs")
            for pid in procs.read_text().split() if procs.exists() else [str(info.pid)]:
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(params=["microvm", "container"])
async def rt(
    request: pytest.FixtureRequest, busybox_root: PreparedRoot, short_dir: Path
) -> AsyncIterator[Rt]:
    async for driver in driver_in(short_dir / "state", request.param):
        yield Rt(request.param, driver, busybox_root)
    assert str(short_dir / "state") not in Path("/proc/self/mountinfo").read_text()


def vol(source: Path, target: str, **kw: object) -> VolumeMount:
    return VolumeMount(volume_id=source.stem, source=str(source), target=target, **kw)  # type: ignore[arg-type]


async def test_data_outlives_the_sandbox_read_only_refuses_writes(rt: Rt, tmp_path: Path) -> None:
    a, b = make_volume(tmp_path / "a.ext4"), make_volume(tmp_path / "b.ext4")
    code, out, err = await rt.run(
        rt.spec("echo kept > /data/deep/f 2>/dev/null || { mkdir -p /data/deep; "
                "echo kept > /data/deep/f; }; cat /data/deep/f", vol(a, "/data"))
    )  # fmt: skip
    assert (code, out) == (0, "kept\n"), err
    # The next sandbox: the same volume read-only beside another read-write (two at once).
    script = (
        "cat /old/deep/f; echo no > /old/g && echo wrote-ro; echo yes > /new/g && echo wrote-rw; "
        "grep -E ' /(old|new) ' /proc/mounts | cut -d' ' -f2,4"
    )
    code, out, err = await rt.run(rt.spec(script, vol(a, "/old", read_only=True), vol(b, "/new")))
    lines = out.splitlines()
    assert lines[:2] == ["kept", "wrote-rw"], err
    assert "Read-only file system" in err
    mounts = dict(line.split(" ", 1) for line in lines[2:])
    assert mounts["/old"].startswith("ro,") and mounts["/new"].startswith("rw,")
    assert all("nosuid" in m and "nodev" in m for m in mounts.values())
    for f in (a, b):
        assert f.stat().st_size == 64 << 20
        assert fsck(f).returncode == 0, fsck(f).stdout  # unmounted cleanly by the sandbox's end
    got = subprocess.run(
        ["debugfs", "-R", "cat /g", str(b)], capture_output=True, text=True, check=False
    )
    assert got.stdout == "yes\n"


async def test_a_raw_volume_is_a_block_device(rt: Rt, tmp_path: Path) -> None:
    disk = make_volume(tmp_path / "raw.img", mib=8, fs="none")
    with disk.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"from-the-node")
    script = (
        "test -b /dev/xvdb && echo is-block; blockdev --getsize64 /dev/xvdb; "
        "dd if=/dev/xvdb bs=1M skip=1 count=1 2>/dev/null | head -c 13; echo; "
        "printf from-the-guest | dd of=/dev/xvdb bs=1M seek=2 conv=fsync 2>/dev/null && echo ok"
    )
    code, out, err = await rt.run(rt.spec(script, vol(disk, "/dev/xvdb", fs="none")))
    assert (code, out.split()) == (0, ["is-block", str(8 << 20), "from-the-node", "ok"]), err
    with disk.open("rb") as f:
        f.seek(2 << 20)
        assert f.read(14) == b"from-the-guest"
    assert disk.stat().st_size == 8 << 20


async def test_a_full_volume_is_enospc_and_the_file_never_grows(rt: Rt, tmp_path: Path) -> None:
    disk = make_volume(tmp_path / "small.ext4", mib=16)
    script = "dd if=/dev/zero of=/v/fill bs=1M count=64 conv=fsync; echo rc=$?; df -k /v | tail -1"
    code, out, err = await rt.run(rt.spec(script, vol(disk, "/v")))
    assert code == 0 and "rc=1" in out, err
    assert "No space left on device" in err
    assert disk.stat().st_size == 16 << 20
    assert os.stat(disk).st_blocks * 512 <= 16 << 20
    assert fsck(disk).returncode == 0


async def test_flock_rename_and_fsync_work_on_a_volume(rt: Rt, tmp_path: Path) -> None:
    probe = rt.with_program(tmp_path, "lockprobe", LOCK_PROBE)
    disk = make_volume(tmp_path / "db.ext4")
    script = (
        "lockprobe /v/lock && echo v1 > /v/db.tmp && sync /v/db.tmp && mv /v/db.tmp /v/db && "
        "sync -f /v && cat /v/db && ls /v"
    )
    code, out, err = await probe.run(probe.spec(script, vol(disk, "/v"), sandbox_id="lock"))
    assert (code, out.split()) == (
        0, ["locked-out", "relocked", "v1", "db", "lock", "lost+found"]
    ), err  # fmt: skip


async def test_freeze_blocks_writers_until_thawed(rt: Rt, tmp_path: Path) -> None:
    disk = make_volume(tmp_path / "f.ext4")
    spec = rt.spec("echo up; sleep 600", vol(disk, "/data"))
    await rt.driver.create(spec)
    await rt.driver.start(spec.id)
    await asyncio.wait_for(wait_for_line(rt.driver, spec.id, b"up"), 120)
    writer = ProcessSpec(args=("/bin/sh", "-c", "echo w > /data/f && echo written"), env=(PATH,))
    async with rt.driver.freeze(spec.id, ["/data"]):
        proc = await rt.driver.exec(spec.id, writer)
        done = asyncio.ensure_future(proc.communicate())
        await asyncio.sleep(2)  # it would have written by now, were the volume not frozen
        assert not done.done()
    status, out, _ = await asyncio.wait_for(done, 60)
    assert (status.code, out) == (0, b"written\n")
    with pytest.raises(Invalid, match="no volume mounted at /nope"):
        async with rt.driver.freeze(spec.id, ["/nope"]):
            pass
    # A snapshot cannot hold a volume's data, and QEMU could not reopen a volume it locks at
    # the end of a save: a micro-VM with one is neither suspended nor snapshotted (it runs on).
    refused = (Invalid, "volumes") if rt.name == "microvm" else (Unsupported, "micro-VMs can")
    with pytest.raises(refused[0], match=refused[1]):
        await rt.driver.suspend(spec.id)
    with pytest.raises(refused[0], match=refused[1]):
        await rt.driver.snapshot(spec.id, tmp_path / "snap")
    assert not (tmp_path / "snap").exists()
    assert (await rt.driver.inspect(spec.id)).state is SandboxState.RUNNING
    await rt.driver.destroy(spec.id, force=True)


async def test_freeze_ends_by_itself_when_no_thaw_comes(rt: Rt, tmp_path: Path) -> None:
    """A node that dies between freeze and thaw: the guest agent (or, for a container, the
    node's watchdog) thaws the volume after about 10 s."""
    disk = make_volume(tmp_path / "f.ext4")
    spec = rt.spec("echo up; sleep 600", vol(disk, "/data"))
    await rt.driver.create(spec)
    await rt.driver.start(spec.id)
    await asyncio.wait_for(wait_for_line(rt.driver, spec.id, b"up"), 120)
    frozen = rt.driver.freeze(spec.id, ["/data"])
    await frozen.__aenter__()  # and never __aexit__: as if this process died
    if rt.name == "container":  # the process that would thaw it is gone with this one
        rt.driver.backend._thaw_watchdogs.clear()  # type: ignore[attr-defined]
    writer = ProcessSpec(args=("/bin/sh", "-c", "echo w > /data/f && echo written"), env=(PATH,))
    proc = await rt.driver.exec(spec.id, writer)
    status, out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert (status.code, out) == (0, b"written\n")
    await rt.driver.destroy(spec.id, force=True)


async def test_fsynced_writes_survive_a_kill_9(rt: Rt, tmp_path: Path) -> None:
    """A workload writes and fsyncs a counter, saying so after each fsync; the sandbox is
    killed with SIGKILL (QEMU, or every process of the container); the next sandbox on the file
    finds a file system that checks clean once its journal is replayed, holding at least the
    last value acknowledged."""
    disk = make_volume(tmp_path / "c.ext4")
    script = (
        "i=0; while :; do i=$((i+1)); echo $i > /data/c.tmp; sync /data/c.tmp; "
        "mv /data/c.tmp /data/c; sync -f /data; echo ack $i; done"
    )
    spec = rt.spec(script, vol(disk, "/data"), sandbox_id="writer")
    await rt.driver.create(spec)
    await rt.driver.start(spec.id)
    acked = 0
    async for record in rt.driver.logs(spec.id, follow=True):
        acked = max([acked, *map(int, re.findall(rb"ack (\d+)", record.data))])
        if acked >= 20:
            break
    await rt.kill_hard(spec.id)
    out, _ = await output(rt.driver, spec.id)  # everything it said before it died
    acked = max(int(n) for n in re.findall(rb"ack (\d+)", out))
    await rt.driver.wait(spec.id, timeout=60)
    await rt.driver.destroy(spec.id, force=True)
    code, got, err = await rt.run(rt.spec("cat /data/c", vol(disk, "/data"), sandbox_id="reader"))
    assert code == 0, err
    assert int(got) in (acked, acked + 1)  # the one after the last ack may be fsynced too
    assert fsck(disk).returncode == 0, fsck(disk).stdout


async def test_sqlite_in_wal_mode_keeps_acknowledged_commits_through_a_kill_9(
    rt: Rt, tmp_path: Path
) -> None:
    """SQLite in WAL mode with synchronous=FULL commits a row per transaction and says so after
    each COMMIT; the sandbox is killed hard mid-way; the next sandbox on the volume finds the
    database intact, still in WAL mode, holding every acknowledged row."""
    sql = rt.with_program(tmp_path, "sqlprobe", SQL_PROBE, "-lsqlite3", "-lm")
    disk = make_volume(tmp_path / "sql.ext4")
    spec = sql.spec("sqlprobe /data/db write", vol(disk, "/data"), sandbox_id="sqlw")
    await sql.driver.create(spec)
    await sql.driver.start(spec.id)
    acked = 0
    async for record in sql.driver.logs(spec.id, follow=True):
        acked = max([acked, *map(int, re.findall(rb"ack (\d+)", record.data))])
        if acked >= 40:  # past a few WAL checkpoints (every 16 pages, a row is one)
            break
    await sql.kill_hard(spec.id)
    out, said = await output(sql.driver, spec.id)
    assert out.startswith(b"journal_mode=wal\n"), said
    acked = max(int(n) for n in re.findall(rb"ack (\d+)", out))
    await sql.driver.wait(spec.id, timeout=60)
    await sql.driver.destroy(spec.id, force=True)
    # The WAL the writer left behind (SQLite removes it on a clean close only), then the check.
    script = "test -s /data/db-wal && echo wal-left; sqlprobe /data/db check"
    code, got, err = await sql.run(sql.spec(script, vol(disk, "/data"), sandbox_id="sqlr"))
    lines = got.splitlines()
    assert code == 0 and lines[:3] == ["wal-left", "journal_mode=wal", "integrity_check=ok"], err
    last = int(lines[3].removeprefix("last="))
    assert last >= acked  # an acknowledged commit is never lost (the next may be there too)
    assert fsck(disk).returncode == 0, fsck(disk).stdout


async def test_a_volume_that_is_no_file_is_refused(rt: Rt, tmp_path: Path) -> None:
    spec = rt.spec("true", vol(tmp_path / "missing.ext4", "/data"))
    with pytest.raises(Invalid, match=r"missing\.ext4 is not a file on this node"):
        await rt.driver.create(spec)


async def test_a_volume_that_cannot_be_mounted_fails_the_sandbox(rt: Rt, tmp_path: Path) -> None:
    junk = make_volume(tmp_path / "junk.img", mib=8, fs="none")  # no file system in it
    spec = rt.spec("echo ran", vol(junk, "/data"))
    try:
        await rt.driver.create(spec)
        await rt.driver.start(spec.id)
        status = await rt.driver.wait(spec.id, timeout=120)
        error = status.error
    except Exception as e:
        error = str(e)
    assert "/data" in error and ("volume" in error), error


async def test_scratch_takes_fsynced_writes_past_1_mib(
    microvm: SandboxDriver, busybox_root: PreparedRoot
) -> None:
    """QEMU's stderr cap was RLIMIT_FSIZE, which also failed every guest write past 1 MiB of
    its disk files (EIO in the guest): a workload's fsync then failed."""
    base = make_spec(
        busybox_root, "/bin/sh", "-c", "dd if=/dev/zero of=/big bs=1M count=8 conv=fsync && echo ok"
    )
    spec = dataclasses.replace(base, resources=Resources(memory_mib=128, scratch_mib=64))
    code, out, err = await Rt("microvm", microvm, busybox_root).run(spec)
    assert (code, out) == (0, "ok\n"), err


async def test_a_restarted_host_process_adopts_a_sandbox_with_its_volume(
    rt: Rt, tmp_path: Path, short_dir: Path
) -> None:
    disk = make_volume(tmp_path / "adopt.ext4")
    script = (
        "for i in 1 2 3; do echo tick $i; done; "
        "while [ ! -e /data/go ]; do sleep 0.1; done; cat /data/go > /data/seen; "
        "sync -f /data; echo done"
    )
    kill(spawn_elsewhere(rt.name, short_dir / "state", rt.spec(script, vol(disk, "/data"))))
    adopted = await rt.driver.recover()
    assert [i.id for i in adopted] == ["vol"]
    proc = await rt.driver.exec(
        "vol", ProcessSpec(args=("/bin/sh", "-c", "echo go > /data/go"), env=(PATH,))
    )
    assert (await proc.communicate())[0].code == 0
    status = await rt.driver.wait("vol", timeout=120)
    out, _ = await output(rt.driver, "vol")
    assert status.code == 0 and out.endswith(b"done\n"), out
    await rt.driver.destroy("vol")
    got = subprocess.run(
        ["debugfs", "-R", "cat /seen", str(disk)], capture_output=True, text=True, check=False
    )
    assert got.stdout == "go\n"
    assert fsck(disk).returncode == 0


def needs_recovery(path: Path) -> bool:
    """Whether the ext4 in `path` has a journal to replay (its superblock's RECOVER flag)."""
    with path.open("rb") as f:
        f.seek(1024 + 0x60)  # s_feature_incompat
        return bool(int.from_bytes(f.read(4), "little") & 0x4)


async def test_a_destroyed_micro_vm_leaves_its_volume_clean_a_killed_one_to_replay(
    busybox_root: PreparedRoot, short_dir: Path, tmp_path: Path
) -> None:
    """Destroying a running micro-VM (`hutch rm -f`) first has its guest freeze its
    read-write volumes, so a read-only attachment afterwards mounts at once; a micro-VM killed
    outright leaves the journal to replay, and a read-only attachment says what to do."""
    async for driver in driver_in(short_dir / "state", "microvm"):
        rt = Rt("microvm", driver, busybox_root)
        for how, disk in (("destroy", tmp_path / "d.ext4"), ("kill", tmp_path / "k.ext4")):
            make_volume(disk)
            spec = rt.spec("echo hi > /data/f; sync; echo up; sleep 600", vol(disk, "/data"))
            await driver.create(spec)
            await driver.start(spec.id)
            await asyncio.wait_for(wait_for_line(driver, spec.id, b"up"), 120)
            if how == "kill":
                await rt.kill_hard(spec.id)
                await driver.wait(spec.id, timeout=60)
            await driver.destroy(spec.id, force=True)
            assert needs_recovery(disk) == (how == "kill"), how
            code, out, err = await rt.run(
                rt.spec("cat /data/f", vol(disk, "/data", read_only=True), sandbox_id="ro")
            )
            if how == "destroy":
                assert (code, out) == (0, "hi\n"), err
            else:
                assert code != 0 and "journal needs replaying" in err, err
