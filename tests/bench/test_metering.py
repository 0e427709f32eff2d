"""bench/metering.py's smoke run (`--turns 2`, seconds): it reports every figure it claims to
and leaves no cgroup, namespace or process behind. No figure is asserted (benchmarks judge
speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups, namespaces")
REPO = Path(__file__).parents[2]


def leftovers() -> list[str]:
    groups = [str(p) for p in Path("/sys/fs/cgroup").glob("*/hutch-bench-meter-*")]
    names = subprocess.run(["ip", "netns"], capture_output=True, text=True, check=True).stdout
    return groups + [n for n in names.split() if n.startswith("hutch-bench-meter-")]


def test_the_quick_run_measures_sampling_and_cleans_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.metering", "--turns", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for size in (10, 200):
        assert figures[f"sampling_turn_cpu_s_{size}"] > 0
        assert figures[f"sampling_cpu_ms_per_sandbox_{size}"] > 0
    assert figures["sampling_per_sandbox_ratio"] > 0
    assert not leftovers()
