"""bench/net.py's smoke run (`--quick`, about half a minute): it measures every path it claims
to and leaves no namespace, mount, cgroup or QEMU behind. No figure is asserted (benchmarks
judge speed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).parents[2]


def leftovers() -> tuple[list[str], list[str], list[str]]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = namespaces.stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    return (
        sorted(line for line in names.splitlines() if line.startswith("hbn")),
        sorted(line for line in mounts.splitlines() if "/hbn" in line),
        # the run's cgroup parent (hutch's and the bare QEMUs' groups)
        sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/hutch-bench-*")),
    )


def test_the_quick_run_measures_everything_and_cleans_up() -> None:
    before = leftovers()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.net", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("same_node_ratio", "cross_node_ratio", "published_rtt_ratio", "rule_apply_p99_s",
                "rules_1000_vs_10_ratio", "same_node_paired_ratio", "cross_node_paired_ratio",
                "cross_node_hutch_mbps", "cross_node_bare_mbps"):  # fmt: skip
        assert isinstance(figures[key], float) and figures[key] > 0, key
    # (4) is a security group's rule change (removed, added back), each timed to enforcement
    assert figures["rule_change"].startswith("NodeNetwork.set_groups")
    assert figures["rule_apply_samples"] == 4
    assert 0 < figures["rule_apply_p50_s"] <= figures["rule_apply_p99_s"]
    for key in ("scale_big_plug_one_s", "scale_big_unplug_one_s", "scale_big_group_change_s",
                "scale_shrink_to_10_s"):  # fmt: skip
        assert isinstance(figures[key], float) and figures[key] > 0, key
    # each variant ran as often as the other (they alternate)
    for case in ("same_node", "cross_node"):
        runs = figures[f"{case}_hutch_mbps_runs"], figures[f"{case}_bare_mbps_runs"]
        assert len(runs[0]) == len(runs[1]) == figures["runs"], case
    assert leftovers() == before
