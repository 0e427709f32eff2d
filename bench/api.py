"""Control-plane benchmark: what the API, scheduler and agent add, measured side by side.

In one run, against one `hutch up` (controller + local agent, SQLite) on this machine:
  (a) `hutch run busybox -- echo hi`: CLI -> API -> scheduler -> agent -> micro-VM, time from
      starting the command to the first line of output; median of N
  (b) `hutch sandbox run busybox -- echo hi`: the same image, the driver directly; median of N
  (c) GET /v1/machines listing 100 machines: requests/s with 20 concurrent connections (wrk)
  (d) a bare Starlette JSON endpoint served the same way (uvicorn, one process): requests/s
and the p99 latency of POST /v1/machines under 20 concurrent creates (against a controller whose
one node is simulated: this host fits 8 vCPUs of machines). The last line printed is one JSON
object with the figures.

    make bench    or    .venv/bin/python -m bench.api [--runs N] [--only run|create|list]

`--only run` measures (a) and (b) alone; `--only create` the creates alone (no `hutch up`, no
micro-VM, no wrk), `--only list` (c) and (d) alone, both against a controller whose one node is
simulated. `--hutch PATH` runs another build's `hutch` (say, main's) for `--only create|list`,
so that two builds are compared on the same machine.
"""

import argparse
import asyncio
import contextlib
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
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.up import HUTCH, free_port, hutch_env, hutch_up

# The same document the controller answered, from memory: what is left is the framework.
BARE_APP = """
import json, pathlib
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

DOC = json.loads(pathlib.Path("listing.json").read_text())

async def listing(request):
    return JSONResponse(DOC)

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


def remove_all(url: str, headers: dict[str, str]) -> None:
    """Every machine destroyed, so no sandbox outlives the benchmark's state directory."""
    listing = f"{url}/v1/machines?project=default&limit=200"
    for m in httpx.get(listing, headers=headers, timeout=30).json()["items"]:
        httpx.delete(f"{url}/v1/machines/{m['id']}?project=default&force=true", headers=headers)
    deadline = time.monotonic() + 120
    while httpx.get(listing, headers=headers, timeout=30).json()["items"]:
        if time.monotonic() > deadline:
            raise RuntimeError("machines were not destroyed within 120 s")
        time.sleep(0.5)


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


JOIN = "bench-join-secret"
SIMULATED_NODE = {  # a node no agent runs: room for every machine the run creates
    "name": "simulated-1", "address": "http://127.0.0.1:9", "runtimes": ["microvm", "container"],
    "accel": "none", "cpus": 1024, "memory_mib": 1 << 22, "disk_mib": 1 << 24,
}  # fmt: skip


def controller_with_simulated_node(
    work: Path, hutch: str = HUTCH
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`hutch controller` alone, its one node simulated: (process, url, system token)."""
    state, port = work / "sim", free_port()
    env = {**os.environ, "HUTCH_STATE_DIR": str(state), "HUTCH_JOIN_SECRET": JOIN}
    proc = subprocess.Popen([hutch, "controller", "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    joined = httpx.post(f"{url}/agent/v1/nodes", json=SIMULATED_NODE,
                        headers={"Authorization": f"Bearer {JOIN}"})  # fmt: skip
    joined.raise_for_status()
    return proc, url, (state / "admin-token").read_text().strip()


async def p99_create_ms(url: str, token: str, clients: int = 20, each: int = 12) -> float:
    """POST /v1/machines (quota, scheduler, store, address, event) from `clients` at once; 240
    creates in all, as the project's default network (a /24) has 253 addresses to give."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    body = {"image": "busybox", "command": ["true"]}

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


@contextlib.contextmanager
def simulated(hutch: str) -> Iterator[tuple[str, str, Path]]:
    """A controller whose one node is simulated, in a directory of its own: (url, token, dir)."""
    work = Path(tempfile.mkdtemp(prefix="hbs", dir="/tmp"))
    sim = None
    try:
        sim, url, token = controller_with_simulated_node(work, hutch)
        yield url, token, work
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def create_only(hutch: str) -> None:
    with simulated(hutch) as (url, token, _):
        p99 = asyncio.run(p99_create_ms(url, token))
    print(f"p99 create under 20 clients: {p99:.0f} ms")
    print(json.dumps({"p99_create_ms": round(p99, 1)}))


def list_vs_bare(url: str, token: str, work: Path) -> tuple[float, float]:
    """(c) and (d): 100 machines listed by the controller at `url`, then the same document from
    memory by a bare Starlette app, each under wrk: (list req/s, bare req/s)."""
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(100):
        body = {"image": "busybox", "name": f"idle-{i}", "start": False}
        httpx.post(f"{url}/v1/machines?project=default", json=body, headers=headers)
    listing = httpx.get(f"{url}/v1/machines?project=default", headers=headers)
    if len(listing.json()["items"]) != 100:
        raise RuntimeError(f"the listing holds {len(listing.json()['items'])} machines")
    list_rps = wrk(f"{url}/v1/machines?project=default", token)

    bare_dir = work / "bare"
    bare_dir.mkdir()
    (bare_dir / "bare_app.py").write_text(BARE_APP)
    (bare_dir / "listing.json").write_bytes(listing.content)
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port),
         "--log-level", "warning"],
        cwd=bare_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/v1/machines")
        bare_rps = wrk(f"http://127.0.0.1:{bare_port}/v1/machines", None)
    finally:
        bare.send_signal(signal.SIGTERM)
        bare.wait(30)
    return list_rps, bare_rps


def only_list(hutch: str) -> None:
    """`--only list`: (c) and (d) alone, against a controller whose one node is simulated (no
    `hutch up`, no guests, no agent polling in the same process): quick to iterate on."""
    with simulated(hutch) as (url, token, work):
        list_rps, bare_rps = list_vs_bare(url, token, work)
    figures = {
        "list_rps": round(list_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "list_vs_bare_ratio": round(list_rps / bare_rps, 3),
    }
    print(f"{'(c) GET /v1/machines (100), 20 conns':<40} {list_rps:.0f} req/s")
    print(f"{'(d) bare Starlette, same way':<40} {bare_rps:.0f} req/s")
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["run", "create", "list"], help="measure this alone")
    parser.add_argument(
        "--hutch", default=HUTCH, help="the hutch executable (with --only create or list)"
    )
    args = parser.parse_args()
    if args.only == "create":
        create_only(args.hutch)
        return
    if args.only == "list":
        only_list(args.hutch)
        return
    work = Path(tempfile.mkdtemp(prefix="hba", dir="/tmp"))
    env = hutch_env(work)
    sim = None
    try:
        with hutch_up(env) as (url, token):
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

            if args.only == "run":
                medians = {"run_via_api_s": statistics.median(via_api),
                           "sandbox_direct_s": statistics.median(sandbox)}  # fmt: skip
                return print_figures(medians, args.runs)
            list_rps, bare_rps = list_vs_bare(url, token, work)
            remove_all(url, {"Authorization": f"Bearer {token}"})
        # The host's 2 CPUs hold 8 vCPUs of machines: creates at this rate go to a controller
        # whose node is simulated, so they measure the control plane and not the node's size.
        sim, sim_url, sim_token = controller_with_simulated_node(work)
        p99 = asyncio.run(p99_create_ms(sim_url, sim_token))
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            sim.wait(30)
        shutil.rmtree(work, ignore_errors=True)

    figures = {"run_via_api_s": statistics.median(via_api),
               "sandbox_direct_s": statistics.median(sandbox),
               "list_rps": list_rps, "bare_rps": bare_rps, "p99_create_ms": p99}  # fmt: skip
    print_figures(figures, args.runs)


def print_figures(measured: dict[str, float], runs: int) -> None:
    """The table and the last line's JSON, of what was measured (all, or `--only run`)."""
    a, b = measured["run_via_api_s"], measured["sandbox_direct_s"]
    figures = {"run_via_api_s": round(a, 3), "sandbox_direct_s": round(b, 3),
               "control_overhead_ratio": round(a / b, 3)}  # fmt: skip
    print(f"{'(a) hutch run, via API + agent':<40} {a:.3f} s")
    print(f"{'(b) hutch sandbox run, direct':<40} {b:.3f} s")
    if "list_rps" in measured:
        list_rps, bare_rps = measured["list_rps"], measured["bare_rps"]
        figures |= {"list_rps": round(list_rps, 1), "bare_rps": round(bare_rps, 1),
                    "list_vs_bare_ratio": round(list_rps / bare_rps, 3),
                    "p99_create_ms": round(measured["p99_create_ms"], 1)}  # fmt: skip
        print(f"{'(c) GET /v1/machines (100), 20 conns':<40} {list_rps:.0f} req/s")
        print(f"{'(d) bare Starlette, same way':<40} {bare_rps:.0f} req/s")
    print(f"control overhead a/b: {figures['control_overhead_ratio']}")
    if "list_rps" in measured:
        print(f"list/bare: {figures['list_vs_bare_ratio']}")
        print(f"p99 create under 20 clients: {measured['p99_create_ms']:.0f} ms")
    print(json.dumps(figures | {"runs": runs}))


if __name__ == "__main__":
    main()
