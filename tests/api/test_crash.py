"""A controller killed at any point loses no acknowledged write, and leaves nothing half made."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port
from tests.helpers.api import JOIN

OVERHEAD = 96


def start_controller(state: Path, port: int, database_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HUTCH_STATE_DIR": str(state), "HUTCH_JOIN_SECRET": JOIN,
           "HUTCH_DATABASE_URL": database_url}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "hutch", "controller", "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()  # not left running after the test
    proc.wait()
    raise RuntimeError("the controller did not start")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_during_creates(backend: str, request: pytest.FixtureRequest) -> None:
    url_db = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    state = Path(tempfile.mkdtemp(prefix="hk", dir="/tmp"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_controller(state, port, url_db)
    token = (state / "admin-token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    node = {"name": "sim-1", "address": "http://127.0.0.1:9", "runtimes": ["container"],
            "accel": "none", "cpus": 64, "memory_mib": 1 << 20, "disk_mib": 1 << 22,
            "overhead_mib": {"container": OVERHEAD}}  # fmt: skip
    httpx.post(f"{base}/agent/v1/nodes", json=node, headers={"Authorization": f"Bearer {JOIN}"})
    acknowledged: list[str] = []

    async def creator(http: httpx.AsyncClient, n: int) -> None:
        for i in range(1000):
            body = {"image": "busybox", "runtime": "container", "memory_mib": 64 + n,
                    "name": f"c{n}-{i}"}  # fmt: skip
            try:
                r = await http.post(f"{base}/v1/machines?project=default", json=body, headers=auth)
            except httpx.HTTPError:
                return  # the controller is gone
            if r.status_code == 201:
                acknowledged.append(r.json()["id"])

    async with httpx.AsyncClient(timeout=10) as http:
        # Eight at once: on SQLite their writes commit in groups (several creates per COMMIT).
        creators = [asyncio.create_task(creator(http, n)) for n in range(8)]
        while len(acknowledged) < 40:
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-flight: some requests are half way through
        proc.wait()
        await asyncio.gather(*creators)

    proc = start_controller(state, port, url_db)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for machine_id in acknowledged:
                r = await http.get(f"{base}/v1/machines/{machine_id}?project=default", headers=auth)
                assert r.status_code == 200, f"acknowledged {machine_id} is lost"

            async def listing() -> list[dict[str, Any]]:
                machines, cursor = [], ""
                while True:
                    page = (await http.get(
                        f"{base}/v1/machines?project=default&limit=200{cursor}", headers=auth
                    )).json()  # fmt: skip
                    machines += page["items"]
                    if not page["next"]:
                        return machines
                    cursor = f"&cursor={page['next']}"

            # What was acknowledged but not placed yet is placed by the restarted scheduler.
            deadline = time.monotonic() + 30
            machines = await listing()
            while any(m["node"] is None for m in machines):
                assert time.monotonic() < deadline, "machines left without a node"
                await asyncio.sleep(0.1)
                machines = await listing()
            nodes = (await http.get(f"{base}/v1/nodes", headers=auth)).json()["items"]
            events = []
            async with http.stream("GET", f"{base}/v1/events?project=default", headers=auth) as r:

                async def read() -> None:  # until every machine's can have come
                    async for line in r.aiter_lines():
                        if line.startswith("id: "):
                            events.append(line)
                            if len(events) >= len(machines):
                                return

                with contextlib.suppress(TimeoutError):  # the stream never ends by itself
                    await asyncio.wait_for(read(), 10.0)
    finally:
        proc.terminate()
        proc.wait()
    assert {m["id"] for m in machines} >= set(acknowledged)
    # Nothing half made: every machine that exists holds exactly its claim on the node, and
    # has its "created" event (written in the same transaction).
    claimed = sum(m["memory_mib"] + OVERHEAD for m in machines)
    assert nodes[0]["allocated"]["memory_mib"] == claimed
    assert len(events) >= len(machines)
