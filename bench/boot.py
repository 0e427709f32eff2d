"""Boot benchmark: how much hutch adds on top of the guest it boots, and what an idle VM costs.

In one run, interleaved, median of N runs each:
  (a) bare QEMU started by hand with hutch's kernel, initramfs, root disk and kernel command
      line, plus the least possible host end (connect, send RUN): to the first output line;
  (b) the microvm driver, from create() to the same line;
  (c) the container driver, the same;
  (d) the guest kernel alone, with an initramfs that only prints a line.
Then the host memory (PSS) of one idle 128 MiB VM and of 20 idle VMs, and the largest overhead
QEMU adds to a guest that fills all its RAM (what the VM cgroup's limit must leave room for).
The last line printed is one JSON object with the figures.

    make bench            or    .venv/bin/python bench/boot.py [--runs N] [--vms N]
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hutch import config
from hutch.agent.runtimes import open_driver
from hutch.images.busybox import build_busybox_rootfs
from hutch.images.rootfs import prepare_root
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec
from hutch.runtime import accel as accel_mod
from hutch.runtime import host, scratch
from hutch.runtime.cgroups import Cgroup, Layout
from hutch.runtime.channel import Connection, T, encode_process
from hutch.runtime.driver import SandboxDriver
from hutch.runtime.guest import build
from hutch.runtime.microvm import EXIT_FILE, MicroVMBackend, create_exit_disk, qemu_command

PATH = ("PATH=/bin",)
FIRST_LINE = ("/bin/echo", "first-line")
IDLE = ("/bin/sh", "-c", "echo ready; exec sleep 3600")
# Doubles a string until the guest's OOM killer stops it: every page of guest RAM gets touched.
FILL = ("/bin/sh", "-c", "awk 'BEGIN { s = \"x\"; while (1) s = s s }'")


def spec(sandbox_id: str, root_dir: str, disk: str, args: tuple[str, ...]) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=args, env=PATH),
        rootfs=root_dir,
        root_disk=disk,
        resources=Resources(cpus=1, memory_mib=128),
    )


async def bare_qemu(backend: MicroVMBackend, s: SandboxSpec, work: Path) -> float:
    """QEMU with hutch's command line but no driver: no cgroup, uid, chroot, records, watcher."""
    sockets = Path(tempfile.mkdtemp(dir=work, prefix="q"))
    scratch.create(sockets / scratch.FILE_NAME, s.resources.scratch_bytes)
    create_exit_disk(sockets / EXIT_FILE)
    args = qemu_command(s, backend.opts, sockets)
    start = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        conn = await Connection.open(str(sockets / "agent.sock"), timeout=10)
        await conn.send(T.RUN, 1, encode_process(s.process))
        while (frame := await conn.recv()) is not None:
            if frame.type == T.STDOUT and frame.payload:
                elapsed = time.monotonic() - start
                break
        else:
            raise RuntimeError("bare qemu: no output")
        await conn.close()
        return elapsed
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(sockets, ignore_errors=True)


async def via_driver(driver: SandboxDriver, s: SandboxSpec) -> float:
    start = time.monotonic()
    await driver.create(s)
    await driver.start(s.id)
    async for record in driver.logs(s.id, follow=True):
        if record.data:
            elapsed = time.monotonic() - start
            break
    await driver.destroy(s.id, force=True)
    return elapsed


def kernel_only(backend: MicroVMBackend) -> float:
    opts = backend.opts
    cmdline = "console=ttyS0 quiet reboot=t panic=-1 cryptomgr.notests"
    if opts.accel.name == "tcg":
        cmdline += f" tsc_early_khz={host.tsc_khz()} tsc=reliable"  # as kernel_cmdline
    args = [
        opts.qemu, "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
        "-accel", "kvm" if opts.accel.name == "kvm" else "tcg,tb-size=32",
        "-cpu", "host" if opts.accel.name == "kvm" else "max", "-m", "128M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(opts.guest.kernel), "-initrd", str(opts.guest.probe_initrd),
        "-append", cmdline,
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if accel_mod.PROBE_LINE in line:
            elapsed = time.monotonic() - start
            break
    else:
        raise RuntimeError("kernel-only guest printed nothing")
    proc.wait()
    return elapsed


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def idle_vms(driver: SandboxDriver, root_dir: str, disk: str, count: int) -> list[float]:
    """PSS of `count` idle VMs booted together; returns one figure per VM."""
    ids = [f"idle{i}" for i in range(count)]
    for sid in ids:
        await driver.create(spec(sid, root_dir, disk, IDLE))
        await driver.start(sid)
    for sid in ids:

        async def ready(sandbox_id: str = sid) -> None:
            async for record in driver.logs(sandbox_id, follow=True):
                if b"ready" in record.data:
                    return

        await asyncio.wait_for(ready(), 300)
    await asyncio.sleep(3)  # let boot-time allocations settle
    pids = [(await driver.inspect(sid)).pid for sid in ids]
    figures = [pss_mib(pid) for pid in pids]
    for sid in ids:
        await driver.destroy(sid, force=True)
    return figures


async def peak_overhead(
    driver: SandboxDriver, root_dir: str, disk: str, memory_mib: int, cpus: int
) -> float:
    """Peak anonymous memory of QEMU's cgroup beyond the guest RAM, for a guest that fills it."""
    s = spec("fill", root_dir, disk, FILL)
    resources = Resources(cpus=cpus, memory_mib=memory_mib)
    s = SandboxSpec(id=s.id, process=s.process, root_disk=disk, resources=resources)
    await driver.create(s)
    group = Cgroup(Layout.detect(), "hutch", s.id)
    await driver.start(s.id)
    peak = 0
    waiter = asyncio.ensure_future(driver.wait(s.id, timeout=300))
    while not waiter.done():
        peak = max(peak, group.anon_bytes())
        await asyncio.sleep(0.02)
    status = waiter.result()
    await driver.destroy(s.id, force=True)
    if not status.oom_killed:
        raise RuntimeError(f"the fill workload was not OOM-killed: {status}")
    return peak / (1 << 20) - memory_mib


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per variant (median)")
    parser.add_argument("--vms", type=int, default=20, help="idle VMs for the density figure")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    settings = config.load(state_dir=work / "state")
    rootfs = build_busybox_rootfs(work / "rootfs")
    root = prepare_root(rootfs, settings.cache_dir, disk=True)
    vm = open_driver(settings, "microvm")
    ct = open_driver(settings, "container")
    backend = vm.backend
    assert isinstance(backend, MicroVMBackend)
    guest = build.prepare(settings.cache_dir)
    root_dir, disk = str(root.rootfs), str(root.disk)

    results: dict[str, list[float]] = {"bare": [], "microvm": [], "container": [], "kernel": []}
    try:
        # one warm-up of each, not counted (page cache, first-use costs)
        await bare_qemu(backend, spec("warm", root_dir, disk, FIRST_LINE), work)
        await via_driver(vm, spec("warm", root_dir, disk, FIRST_LINE))
        await via_driver(ct, spec("warm", root_dir, disk, FIRST_LINE))
        for i in range(args.runs):
            s = spec(f"b{i}", root_dir, disk, FIRST_LINE)
            results["bare"].append(await bare_qemu(backend, s, work))
            results["microvm"].append(await via_driver(vm, s))
            results["container"].append(await via_driver(ct, s))
            results["kernel"].append(kernel_only(backend))
            latest = ", ".join(f"{k} {v[-1]:.3f}s" for k, v in results.items())
            print(f"run {i + 1}/{args.runs}: {latest}", file=sys.stderr)
        sizes = ((128, 1), (512, 2))
        overhead = max([await peak_overhead(vm, root_dir, disk, m, c) for m, c in sizes])
        before = mem_available_mib()
        one = await idle_vms(vm, root_dir, disk, 1)
        many = await idle_vms(vm, root_dir, disk, args.vms)
        after = mem_available_mib()
    finally:
        await vm.close()
        await ct.close()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    figures = {
        "bare_qemu_s": round(med["bare"], 3),
        "microvm_s": round(med["microvm"], 3),
        "container_s": round(med["container"], 4),
        "overhead_ratio": round(med["microvm"] / med["bare"], 3),
        "kernel_only_s": round(med["kernel"], 3),
        "guest_side_s": round(med["bare"] - med["kernel"], 3),
        "accel": backend.opts.accel.name,
        "idle_vm_rss_mib": round(one[0], 1),
        "idle_vms_20_total_mib": round(sum(many), 1),
        "idle_vms_counted": len(many),
        "mem_available_drift_mib": round(before - after, 1),
        "vm_overhead_peak_mib": round(overhead, 1),
        "vm_overhead_limit_mib": backend.opts.overhead_mib,
        "runs": args.runs,
        "kernel": guest.kernel_package,
        "cpus": os.cpu_count(),
    }
    print(f"{'variant':<44} {'median':>8} {'min':>8} {'max':>8}")
    labels = {
        "bare": "(a) bare qemu, hutch's command line",
        "microvm": "(b) microvm driver, create -> first line",
        "container": "(c) container driver, create -> first line",
        "kernel": "(d) guest kernel alone (probe initramfs)",
    }
    for key, label in labels.items():
        v = results[key]
        print(f"{label:<44} {med[key]:>7.3f}s {min(v):>7.3f}s {max(v):>7.3f}s")
    print(f"overhead ratio (b/a): {figures['overhead_ratio']}  accel: {figures['accel']}")
    print(
        f"idle 128 MiB VM: {figures['idle_vm_rss_mib']} MiB PSS; "
        f"{len(many)} idle VMs: {figures['idle_vms_20_total_mib']} MiB PSS in all"
    )
    print(
        f"QEMU's peak overhead over a full guest: {figures['vm_overhead_peak_mib']} MiB "
        f"(the cgroup allows {backend.opts.overhead_mib} MiB)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
