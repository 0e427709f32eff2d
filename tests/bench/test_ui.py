"""bench/ui.py's smoke run (50 machines, 2 runs): it renders every machine and reports every
figure it claims to. No figure is asserted (benchmarks judge speed)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_the_quick_run_reports_its_figures() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ui", "--machines", "50", "--runs", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["machines"] == 50 and figures["runs"] == 2
    for key in ("server_ms_p50", "server_ms_max", "client_ms_p50", "page_bytes"):
        assert figures[key] > 0, key
