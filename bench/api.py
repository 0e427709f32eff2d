"""Control-plane benchmark: what the API, scheduler and agent add, measured side by side.

In one run, against one `hutch up` (controller + local agent, SQLite) on this machine:
  (a) `hutch run busybox -- echo hi`: CLI -> API -> scheduler -> agent -> micro-VM, time from
      starting the command to the first line of output; median of N
  (b) `hutch sandbox run busybox -- echo hi`: the same image, the driver directly; median of N
  (c) GET /v1/machines listing 100 machines: requests/s with 20 concurrent connections (wrk)
  (d) a bare Starlette JSON endpoint served the same way (uvicorn, one process): requests/s
and the p99 latency of POST /v1/machines under 20 concurrent creates. The last line printed is
one JSON object with the figures.

    make bench    or    .venv/bin/python -m bench.api [--runs N]  (from the repo root)
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hutch.images.build import write_archive
from hutch.images.busybox import build_busybox_rootfs

HUTCH = str(Path(sys.executable).parent / "hutch")
BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

ITEMS = [{"id": f"m-{i:012x}", "name": f"machine-{i}", "state": "created"} for i in range(100)]

async def listing(request):
    return JSONResponse({"items": ITEMS, "next": None})

app = Starlette(routes=[Route("/v1/machines", listing)])
"""


def first_line_time(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - start
    proc.wait(60)
    if not line:
        raise RuntimeError(f"{' '.join(argv)} printed nothing (exit {proc.returncode})")
    return elapsed


def wrk(url: str, token: str | None) -> float:
    argv = ["wrk", "-t2", "-c20", "-d10s", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out:
        raise RuntimeError(f"wrk against {url} went wrong:\n{out}")
    return float(match.group(1))


def wait_http(url: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def p99_create_ms(url: str, token: str, clients: int = 20, each: int = 10) -> float:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    body = {"image": "busybox", "runtime": "container", "command": ["true"], "auto_destroy": True}

    async def client(http: httpx.AsyncClient) -> None:
        for _ in range(each):
            start = time.monotonic()
            r = await http.post(f"{url}/v1/machines?project=default", json=body, headers=headers)
            latencies.append((time.monotonic() - start) * 1000)
            if r.status_code != 201:
                raise RuntimeError(f"create answered {r.status_code}: {r.text}")

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    latencies.sort()
    return latencies[int(len(latencies) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hba", dir="/tmp"))
    port = 7900 + os.getpid() % 90
    env = {
        **os.environ,
        "HUTCH_STATE_DIR": str(work / "state"),
        "HUTCH_CLIENT_CONFIG": str(work / "contexts.toml"),
    }
    archive = work / "busybox.tar"
    with archive.open("wb") as out:
        write_archive(build_busybox_rootfs(work / "rootfs"), out, name="busybox:latest")
    subprocess.run([HUTCH, "image", "import", str(archive), "--public"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    up = subprocess.Popen([HUTCH, "up", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    bare = None
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        while not (work / "state" / "node" / "identity.json").exists():
            time.sleep(0.1)
        token = (work / "state" / "admin-token").read_text().strip()
        run = [HUTCH, "run", "--rm", "busybox", "--", "echo", "hi"]
        direct = [HUTCH, "sandbox", "run", "busybox", "--", "echo", "hi"]
        first_line_time(run, env)  # warm-up: roots prepared, caches hot
        first_line_time(direct, env)
        via_api, sandbox = [], []
        for i in range(args.runs):
            via_api.append(first_line_time(run, env))
            sandbox.append(first_line_time(direct, env))
            print(f"run {i + 1}: via API {via_api[-1]:.3f}s, direct {sandbox[-1]:.3f}s",
                  file=sys.stderr)  # fmt: skip

        headers = {"Authorization": f"Bearer {token}"}
        for i in range(100):
            body = {"image": "busybox", "name": f"idle-{i}", "start": False}
            httpx.post(f"{url}/v1/machines?project=default", json=body, headers=headers)
        list_rps = wrk(f"{url}/v1/machines?project=default", token)

        bare_dir = work / "bare"
        bare_dir.mkdir()
        (bare_dir / "bare_app.py").write_text(BARE_APP)
        bare_port = port + 100
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port),
             "--log-level", "warning"],
            cwd=bare_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{bare_port}/v1/machines")
        bare_rps = wrk(f"http://127.0.0.1:{bare_port}/v1/machines", None)
        p99 = asyncio.run(p99_create_ms(url, token))
    finally:
        for proc in (bare, up):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    a, b = statistics.median(via_api), statistics.median(sandbox)
    figures = {
        "run_via_api_s": round(a, 3),
        "sandbox_direct_s": round(b, 3),
        "control_overhead_ratio": round(a / b, 3),
        "list_rps": round(list_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "list_vs_bare_ratio": round(list_rps / bare_rps, 3),
        "p99_create_ms": round(p99, 1),
        "runs": args.runs,
    }
    print(f"{'(a) hutch run, via API + agent':<40} {a:.3f} s")
    print(f"{'(b) hutch sandbox run, direct':<40} {b:.3f} s")
    print(f"{'(c) GET /v1/machines (100), 20 conns':<40} {list_rps:.0f} req/s")
    print(f"{'(d) bare Starlette, same way':<40} {bare_rps:.0f} req/s")
    print(f"control overhead a/b: {figures['control_overhead_ratio']}")
    print(f"list/bare: {figures['list_vs_bare_ratio']}")
    print(f"p99 create under 20 clients: {p99:.0f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
