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
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HUTCH = str(Path(sys.executable).parent / "hutch")
MACHINES = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def up_ready(url: str, token_file: Path) -> bool:
    try:
        token = token_file.read_text().strip()
        nodes = httpx.get(f"{url}/v1/nodes", headers={"Authorization": f"Bearer {token}"},
                          timeout=2).json()["items"]  # fmt: skip
    except (httpx.HTTPError, OSError, ValueError, KeyError):
        return False
    return any(n["state"] == "ready" for n in nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hbc", dir="/tmp"))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HUTCH_URL", "HUTCH_TOKEN")},
        "HUTCH_STATE_DIR": str(work / "state"),
        "HUTCH_CLIENT_CONFIG": str(work / "contexts.toml"),
        "HUTCH_CONFIG": str(work / "none.toml"),
    }
    up = subprocess.Popen([HUTCH, "up", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not up_ready(url, work / "state" / "admin-token"):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("hutch up did not come up")
            time.sleep(0.1)
        token = (work / "state" / "admin-token").read_text().strip()
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
        python_s = median_s([sys.executable, "-c", "pass"], env, args.runs)
        help_s = median_s([HUTCH, "--help"], env, args.runs)
        version_s = median_s([HUTCH, "version"], env, args.runs)
        ps_s = median_s([HUTCH, "ps"], env, args.runs)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(20)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
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
