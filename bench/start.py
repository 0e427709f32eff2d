"""Fast starts, side by side in one run against one `hutch up` (SQLite) on this machine.

From the API call to the workload's first response (busybox httpd answering on a published port
of the node), p50 and p99 of N each, the same image and shape:
  cold      POST /v1/machines: a kernel boot
  resume    POST /v1/machines/{id}/resume of a suspended machine
  template  POST /v1/machines with `from_snapshot`: a restore from a snapshot of a running one
  pool      POST /v1/machines that a warm pool serves (`hutch pool set`): a machine restored
            and paused beforehand, started as the new one. It publishes no port (a pooled
            machine is on the default network only), so its figure is to its first line of
            output (`echo`, the log followed from the API call's answer), not an HTTP answer
and the host memory (PSS of the QEMU processes) of clones of one template against as many cold
machines running the same workload (--together at once: what the node's vCPUs hold). The last
line printed is one JSON object with the figures.

    .venv/bin/python -m bench.start [--runs N]   (from the repo root; `make bench` runs it)
"""

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.host import log
from bench.up import free_port, hutch_env, hutch_up

MEMORY_MIB = 128
WORKLOAD = ["httpd", "-f", "-p", "80", "-h", "/"]
PROBE_EVERY = 0.005  # s between new connections
PROBE_KEEP = 0.5  # s a connection may wait for the guest's SYN-ACK before it is dropped
REQUEST = b"GET / HTTP/1.0\r\n\r\n"


def first_response(call: Callable[[], None], port: int, limit: float = 120) -> float:
    """Seconds from `call()` (an API request) to the workload's first answer on the node's
    published `port`. A new connection every PROBE_EVERY, the earlier ones left waiting: a SYN
    that a guest not yet running never saw is sent again by the kernel only after a second, and
    a connection timeout short enough not to matter would be shorter than a busy guest's
    answer."""
    start = time.monotonic()
    call()
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}

    def drop(s: socket.socket) -> None:
        sel.unregister(s)
        del opened[s]
        s.close()

    try:
        while (now := time.monotonic()) - start < limit:
            for s in [s for s, t in opened.items() if now - t > PROBE_KEEP]:
                drop(s)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_WRITE)
            opened[s] = now
            for key, events in sel.select(PROBE_EVERY):
                s = key.fileobj  # type: ignore[assignment]
                if events & selectors.EVENT_WRITE:  # connected, or refused
                    try:
                        sent = not s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) and s.send(
                            REQUEST
                        )
                    except OSError:
                        sent = False
                    if sent:
                        sel.modify(s, selectors.EVENT_READ)
                    else:
                        drop(s)
                    continue
                try:
                    data = s.recv(5)
                except OSError:
                    data = b""
                if data and b"HTTP/".startswith(data):
                    return time.monotonic() - start
                drop(s)
    finally:
        for s in opened:
            s.close()
        sel.close()
    raise RuntimeError(f"nothing answered on port {port} within {limit} s")


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120,
            params={"project": "default"},
        )  # fmt: skip

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} answered {r.status_code}: {r.text}")
        return r.json() if r.content else {}

    def create(self, name: str, port: int, snapshot: str = "") -> Callable[[], None]:
        """The request that makes a machine: booted, or a clone of `snapshot` (which takes its
        image, process and shape from it)."""
        body: dict[str, object] = {
            "name": name,
            "ports": [{"host_port": port, "port": 80, "host_ip": "127.0.0.1"}],
        }
        if snapshot:
            body["from_snapshot"] = snapshot
        else:
            body.update(image="busybox", command=WORKLOAD, memory_mib=MEMORY_MIB)

        def call() -> None:
            self.call("POST", "/v1/machines", json=body)

        return call

    def pooled_run(self, name: str) -> float:
        """Seconds from a POST /v1/machines that a ready pooled machine serves to its first
        line of output (RuntimeError if the run booted instead)."""
        body = {"name": name, "image": "busybox", "memory_mib": MEMORY_MIB,
                "command": ["echo", "hi"], "hold_output": True}  # fmt: skip
        started = time.monotonic()
        m = self.call("POST", "/v1/machines", json=body)
        if m["state"] != "starting":  # a booted one is created, waiting for the scheduler
            raise RuntimeError(f"{name} was not taken from the pool: {m['state']}")
        logs = f"/v1/machines/{m['id']}/logs"
        with self.http.stream("GET", logs, params={"follow": "true"}) as r:
            for line in r.iter_lines():
                if line.strip():
                    return time.monotonic() - started
        raise RuntimeError(f"{name} printed nothing")

    def pool_ready(self, pool: str, n: int, limit: float = 180) -> None:
        deadline = time.monotonic() + limit
        while (p := self.call("GET", f"/v1/pools/{pool}"))["ready"] < n:
            if p["state"] == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"pool {pool} has {p['ready']} of {n} ready: {p['error']}")
            time.sleep(0.05)

    def state(self, ref: str) -> str:
        return str(self.call("GET", f"/v1/machines/{ref}")["state"])

    def wait_state(self, ref: str, state: str, limit: float = 120) -> None:
        deadline = time.monotonic() + limit
        while (now := self.state(ref)) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ref} is {now}, not {state}, after {limit} s")
            time.sleep(0.02)

    def id(self, ref: str) -> str:
        return str(self.call("GET", f"/v1/machines/{ref}")["id"])

    def suspend(self, ref: str) -> None:
        self.wait_state(ref, "running")  # a workload may answer before its node says it runs
        self.call("POST", f"/v1/machines/{ref}/suspend")
        self.wait_state(ref, "suspended")

    def remove(self, ref: str) -> None:
        """Destroyed, and its node's share given back."""
        self.call("DELETE", f"/v1/machines/{ref}", params={"force": "true"})
        deadline = time.monotonic() + 60
        while (r := self.http.get(f"/v1/machines/{ref}")).status_code != 404:
            if r.json().get("state") == "destroyed":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ref} was not destroyed within 60 s")
            time.sleep(0.1)

    def remove_all(self) -> None:
        for m in self.call("GET", "/v1/machines", params={"limit": 500})["items"]:
            self.call("DELETE", f"/v1/machines/{m['id']}", params={"force": "true"})
        deadline = time.monotonic() + 120
        while self.call("GET", "/v1/machines")["items"]:
            if time.monotonic() > deadline:
                raise RuntimeError("machines were not destroyed within 120 s")
            time.sleep(0.2)


def pss_mib(machine_ids: list[str]) -> float:
    """Host memory of these machines' QEMU processes: their proportional set size, which
    divides a page shared by clones among them (summed RSS would count it each time)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"-name" not in argv:
                continue
            name = argv[argv.index(b"-name") + 1].decode()
            if not any(f"hutch-{m}" in name for m in machine_ids):
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return {"p50": round(statistics.median(xs), 3), "p99": round(p99, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--together",
        type=int,
        default=7,
        help="machines running at once, for the memory figures (a 2-core node holds 8 vCPUs)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hbs", dir="/tmp"))
    env = hutch_env(work)
    n, k = args.runs, min(args.runs, args.together)
    cold: list[float] = []
    resume: list[float] = []
    template: list[float] = []
    pool: list[float] = []
    try:
        with hutch_up(env) as (url, token):
            api = Api(url, token)
            ports = [free_port() for _ in range(2 * n)]
            log(f"cold: {n} machines booted from the kernel ({k} kept running)")
            for i in range(n):
                cold.append(first_response(api.create(f"cold-{i}", ports[i]), ports[i]))
                log(f"  cold-{i}: {cold[-1]:.3f} s")
                if i >= k:  # the node's vCPUs hold k: the rest wait suspended
                    api.suspend(f"cold-{i}")
            time.sleep(5)  # settled: booted pages touched, caches warm
            cold_pss = pss_mib([api.id(f"cold-{i}") for i in range(k)])

            log(f"resume: each cold machine suspended, then resumed ({n})")
            for i in range(n):
                name = f"cold-{i}"
                if i < k:
                    api.suspend(name)

                def resumed(name: str = name) -> None:
                    api.call("POST", f"/v1/machines/{name}/resume")

                resume.append(first_response(resumed, ports[i]))
                log(f"  {name}: {resume[-1]:.3f} s")
                if i >= k:
                    api.suspend(name)

            log("template: a snapshot of a running machine, then clones of it")
            api.call("POST", "/v1/snapshots", json={"machine": "cold-0", "name": "tpl"})
            api.remove_all()  # the clones' memory is measured alone
            for i in range(n):
                port = ports[n + i]
                template.append(first_response(api.create(f"clone-{i}", port, "tpl"), port))
                log(f"  clone-{i}: {template[-1]:.3f} s")
                if i >= k:
                    api.remove(f"clone-{i}")
            time.sleep(5)
            clones_pss = pss_mib([api.id(f"clone-{i}") for i in range(k)])
            api.remove_all()
            api.call("DELETE", "/v1/snapshots/tpl")

            log(f"pool: {n} runs, each taking a ready machine of a warm pool of 2")
            warm = api.call(
                "PUT",
                "/v1/pools",
                json={"image": "busybox", "memory_mib": MEMORY_MIB, "min_ready": 2},
            )["id"]
            for i in range(n):
                api.pool_ready(warm, 2)  # refilled: every run finds one ready
                pool.append(api.pooled_run(f"pool-{i}"))
                log(f"  pool-{i}: {pool[-1]:.3f} s")
                api.remove(f"pool-{i}")
            api.call("DELETE", f"/v1/pools/{warm}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    c, r, t = percentiles(cold), percentiles(resume), percentiles(template)
    w = percentiles(pool)
    figures = {
        "cold_s": c,
        "resume_s": r,
        "template_s": t,
        "pool_s": w,
        "resume_vs_cold": round(r["p50"] / c["p50"], 3),
        "template_vs_cold": round(t["p50"] / c["p50"], 3),
        "pool_vs_cold": round(w["p50"] / c["p50"], 3),
        "cold_pss_mib": round(cold_pss, 1),
        "clones_pss_mib": round(clones_pss, 1),
        "clones_vs_cold_memory": round(clones_pss / cold_pss, 3),
        "machines": n,
        "machines_measured_for_memory": k,
        "memory_mib": MEMORY_MIB,
    }
    for what, p in (
        ("cold boot", c),
        ("resume", r),
        ("template (run --from)", t),
        ("warm pool (to output)", w),
    ):
        print(f"{what:<24} p50 {p['p50']:.3f} s  p99 {p['p99']:.3f} s")
    print(f"PSS of {k} cold machines {cold_pss:.0f} MiB, of {k} clones {clones_pss:.0f} MiB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
