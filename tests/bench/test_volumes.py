"""bench/volumes.py's smoke run (`--quick --runs 1`, seconds): it reports every figure it
claims to and leaves no pool mounted. No figure is asserted (benchmarks judge speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount"),
    pytest.mark.timeout(120),
]
REPO = Path(__file__).parents[2]


def pools() -> list[str]:
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in mounts if "hutch-bench-volumes-" in line]


def test_the_quick_run_measures_everything_and_cleans_up() -> None:
    before = pools()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.volumes", "--quick", "--runs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("snapshot_s", "fork_s", "fork_bytes", "export_vs_cp_ratio", "export_bytes"):
        assert key in figures
    assert figures["export_bytes"] < 2 * figures["written_bytes"]  # sparse on the wire
    assert pools() == before
