"""Volumes benchmark: what the local storage backend (hutch.storage.local) costs on the node.

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
The last line printed is one JSON object with the figures. Another part measures I/O inside
guests (`seq_write_ratio`...); `storage_figures` is this part, called from `main`.

    make bench    or    .venv/bin/python -m bench.volumes [--runs N] [--quick]  (as root)
"""

import argparse
import functools
import json
import os
import queue
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 GiB with 64 MiB written")
    args = parser.parse_args()
    size, written, runs = (GIB, 64 * MIB, args.runs) if args.quick else (10 * GIB, GIB, args.runs)
    print(f"volume {size >> 30} GiB, {written >> 20} MiB written, median of {runs} runs")
    figures = storage_figures(size, written, runs)
    for op in ("snapshot", "fork"):
        print(
            f"  {op:13} {figures[f'{op}_s'] * 1000:8.1f} ms (fastest "
            f"{figures[f'{op}_min_s'] * 1000:.1f})  {figures[f'{op}_bytes']:>10,.0f} B more used"
        )
    print(
        f"  export+import {figures['export_import_mb_s']:8.1f} MB/s  "
        f"({figures['export_bytes']:,.0f} B on the wire)"
    )
    print(f"  cp --sparse   {figures['cp_mb_s']:8.1f} MB/s")
    print(f"  export_vs_cp_ratio {figures['export_vs_cp_ratio']:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
