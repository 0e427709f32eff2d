"""bench/volumes.py's smoke run (`--quick --runs 1`, seconds): it reports every figure it
claims to (the storage part's, and one round of I/O on 8 MiB in a hutch and a bare micro-VM, a
container and on the node) and leaves no pool mounted, no QEMU running, no cgroup behind. No
figure is asserted (benchmarks judge speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount"),
    pytest.mark.timeout(240),
]
REPO = Path(__file__).parents[2]


def pools() -> list[str]:
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in mounts if "hutch-bench-volumes-" in line]


def qemus() -> set[int]:
    return {int(p.name) for p in Path("/proc").glob("[0-9]*") if _is_bench_qemu(p)}


def _is_bench_qemu(proc: Path) -> bool:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"qemu-system-x86_64" in argv[0] and any(b"/tmp/hbv" in a for a in argv)


def bench_cgroups() -> list[Path]:
    return [*Path("/sys/fs/cgroup").glob("**/hutch-bench-vol-*")]


def test_the_quick_run_measures_everything_and_cleans_up() -> None:
    before = pools()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.volumes", "--quick", "--runs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = ["snapshot_s", "fork_s", "fork_bytes", "export_vs_cp_ratio", "export_bytes"]
    for prefix in ("", "container_"):
        keys += [f"{prefix}{kind}_ratio" for kind in ("seq_write", "seq_read", "rand_read")]
    keys += ["seq_write_hutch_mb_s", "seq_read_bare_mb_s", "rand_read_hutch_iops",
             "container_seq_write_node_mb_s", "container_rand_read_container_iops"]  # fmt: skip
    for key in keys:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, key
    assert list(figures)[:7] == [
        "seq_write_ratio", "seq_read_ratio", "rand_read_ratio", "snapshot_s", "fork_s",
        "fork_bytes", "export_vs_cp_ratio",
    ]  # fmt: skip
    assert figures["io_file_bytes"] == 8 << 20
    assert figures["export_bytes"] < 2 * figures["written_bytes"]  # sparse on the wire
    assert pools() == before
    assert not qemus()
    assert not bench_cgroups()
