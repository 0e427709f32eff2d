"""Logs benchmark: how fast a workload's output reaches the reader, against `cat` of the same bytes.

In one run, against one `hutch up` on this machine, SIZE bytes (default 50 MB, `yes` output:
2-byte lines, the worst case for a line-per-record format) each way:
  (a) `cat` of a local file of the same bytes into the same reader (a pipe): the ceiling;
  (b) an attached `hutch run --runtime container busybox -- sh -c 'yes | head -c SIZE'`;
  (c) `hutch logs -f` of the same command in a machine created apart (the SDK's `create` with
      `hold_output`: it waits for that follower, as a `run -d` nobody follows would not),
      joined at once;
  (d) the same as (b) in a micro-VM;
  (e) the micro-VM guest's own throughput: `yes | head -c SIZE` timed inside the guest, into
      /dev/null and into its console (ttyS0, a UART under TCG), by /proc/uptime.
Throughput of (a)-(d) is bytes over the time from the first byte read to the last; every run
checks that all SIZE bytes arrived. Also the bytes on the wire per byte of output (NDJSON).
The last line printed is one JSON object with the figures.

    .venv/bin/python -m bench.logs [--size BYTES]  (from the repo root)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.up import HUTCH, hutch_env, hutch_up
from hutch.client import Client

MB = 1_000_000


def read_all(argv: list[str], env: dict[str, str], size: int) -> float:
    """Run argv, read its stdout to the end; MB/s from first byte to last. Checks the size."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    got, first, last = 0, 0.0, 0.0
    while chunk := os.read(proc.stdout.fileno(), 1 << 20):
        if not got:
            first = time.monotonic()
        got += len(chunk)
        last = time.monotonic()
    err = proc.stderr.read() if proc.stderr else b""
    proc.wait(60)
    if got != size or proc.returncode:
        raise RuntimeError(
            f"{' '.join(argv)}: {got} of {size} bytes, exit {proc.returncode}: {err!r}"
        )
    return size / MB / (last - first)


def guest_rate(env: dict[str, str], size: int, sink: str) -> float:
    """MB/s of `yes | head -c size > sink` inside a micro-VM, timed by the guest itself."""
    script = (
        "a=$(cut -d' ' -f1 /proc/uptime); "
        f"yes | head -c {size} > {sink}; "
        "b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"
    )
    out = subprocess.run(
        [HUTCH, "run", "--rm", "busybox", "--", "sh", "-c", script],
        env=env, capture_output=True, text=True, check=True, timeout=1800,
    ).stdout  # fmt: skip
    a, b = map(float, re.findall(r"([\d.]+) ([\d.]+)", out)[-1])
    return size / MB / max(b - a, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=50 * MB)
    args = parser.parse_args()
    size = args.size
    work = Path(tempfile.mkdtemp(prefix="hbl", dir="/tmp"))
    env = hutch_env(work)
    gen = ["sh", "-c", f"yes | head -c {size}"]
    try:
        with hutch_up(env) as (url, token):
            local = work / "out"
            local.write_bytes(b"y\n" * (size // 2) + b"y" * (size % 2))
            cat = read_all(["cat", str(local)], env, size)
            print(f"(a) cat: {cat:.1f} MB/s", file=sys.stderr)
            container = [HUTCH, "run", "--rm", "--runtime", "container", "busybox", "--"]
            attached = read_all([*container, *gen], env, size)
            print(f"(b) attached, container: {attached:.1f} MB/s", file=sys.stderr)
            with Client(url, token, project="default") as client:
                detached = client.machines.create(
                    "busybox", gen, runtime="container", hold_output=True
                ).id  # its output waits for a first follower
                client.machines.wait(detached, "started")
            followed = read_all([HUTCH, "logs", "-f", detached], env, size)
            print(f"(c) logs -f, container: {followed:.1f} MB/s", file=sys.stderr)
            with httpx.stream(
                "GET", f"{url}/v1/machines/{detached}/logs", params={"project": "default"},
                headers={"Authorization": f"Bearer {token}"}, timeout=60,
            ) as response:  # fmt: skip
                wire = sum(len(b) for b in response.iter_raw())
            with Client(url, token, project="default") as client:
                kept = sum(len(line.data) for line in client.machines.logs(detached))
                client.machines.delete(detached, force=True)
                client.machines.wait(detached, "destroyed")
            vm = read_all([HUTCH, "run", "--rm", "busybox", "--", *gen], env, size)
            print(f"(d) attached, micro-VM: {vm:.1f} MB/s", file=sys.stderr)
            null = guest_rate(env, size, "/dev/null")
            console = guest_rate(env, min(size, 2 * MB), "/dev/console")
            print(f"(e) guest alone: {null:.1f} MB/s to /dev/null, {console:.2f} to its console",
                  file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "size_bytes": size,
        "cat_mb_s": round(cat, 1),
        "attached_container_mb_s": round(attached, 1),
        "logs_follow_container_mb_s": round(followed, 1),
        "attached_microvm_mb_s": round(vm, 2),
        "guest_to_null_mb_s": round(null, 2),
        "guest_to_console_mb_s": round(console, 3),
        "microvm_vs_guest_null_ratio": round(null / vm, 2),
        "wire_bytes_per_output_byte": round(wire / max(kept, 1), 2),
    }
    print(f"{'(a) cat of a local file':<36} {cat:8.1f} MB/s")
    print(f"{'(b) attached run, container':<36} {attached:8.1f} MB/s")
    print(f"{'(c) logs -f, container':<36} {followed:8.1f} MB/s")
    print(f"{'(d) attached run, micro-VM':<36} {vm:8.2f} MB/s")
    print(f"{'(e) guest alone, to /dev/null':<36} {null:8.2f} MB/s")
    print(f"{'(e) guest alone, to its console':<36} {console:8.3f} MB/s")
    print(f"wire bytes per byte of output (2-byte lines): {figures['wire_bytes_per_output_byte']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
