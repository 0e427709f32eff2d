"""CLI start-up benchmark: how long a `hutch` command takes, next to bare Python's start-up.

In one run, median of N each (after one warm-up):
  python_s    `python -c pass` with the same interpreter
  help_s      `hutch --help`
  version_s   `hutch version`
  ps_s        `hutch ps` against a running `hutch up` (this host, SQLite) holding 100 machines
              (created, not started: the listing is what is measured, not the machines)
and ps_vs_python = ps_s - python_s (target: at most 0.15 s). The last line printed is one JSON
object with the figures.

    .venv/bin/python -m bench.cli [--runs N]  (from the repo root)
"""

import argparse
import compileall
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import hutch
from bench.up import HUTCH, hutch_env, hutch_up

MACHINES = 100


def median_s(argv: list[str], env: dict[str, str], runs: int) -> float:
    """The median wall time of `argv`, which must succeed; one warm-up run first."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stderr.decode(errors='replace')}")
        if i:
            times.append(took)
    return statistics.median(times)


def _measure(url: str, token: str, env: dict[str, str], runs: int) -> tuple[float, ...]:
    """(ps_s, python_s, help_s, version_s) against `hutch up` at `url`, holding MACHINES."""
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(MACHINES):
        body = {"image": "busybox", "name": f"m{i}", "start": False}
        made = httpx.post(f"{url}/v1/machines?project=default", headers=headers, json=body)
        made.raise_for_status()
    listed = subprocess.run(
        [HUTCH, "ps", "-q"], env=env, capture_output=True, text=True, check=True
    )
    if len(listed.stdout.split()) != MACHINES:
        raise RuntimeError(f"hutch ps listed {listed.stdout!r} {listed.stderr}")
    python_s = median_s([sys.executable, "-c", "pass"], env, runs)
    help_s = median_s([HUTCH, "--help"], env, runs)
    version_s = median_s([HUTCH, "version"], env, runs)
    ps_s = median_s([HUTCH, "ps"], env, runs)
    return ps_s, python_s, help_s, version_s


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    # As an installed wheel is: pip byte-compiles what it installs (this tree may run with
    # PYTHONDONTWRITEBYTECODE set, which would make every run compile hutch's sources again).
    compileall.compile_dir(Path(hutch.__file__).parent, quiet=1)
    work = Path(tempfile.mkdtemp(prefix="hbc", dir="/tmp"))
    env = hutch_env(work)
    try:
        with hutch_up(env) as (url, token):
            ps_s, python_s, help_s, version_s = _measure(url, token, env, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "runs": args.runs,
        "machines": MACHINES,
        "python_s": round(python_s, 4),
        "help_s": round(help_s, 4),
        "version_s": round(version_s, 4),
        "ps_s": round(ps_s, 4),
        "ps_vs_python": round(ps_s - python_s, 4),
    }
    print(
        f"python -c pass {python_s:.3f} s; hutch --help {help_s:.3f} s; "
        f"hutch version {version_s:.3f} s; hutch ps ({MACHINES} machines) {ps_s:.3f} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
