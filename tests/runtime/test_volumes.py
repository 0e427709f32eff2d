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
from hutch.model.sandbox import (
    ProcessSpec,
    Resources,
    SandboxSpec,
    SandboxState,
    Stream,
    VolumeMount,
)
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


@pytest.fixture(scope="module")
def probe_root(
    busybox_root: PreparedRoot, tmp_path_factory: pytest.TempPathFactory
) -> PreparedRoot:
    """The busybox root with /bin/lockprobe and /bin/sqlprobe: LOCK_PROBE and SQL_PROBE,
    compiled static here."""
    tmp = tmp_path_factory.mktemp("probes")
    root_dir = tmp / "root"
    subprocess.run(["cp", "-a", str(busybox_root.rootfs), str(root_dir)], check=True)
    for name, source, libs in (
        ("lockprobe", LOCK_PROBE, ()),
        ("sqlprobe", SQL_PROBE, ("-lsqlite3", "-lm")),
    ):
        (tmp / f"{name}.c").write_text(source)
        subprocess.run(
            ["gcc", "-static", "-Os", "-o", str(root_dir / "bin" / name), str(tmp / f"{name}.c"),
             *libs],
            check=True,
            capture_output=True,  # libsqlite3.a's dlopen: a warning for static binaries
        )  # fmt: skip
    return prepare_root(root_dir, CACHE_DIR, disk=True)


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
    request: pytest.FixtureRequest, probe_root: PreparedRoot, short_dir: Path
) -> AsyncIterator[Rt]:
    async for driver in driver_in(short_dir / "state", request.param):
        yield Rt(request.param, driver, probe_root)
    assert str(short_dir / "state") not in Path("/proc/self/mountinfo").read_text()


def vol(source: Path, target: str, **kw: object) -> VolumeMount:
    return VolumeMount(volume_id=source.stem, source=str(source), target=target, **kw)  # type: ignore[arg-type]


def needs_recovery(path: Path) -> bool:
    """Whether the ext4 in `path` has a journal to replay (its superblock's RECOVER flag)."""
    with path.open("rb") as f:
        f.seek(1024 + 0x60)  # s_feature_incompat
        return bool(int.from_bytes(f.read(4), "little") & 0x4)


def acks(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"ack (\d+)", data)]


async def test_volumes_hold_data_files_and_blocks_and_read_only_refuses_writes(
    rt: Rt, tmp_path: Path
) -> None:
    """One sandbox (independent checks, one boot): an ext4 volume takes data, flock, rename and
    fsync; a raw volume is a block device; a full volume is ENOSPC and its file never grows;
    the scratch disk takes fsynced writes past 1 MiB (QEMU's stderr cap was RLIMIT_FSIZE, which
    also failed every guest write past 1 MiB of its disk files). The next sandbox finds the
    data, on the same volume read-only beside another read-write (two at once)."""
    a, b = make_volume(tmp_path / "a.ext4"), make_volume(tmp_path / "b.ext4")
    raw = make_volume(tmp_path / "raw.img", mib=8, fs="none")
    small = make_volume(tmp_path / "small.ext4", mib=16)
    with raw.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"from-the-node")
    script = (
        "mkdir -p /data/deep && echo kept > /data/deep/f && cat /data/deep/f; "
        "lockprobe /data/lock && echo v1 > /data/db.tmp && sync /data/db.tmp && "
        "mv /data/db.tmp /data/db && sync -f /data && cat /data/db && ls /data; "
        "test -b /dev/xvdb && echo is-block; blockdev --getsize64 /dev/xvdb; "
        "dd if=/dev/xvdb bs=1M skip=1 count=1 2>/dev/null | head -c 13; echo; "
        "printf from-the-guest | dd of=/dev/xvdb bs=1M seek=2 conv=fsync 2>/dev/null && echo ok; "
        "dd if=/dev/zero of=/v/fill bs=1M count=64 conv=fsync; echo rc=$?; "
        "dd if=/dev/zero of=/big bs=1M count=8 conv=fsync 2>/dev/null && echo scratch-ok"
    )
    spec = rt.spec(script, vol(a, "/data"), vol(raw, "/dev/xvdb", fs="none"), vol(small, "/v"))
    spec = dataclasses.replace(spec, resources=Resources(memory_mib=128, scratch_mib=64))
    code, out, err = await rt.run(spec)
    assert (code, out.split()) == (0, [
        "kept",
        "locked-out", "relocked", "v1", "db", "deep", "lock", "lost+found",
        "is-block", str(8 << 20), "from-the-node", "ok",
        "rc=1",
        "scratch-ok",
    ]), err  # fmt: skip
    assert "No space left on device" in err
    with raw.open("rb") as r:
        r.seek(2 << 20)
        assert r.read(14) == b"from-the-guest"
    assert raw.stat().st_size == 8 << 20
    assert small.stat().st_size == 16 << 20
    assert os.stat(small).st_blocks * 512 <= 16 << 20
    assert fsck(small).returncode == 0
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
    for disk in (a, b):
        assert disk.stat().st_size == 64 << 20
        assert fsck(disk).returncode == 0, fsck(disk).stdout  # unmounted cleanly at its end
    got = subprocess.run(
        ["debugfs", "-R", "cat /g", str(b)], capture_output=True, text=True, check=False
    )
    assert got.stdout == "yes\n"


async def test_freeze_blocks_writers_until_thawed_or_until_it_lapses(
    rt: Rt, tmp_path: Path
) -> None:
    """A frozen volume blocks writers until the thaw. A node that dies between freeze and thaw:
    the guest agent (or, for a container, the node's watchdog) thaws the volume after about
    10 s. Destroying the running sandbox (`hutch rm -f`) then leaves its journal clean (a
    micro-VM's guest freezes its read-write volumes first), so a read-only attachment next
    mounts it at once."""
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
    frozen = rt.driver.freeze(spec.id, ["/data"])
    await frozen.__aenter__()  # and never __aexit__: as if this process died
    if rt.name == "container":  # the process that would thaw it is gone with this one
        rt.driver.backend._thaw_watchdogs.clear()  # type: ignore[attr-defined]
    proc = await rt.driver.exec(spec.id, writer)
    status, out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (status.code, out) == (0, b"written\n"), (status, err)
    await rt.driver.destroy(spec.id, force=True)  # while it runs, its volume written
    assert not needs_recovery(disk)
    code, out_ro, said = await rt.run(
        rt.spec("cat /data/f", vol(disk, "/data", read_only=True), sandbox_id="ro")
    )
    assert (code, out_ro) == (0, "w\n"), said


async def test_fsynced_writes_and_sqlite_commits_survive_a_kill_9(rt: Rt, tmp_path: Path) -> None:
    """One workload writes and fsyncs a counter, saying so after each fsync; beside it, SQLite
    in WAL mode with synchronous=FULL commits a row per transaction and says so after each
    COMMIT. The sandbox is killed with SIGKILL (QEMU, or every process of the container). A
    killed micro-VM leaves the journals to replay: a read-only attachment says what to do. The
    next sandbox on the volumes finds file systems that check clean once their journals are
    replayed, holding at least the last value acknowledged, and the database intact, still in
    WAL mode, holding every acknowledged row."""
    counter, sql = make_volume(tmp_path / "c.ext4"), make_volume(tmp_path / "sql.ext4")
    script = (  # SQLite's acks on stdout, the counter's on stderr
        "sqlprobe /db/db write & "
        "i=0; while :; do i=$((i+1)); echo $i > /data/c.tmp; sync /data/c.tmp; "
        "mv /data/c.tmp /data/c; sync -f /data; echo ack $i >&2; done"
    )
    volumes = (vol(counter, "/data"), vol(sql, "/db"))
    spec = rt.spec(script, *volumes, sandbox_id="writer")
    await rt.driver.create(spec)
    await rt.driver.start(spec.id)
    acked = {Stream.STDOUT: 0, Stream.STDERR: 0}
    async for record in rt.driver.logs(spec.id, follow=True):
        acked[record.stream] = max([acked[record.stream], *acks(record.data)])
        # SQLite past a few WAL checkpoints (every 16 pages, a row is one)
        if acked[Stream.STDOUT] >= 40 and acked[Stream.STDERR] >= 20:
            break
    await rt.kill_hard(spec.id)
    out, err = await output(rt.driver, spec.id)  # everything it said before it died
    assert out.startswith(b"journal_mode=wal\n"), err
    sql_acked, counter_acked = max(acks(out)), max(acks(err))
    await rt.driver.wait(spec.id, timeout=60)
    await rt.driver.destroy(spec.id, force=True)
    if rt.name == "microvm":
        assert needs_recovery(counter) and needs_recovery(sql)
        code, _, said = await rt.run(
            rt.spec("cat /data/c", vol(counter, "/data", read_only=True), sandbox_id="ro")
        )
        assert code != 0 and "journal needs replaying" in said, said
    # The WAL the writer left behind (SQLite removes it on a clean close only), then the check.
    script = "cat /data/c; test -s /db/db-wal && echo wal-left; sqlprobe /db/db check"
    code, got, said = await rt.run(rt.spec(script, *volumes, sandbox_id="reader"))
    lines = got.splitlines()
    assert code == 0 and lines[1:4] == ["wal-left", "journal_mode=wal", "integrity_check=ok"], said
    assert int(lines[0]) in (counter_acked, counter_acked + 1)  # the next may be fsynced too
    assert int(lines[4].removeprefix("last=")) >= sql_acked  # never lost (the next may be there)
    for disk in (counter, sql):
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
