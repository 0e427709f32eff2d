"""Volumes benchmark: what the local storage backend (hutch.storage.local) and I/O on a volume cost.

A backend on a fresh loop-mounted XFS pool (the node's disk is ext4: the pool is what hutch
makes there), one volume of SIZE (10 GiB) with WRITTEN (1 GiB) of data in it, one MiB in every
SIZE/WRITTEN, fsynced. Median of N runs each (three snapshots and forks a run):
  snapshot_s, fork_s    `snapshot` / `clone` (a fork) of that volume: wall seconds (and
                        snapshot_min_s, fork_min_s: the fastest; each fsyncs, and through the
                        pool's loop device a flush waits for the node's own ext4 journal, which
                        other work on the node fills)
  snapshot_bytes, fork_bytes   how much the pool's used space grew with each (df of the pool)
  export_import_s       `import_(export(volume))`, the export made in a thread of its own (as
                        `export | import` runs in two processes): the image made and verified,
                        the copy written and fsynced
  cp_s                  `cp --sparse=always --reflink=never` of the same file into the same
                        pool, then fsync of the copy (what a plain sparse copy costs)
  export_import_mb_s, cp_mb_s   the volume's written MB over those seconds
  export_vs_cp_ratio    export_import_mb_s / cp_mb_s (1.0: as fast as cp)
  export_bytes          the image's size on the wire
The source's pages are dropped (fadvise) before each export and each cp, so that both read it
from the pool. The runs alternate, each going first in every other run. Everything made here
goes at the end (the pool unmounted, its file removed), on failure too.

Then I/O on a volume (`io_figures`), under TCG unless --accel says otherwise, on a pool of its
own: one ext4 volume made by the backend, and bench/volio.c (built static here, copied into a
busybox root) run on a file in it: IO_MIB (128) MiB written sequentially in 1 MiB O_DIRECT writes
then fdatasync, IO_PASSES (4) times; read back in 1 MiB O_DIRECT reads as many times; then IO_OPS
(8000) O_DIRECT reads of 4 KiB at random offsets (the same each run), each phase timed by volio
itself (the guest's clock: the boot is not in it). Direct I/O in the guest or container: its
own page cache is never read.
  micro-VM   hutch: the runtime driver runs volio in a micro-VM with the volume at /data (as
             the agent runs a machine: uid, chroot, seccomp, cgroup); bare: qemu-system-x86_64
             started here with microvm.py's own command line for the same spec (the same kernel,
             initramfs, guest agent, and the same -drive/-device for the same volume file, O_DIRECT
             on the node where microvm.py uses it), the workload handed to the guest agent
             directly, no uid, chroot or seccomp (a cgroup with the same limits: bench/net.py
             says why). A new VM each run (the volume's file can have one QEMU at a time).
  container  the container runtime runs volio with the volume at /data (the volume's ext4 on a
             loop device of the node); against volio run on the node itself on a file in the
             same pool (its XFS, no loop device of its own).
  seq_write_ratio, seq_read_ratio, rand_read_ratio   hutch/bare throughput (MB/s, IOPS) of the
             medians (1.0: as fast; the issue's target is >= 0.9 each); container_*_ratio the
             same, container/node; *_paired_ratio the median of each round's ratio, *_best_ratio
             that of the fastest runs.
The volume and the node's file are both in the pool, whose loop device reads through the node's
page cache (its file is on the node's ext4): what the guest reads "directly" may come from the
node's memory, alike for both sides. The runs alternate, each side going first in every other
round. Under TCG one core runs the guest while QEMU's I/O thread needs another: on a shared
2-core machine random reads (one round trip each) vary 2-10x from run to run, hence medians
over rounds (and *_best_ratio beside them).

The last line printed is one JSON object with the figures (the issue's keys first).

    make bench    or    .venv/bin/python -m bench.volumes [--runs N] [--io-runs N] [--quick]
        [--io-mib MIB] [--io-passes N] [--io-ops N] [--accel tcg|kvm|auto] [--no-io]  (as root)
"""

import argparse
import asyncio
import contextlib
import functools
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from bench.host import build_static, log, remove_parent
from hutch import config
from hutch.agent.runtimes import open_driver
from hutch.images.busybox import build_busybox_rootfs
from hutch.images.rootfs import PreparedRoot, prepare_root
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec, Stream, VolumeMount
from hutch.runtime import scratch
from hutch.runtime.cgroups import Cgroup, Layout, Limits
from hutch.runtime.channel import Connection, T, decode_exit, encode_process
from hutch.runtime.driver import SandboxDriver
from hutch.runtime.microvm import (
    CPU_HEADROOM,
    EXIT_FILE,
    QEMU_PIDS,
    MicroVMBackend,
    MicroVMOptions,
    create_exit_disk,
    qemu_command,
    spawned,
)
from hutch.storage.local import LocalBackend, unmount_pool

MIB = 1 << 20
GIB = 1 << 30


def written_volume(b: LocalBackend, volume_id: str, size: int, written: int) -> str:
    """A raw volume of `size` with `written` bytes of data spread over it; its path."""
    b.create(volume_id, size, "none")
    path = b.attach_source(volume_id).path
    data = os.urandom(MIB)
    stride = size // (written // MIB)
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(written // MIB):
            os.pwrite(fd, data[:8] + i.to_bytes(8, "big") + data[16:], i * stride)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def pool_used(b: LocalBackend) -> int:
    os.sync()
    return shutil.disk_usage(b.data).used


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def snapshot_and_fork(b: LocalBackend, volume_id: str, run: int) -> dict[str, float]:
    before = pool_used(b)
    snapshot_s = timed(lambda: b.snapshot(volume_id, f"s{run}"))
    after_snapshot = pool_used(b)
    fork_s = timed(lambda: b.clone(volume_id, f"fork{run}"))
    after_fork = pool_used(b)
    b.delete(f"fork{run}")
    b.delete_snapshot(volume_id, f"s{run}")
    return {
        "snapshot_s": snapshot_s,
        "fork_s": fork_s,
        "snapshot_bytes": after_snapshot - before,
        "fork_bytes": after_fork - after_snapshot,
    }


def piped(chunks: Iterator[bytes], depth: int = 8) -> Iterator[bytes]:
    """`chunks`, made in a thread of its own: an export and an import run side by side, as
    `hutch volume export | hutch volume import` (two processes) or two nodes would."""
    pipe: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)

    def produce() -> None:
        try:
            for chunk in chunks:
                pipe.put(chunk)
            pipe.put(None)
        except BaseException as e:  # handed to the consumer
            pipe.put(e)

    threading.Thread(target=produce, daemon=True).start()
    while (item := pipe.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def export_import(b: LocalBackend, volume_id: str, run: int) -> dict[str, float]:
    drop_cache(b.attach_source(volume_id).path)
    sent = 0

    def counted() -> Iterator[bytes]:
        nonlocal sent
        for chunk in piped(b.export(volume_id)):
            sent += len(chunk)
            yield chunk

    size = b.info(volume_id).size_bytes
    seconds = timed(lambda: b.import_(f"imported{run}", counted(), max_bytes=size))
    b.delete(f"imported{run}")
    return {"export_import_s": seconds, "export_bytes": sent}


def sparse_cp(b: LocalBackend, volume_id: str, run: int) -> dict[str, float]:
    src = b.attach_source(volume_id).path
    dst = b.data / f"cp{run}"
    drop_cache(src)

    def copy() -> None:
        subprocess.run(["cp", "--sparse=always", "--reflink=never", src, dst], check=True)
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    seconds = timed(copy)
    dst.unlink()
    return {"cp_s": seconds}


def storage_figures(size: int, written: int, runs: int) -> dict[str, float]:
    """This node's storage figures (see the module's docstring), on a pool made and removed
    here."""
    root = Path(tempfile.mkdtemp(prefix="hutch-bench-volumes-", dir="/var/tmp"))
    try:
        b = LocalBackend(root, pool_bytes=4 * size + 4 * GIB)
        written_volume(b, "vol", size, written)
        samples: dict[str, list[float]] = {}
        for run in range(runs):
            parts: list[Callable[[], dict[str, float]]] = [
                *(functools.partial(snapshot_and_fork, b, "vol", run * 10 + i) for i in range(3)),
                functools.partial(export_import, b, "vol", run),
                functools.partial(sparse_cp, b, "vol", run),
            ]
            if run % 2:
                parts[-2], parts[-1] = parts[-1], parts[-2]
            for part in parts:
                for key, value in part().items():
                    samples.setdefault(key, []).append(value)
        figures = {key: statistics.median(values) for key, values in samples.items()}
        figures["snapshot_min_s"] = min(samples["snapshot_s"])
        figures["fork_min_s"] = min(samples["fork_s"])
        figures["export_import_mb_s"] = written / MIB / figures["export_import_s"]
        figures["cp_mb_s"] = written / MIB / figures["cp_s"]
        figures["export_vs_cp_ratio"] = figures["export_import_mb_s"] / figures["cp_mb_s"]
        figures["volume_bytes"] = size
        figures["written_bytes"] = written
        return figures
    finally:
        unmount_pool(root)
        shutil.rmtree(root, ignore_errors=True)


# ---- I/O on a volume: hutch against bare QEMU, and a container against the node -------------

PROBE_SOURCE = Path(__file__).with_name("volio.c")
IO_FILE = "/data/volio"  # on the volume, in guests and containers
# the defaults of --io-mib, --io-ops, --io-runs, --io-passes
IO_MIB, IO_OPS, IO_RUNS, IO_PASSES = 128, 8000, 9, 4


@dataclass(frozen=True, slots=True)
class IoSizes:
    mib: int  # the file each run writes and reads sequentially
    ops: int  # random 4 KiB reads each run
    runs: int  # rounds of each pair (median)
    passes: int = 1  # sequential passes over the file each run (each write pass fdatasyncs)

    def argv(self) -> tuple[str, ...]:
        """volio's arguments after the file."""
        return (str(self.mib), str(self.ops), str(self.passes))


@dataclass(frozen=True, slots=True)
class IoRun:
    """One run of volio: seconds of each phase (on the clock of whoever ran it)."""

    write_s: float
    read_s: float
    rand_s: float
    wall_s: float  # from the bench's start of the run (a boot, for a VM) to its end

    @classmethod
    def parse(cls, out: str, wall_s: float) -> "IoRun":
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["volio"]:
                f = dict(zip(words[1::2], words[2::2], strict=True))
                return cls(float(f["write_s"]), float(f["read_s"]), float(f["rand_s"]), wall_s)
        raise RuntimeError(f"volio printed no figures: {out[-2000:]!r}")


def io_spec(root: PreparedRoot, sandbox_id: str, volume: str, sizes: IoSizes) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=("/bin/volio", IO_FILE, *sizes.argv()), env=("PATH=/bin",)),
        rootfs=str(root.rootfs),
        root_disk=str(root.disk),
        resources=Resources(memory_mib=128),
        volumes=(VolumeMount(volume_id="io", source=volume, target="/data"),),
    )


async def hutch_run(driver: SandboxDriver, spec: SandboxSpec) -> IoRun:
    """`spec` through the runtime driver (as the agent runs a machine), to its end."""
    start = time.perf_counter()
    await driver.create(spec)
    try:
        await driver.start(spec.id)
        out, err = bytearray(), bytearray()
        async for record in driver.logs(spec.id, follow=True):
            (out if record.stream is Stream.STDOUT else err).extend(record.data)
        status = await driver.wait(spec.id, timeout=600)
        wall = time.perf_counter() - start
        if status.code != 0:
            raise RuntimeError(f"{spec.id}: volio exited {status.code}: {err.decode()[-2000:]}")
        return IoRun.parse(out.decode(), wall)
    finally:
        await driver.destroy(spec.id, force=True)


async def bare_run(opts: MicroVMOptions, spec: SandboxSpec, work: Path) -> IoRun:
    """QEMU started here with hutch's command line for `spec` (the same kernel, initramfs,
    guest agent, root disk and -drive/-device for the volume, O_DIRECT where microvm.py uses
    it), the workload given to the guest agent directly. No driver: no uid, chroot, seccomp
    filter or state; but a cgroup beside the hutch VMs' with the same limits (bench/net.py
    says why)."""
    start = time.perf_counter()
    sockets = Path(tempfile.mkdtemp(dir=work, prefix="q"))
    scratch.create(sockets / scratch.FILE_NAME, spec.resources.scratch_bytes)
    create_exit_disk(sockets / EXIT_FILE)
    cgroup = Cgroup(Layout.detect(), opts.host.cgroup_parent, spec.id)
    res = spec.resources
    cgroup.create(
        Limits((res.memory_mib + opts.overhead_mib) << 20, QEMU_PIDS, res.cpus + CPU_HEADROOM)
    )
    args = qemu_command(
        spec, replace(opts, seccomp=False), sockets,
        scratch_direct=scratch.direct_io(sockets / scratch.FILE_NAME),
        volumes_direct=tuple(scratch.direct_io(Path(v.source)) for v in spec.volumes),
    )  # fmt: skip
    proc = subprocess.Popen(
        spawned(opts, cgroup, args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        conn = await Connection.open(str(sockets / "agent.sock"), timeout=60)
        try:
            await conn.send(T.RUN, 1, encode_process(spec.process))
            out, err = bytearray(), bytearray()
            while (frame := await conn.recv()) is not None:
                if frame.type == T.STDOUT:
                    out.extend(frame.payload)
                elif frame.type == T.STDERR:
                    err.extend(frame.payload)
                elif frame.type == T.ERROR:
                    raise RuntimeError(f"bare qemu: {frame.payload.decode(errors='replace')}")
                elif frame.type == T.EXIT:
                    code = decode_exit(frame.payload)[0]
                    if code != 0:
                        raise RuntimeError(f"bare qemu: volio exited {code}: {err.decode()}")
                    return IoRun.parse(out.decode(), time.perf_counter() - start)
            raise RuntimeError(f"bare qemu: the guest agent hung up: {err.decode()[-2000:]}")
        finally:
            await conn.close()
    finally:
        proc.kill()
        _, stderr = proc.communicate()
        cgroup.remove()
        shutil.rmtree(sockets, ignore_errors=True)
        if proc.returncode not in (0, -9):
            log(f"bare qemu: {stderr.decode(errors='replace')[-2000:]}")


async def node_run(binary: Path, path: Path, sizes: IoSizes) -> IoRun:
    """volio on the node itself, on `path` (a file in the pool, beside the volumes)."""
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        str(binary), str(path), *sizes.argv(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"volio on the node: {err.decode()}")
    return IoRun.parse(out.decode(), time.perf_counter() - start)


async def alternate(
    name: str, variants: dict[str, Callable[[], Awaitable[IoRun]]], runs: int
) -> dict[str, list[IoRun]]:
    """`runs` rounds of both variants, the order reversed every other round (A B, B A, ...)
    so that a drift in the machine's load weighs on both alike."""
    out: dict[str, list[IoRun]] = {v: [] for v in variants}
    names = list(variants)
    for i in range(runs):
        for v in names if i % 2 == 0 else names[::-1]:
            out[v].append(await variants[v]())
        log(
            f"{name} run {i + 1}/{runs}: "
            + ", ".join(
                f"{v} write {r[-1].write_s:.2f}s read {r[-1].read_s:.2f}s "
                f"rand {r[-1].rand_s:.2f}s" for v, r in out.items()
            )
        )  # fmt: skip
    return out


def io_ratios(prefix: str, runs: dict[str, list[IoRun]], sizes: IoSizes) -> dict[str, object]:
    """Throughputs (MB/s, IOPS) of the two variants and their ratios (first over second: 1.0
    as fast, above 1 faster) of the medians; `*_paired_ratio` the median over rounds of each
    round's ratio, `*_best_ratio` that of the fastest runs (what the path can do when nothing
    else on the machine gets in the way)."""
    (a_name, a), (b_name, b) = runs.items()
    mb = sizes.mib * sizes.passes * MIB / 1e6
    rates: dict[str, Callable[[IoRun], float]] = {
        "seq_write": lambda r: mb / r.write_s,
        "seq_read": lambda r: mb / r.read_s,
        "rand_read": lambda r: sizes.ops / r.rand_s,
    }
    out: dict[str, object] = {}
    for kind, rate in rates.items():
        unit = "iops" if kind == "rand_read" else "mb_s"
        ra, rb = [rate(r) for r in a], [rate(r) for r in b]
        out[f"{prefix}{kind}_ratio"] = round(statistics.median(ra) / statistics.median(rb), 3)
        out[f"{prefix}{kind}_paired_ratio"] = round(
            statistics.median([x / y for x, y in zip(ra, rb, strict=True)]), 3
        )
        out[f"{prefix}{kind}_best_ratio"] = round(max(ra) / max(rb), 3)
        out[f"{prefix}{kind}_{a_name}_{unit}"] = round(statistics.median(ra), 1)
        out[f"{prefix}{kind}_{b_name}_{unit}"] = round(statistics.median(rb), 1)
    for name, rs in runs.items():
        out[f"{prefix}{name}_run_s"] = round(statistics.median([r.wall_s for r in rs]), 2)
    return out


async def io_figures(sizes: IoSizes, accel: str) -> dict[str, object]:
    """I/O inside a micro-VM on a hutch volume against bare QEMU on the same file, and in a
    container on it against the node on a file in the same pool (see the module's docstring).
    On a pool and under a state directory made and removed here."""
    # short: sandboxes' unix sockets go under it (at most 107 bytes)
    work = Path(tempfile.mkdtemp(prefix="hbv", dir="/tmp"))
    parent = f"hutch-bench-vol-{os.getpid()}"
    settings = config.load(state_dir=work / "state", cgroup_parent=parent, accel=accel)
    pool = Path(tempfile.mkdtemp(prefix="hutch-bench-volumes-io-", dir="/var/tmp"))
    drivers: list[SandboxDriver] = []
    try:
        vol_bytes = 2 * sizes.mib * MIB + 64 * MIB
        b = LocalBackend(pool, pool_bytes=4 * vol_bytes + GIB)
        b.create("io", vol_bytes, "ext4")
        volume = b.attach_source("io").path
        binary = build_static(PROBE_SOURCE, work / "volio")
        rootfs = build_busybox_rootfs(work / "rootfs")
        shutil.copy2(binary, rootfs / "bin" / "volio")
        root = prepare_root(rootfs, settings.cache_dir, disk=True)
        vm = open_driver(settings, "microvm", sandboxes_dir=work / "vms")
        drivers.append(vm)
        assert isinstance(vm.backend, MicroVMBackend)
        opts = vm.backend.opts
        figures: dict[str, object] = {"accel": opts.accel.name}
        n = 0

        def spec() -> SandboxSpec:
            nonlocal n
            n += 1
            return io_spec(root, f"io{n}", str(volume), sizes)

        vms = await alternate(
            "micro-VM",
            {
                "hutch": lambda: hutch_run(vm, spec()),
                "bare": lambda: bare_run(opts, spec(), work),
            },
            sizes.runs,
        )
        figures |= io_ratios("", vms, sizes)
        ct = open_driver(settings, "container", sandboxes_dir=work / "cts")
        drivers.append(ct)
        host_file = b.data / "node-volio"
        cts = await alternate(
            "container",
            {
                "container": lambda: hutch_run(ct, spec()),
                "node": lambda: node_run(binary, host_file, sizes),
            },
            sizes.runs,
        )
        figures |= io_ratios("container_", cts, sizes)
        figures |= {"io_file_bytes": sizes.mib * MIB, "io_passes": sizes.passes,
                    "io_rand_ops": sizes.ops, "io_runs": sizes.runs}  # fmt: skip
        return figures
    finally:
        for driver in drivers:
            for info in await driver.sandboxes():
                with contextlib.suppress(Exception):
                    await driver.destroy(info.id, force=True)
            await driver.close()
        unmount_pool(pool)
        remove_parent(parent)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pool, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="storage runs (median)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 GiB with 64 MiB written; I/O on 8 MiB, one round",
    )
    parser.add_argument("--io-mib", type=int, default=IO_MIB, help="MiB each I/O run writes, reads")
    parser.add_argument("--io-ops", type=int, default=IO_OPS, help="random 4 KiB reads each run")
    parser.add_argument(
        "--io-passes", type=int, default=IO_PASSES, help="sequential passes over the file a run"
    )
    parser.add_argument(
        "--io-runs", type=int, default=IO_RUNS, help="I/O rounds of each pair (median)"
    )
    parser.add_argument(
        "--accel",
        choices=("tcg", "kvm", "auto"),
        default="tcg",
        help="the micro-VMs' (the issue's figures are under TCG)",
    )
    parser.add_argument("--no-io", action="store_true", help="the storage figures only")
    args = parser.parse_args()  # fmt: skip
    # line by line: nothing buffered here is written twice by a child that forks and exits
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    size, written, runs = (GIB, 64 * MIB, args.runs) if args.quick else (10 * GIB, GIB, args.runs)
    io = (
        IoSizes(8, 200, 1)
        if args.quick
        else IoSizes(args.io_mib, args.io_ops, args.io_runs, args.io_passes)
    )
    print(f"volume {size >> 30} GiB, {written >> 20} MiB written, median of {runs} runs")
    st = storage_figures(size, written, runs)
    for op in ("snapshot", "fork"):
        print(
            f"  {op:13} {st[f'{op}_s'] * 1000:8.1f} ms (fastest "
            f"{st[f'{op}_min_s'] * 1000:.1f})  {st[f'{op}_bytes']:>10,.0f} B more used"
        )
    print(
        f"  export+import {st['export_import_mb_s']:8.1f} MB/s  "
        f"({st['export_bytes']:,.0f} B on the wire)"
    )
    print(f"  cp --sparse   {st['cp_mb_s']:8.1f} MB/s")
    print(f"  export_vs_cp_ratio {st['export_vs_cp_ratio']:.2f}")
    figures: dict[str, object] = dict(st)
    f = figures
    if not args.no_io:
        print(f"I/O on a volume: {io.mib} MiB sequential x {io.passes}, {io.ops} random 4 KiB "
              f"reads, median of {io.runs} rounds")  # fmt: skip
        figures |= asyncio.run(io_figures(io, args.accel))
        for prefix, a, b in (("", "hutch", "bare"), ("container_", "container", "node")):
            for kind, unit in (("seq_write", "mb_s"), ("seq_read", "mb_s"), ("rand_read", "iops")):
                print(
                    f"  {prefix + kind:26} {a} {f[f'{prefix}{kind}_{a}_{unit}']:9.1f}  "
                    f"{b} {f[f'{prefix}{kind}_{b}_{unit}']:9.1f} {unit.replace('_', '/')}  "
                    f"ratio {f[f'{prefix}{kind}_ratio']}"
                )
    keys = ["seq_write_ratio", "seq_read_ratio", "rand_read_ratio", "snapshot_s", "fork_s",
            "fork_bytes", "export_vs_cp_ratio"]  # fmt: skip
    print(json.dumps({k: figures[k] for k in keys if k in figures} | figures))


if __name__ == "__main__":
    main()
