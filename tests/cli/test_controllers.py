"""Two `hutch controller` processes over one PostgreSQL database (started by the test): both
serve the API, one leads (the scheduler); kill -9 of the leader during a burst of creates hands
over to the other, and every acknowledged machine exists once, placed once.

The nodes are simulated (registrations that heartbeat, no agents): what is under test is the
controllers and the store; tests/cli/test_cluster.py runs real agents and guests."""

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port
from tests.helpers.cli import Hutch
from tests.store.postgres import PostgresCluster

JOIN = "join-secret-of-the-two"
LEASE = 2.0


@pytest.fixture
def database(postgres: PostgresCluster) -> Iterator[tuple[PostgresCluster, str]]:
    name = postgres.create_database()
    yield postgres, name
    postgres.drop_database(name)


def start(env: dict[str, str], state: Path, url: str, port: int) -> subprocess.Popen[bytes]:
    proc = Hutch({**env, "HUTCH_STATE_DIR": str(state), "HUTCH_DATABASE_URL": url,
                  "HUTCH_JOIN_SECRET": JOIN, "HUTCH_CONTROLLER_SECRET": "s" * 32,
                  "HUTCH_LEADER_LEASE": str(LEASE)}).start(
        "controller", "--listen", f"127.0.0.1:{port}",
        stderr=(state.parent / f"{state.name}.log").open("wb"),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, (
            state.parent / f"{state.name}.log"
        ).read_text()[-2000:]
        time.sleep(0.2)


def test_two_controllers_and_the_leader_killed_during_a_burst(
    database: tuple[PostgresCluster, str], hutch_env: dict[str, str], short_dir: Path
) -> None:
    cluster, name = database
    url = cluster.url(name)
    ports = [free_port(), free_port()]
    (short_dir / "a").mkdir()
    (short_dir / "b").mkdir()
    procs = [start(hutch_env, short_dir / "a", url, ports[0])]  # migrates the new database
    procs.append(start(hutch_env, short_dir / "b", url, ports[1]))
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    admin = {"Authorization": f"Bearer {(short_dir / 'a' / 'admin-token').read_text().strip()}"}
    beating = threading.Event()
    try:
        nodes = []
        for i in range(4):
            body = {"name": f"sim-{i}", "address": "http://127.0.0.1:9", "accel": "tcg",
                    "runtimes": ["container"], "cpus": 64, "memory_mib": 1 << 20,
                    "disk_mib": 1 << 22, "domain": f"rack-{i % 2}"}  # fmt: skip
            r = httpx.post(f"{bases[i % 2]}/agent/v1/nodes", json=body,
                           headers={"Authorization": f"Bearer {JOIN}"})  # fmt: skip
            assert r.status_code == 201, r.text
            nodes.append(r.json())
        heart = threading.Thread(target=_heartbeats, args=(bases, nodes, beating), daemon=True)
        heart.start()

        leader = _leader(cluster, name, procs)
        acknowledged, handover = asyncio.run(
            _burst(bases, admin, procs, leader, cluster=cluster, name=name)
        )
        survivor = bases[1 - leader]
        print(f"{len(acknowledged)} machines acknowledged; handover {handover:.1f} s")
        assert handover < 3 * LEASE + 2
        assert len(acknowledged) >= 40

        # Every acknowledged machine exists, once, and the new leader places it.
        deadline = time.monotonic() + 60
        while True:
            machines = _all(survivor, admin)
            waiting = [m for m in machines if m["node"] is None]
            if not waiting:
                break
            assert time.monotonic() < deadline, f"{len(waiting)} machines never placed"
            time.sleep(0.3)
        ids = [m["id"] for m in machines]
        assert len(ids) == len(set(ids))
        assert acknowledged <= set(ids)
        # Placed once: one placement event each, and nodes hold exactly what their machines ask.
        placements = cluster.sql(
            "SELECT object_id, count(*) FROM events WHERE kind = 'machine.placed' "
            "GROUP BY object_id", name
        ).split()  # fmt: skip
        counts = dict(line.split("|") for line in placements)
        assert set(counts) == set(ids) and set(counts.values()) == {"1"}
        held = httpx.get(f"{survivor}/v1/nodes", headers=admin).json()["items"]
        assert sum(n["allocated"]["memory_mib"] for n in held) == sum(
            m["memory_mib"] for m in machines
        )
    finally:
        beating.set()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def _heartbeats(bases: list[str], nodes: list[dict[str, str]], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for node in nodes:
            for base in bases:  # whichever controller is alive
                try:
                    httpx.post(
                        f"{base}/agent/v1/nodes/{node['node_id']}/heartbeat",
                        json={"address": "http://127.0.0.1:9"},
                        headers={"Authorization": f"Bearer {node['credential']}"},
                        timeout=2,
                    )
                    break
                except httpx.HTTPError:
                    continue


def _holder(cluster: PostgresCluster, name: str) -> str:
    return cluster.sql(
        "SELECT holder FROM leases WHERE name = 'leader' AND expires_at > "
        "extract(epoch from now())", name
    ).strip()  # fmt: skip


def _leader(cluster: PostgresCluster, name: str, procs: list[subprocess.Popen[bytes]]) -> int:
    """Which of the processes holds the leader's lease (its holder names its pid)."""
    deadline = time.monotonic() + 30
    while not (holder := _holder(cluster, name)):
        assert time.monotonic() < deadline, "nobody leads"
        time.sleep(0.2)
    pids = [str(p.pid) for p in procs]
    [index] = [i for i, pid in enumerate(pids) if f"/{pid}/" in holder]
    return index


async def _burst(
    bases: list[str],
    admin: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
    leader: int,
    *,
    cluster: PostgresCluster,
    name: str,
) -> tuple[set[str], float]:
    """Creates through both controllers, 8 at a time; kill -9 of the leader once 20 are
    acknowledged, and go on until 20 more are after the other one leads (counts, not seconds:
    a loaded machine is slower, not wrong). The ids acknowledged (201), and the handover time."""
    acknowledged: set[str] = set()
    stop = asyncio.Event()
    # No network: a quick burst fills a default network's /24, and addresses are not the point.
    body = {"image": "busybox", "runtime": "container", "memory_mib": 64, "networks": ["none"]}

    async def creator(http: httpx.AsyncClient, base: str) -> None:
        while not stop.is_set():
            try:
                r = await http.post(
                    f"{base}/v1/machines?project=default",
                    json=body,
                    headers=admin,
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.05)  # the killed one: not acknowledged
                continue
            assert r.status_code == 201, r.text
            acknowledged.add(r.json()["id"])

    async with httpx.AsyncClient(timeout=10) as http:
        tasks = [asyncio.create_task(creator(http, bases[i % 2])) for i in range(8)]
        await _until(lambda: len(acknowledged) >= 20, "20 acknowledged before the kill", tasks)
        old = _holder(cluster, name)
        procs[leader].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while (now := _holder(cluster, name)) in ("", old):
            assert time.monotonic() - killed < 30, "no controller took over"
            await asyncio.sleep(0.1)
        handover = time.monotonic() - killed
        assert f"/{procs[1 - leader].pid}/" in now
        after = len(acknowledged) + 20
        await _until(
            lambda: len(acknowledged) >= after, "20 acknowledged after the handover", tasks
        )
        stop.set()
        await asyncio.gather(*tasks)
    return acknowledged, handover


async def _until(done: Callable[[], bool], what: str, tasks: list[asyncio.Task[None]]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        for task in tasks:  # a creator refused: its error, not a wait for counts that never come
            if task.done():
                task.result()
        assert time.monotonic() < deadline, f"not {what} within 60 s"
        await asyncio.sleep(0.05)


def _all(base: str, admin: dict[str, str]) -> list[dict[str, Any]]:
    machines: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = httpx.get(f"{base}/v1/machines?project=default&limit=200{cursor}",
                         headers=admin).json()  # fmt: skip
        machines += page["items"]
        if not page["next"]:
            return machines
        cursor = f"&cursor={page['next']}"
