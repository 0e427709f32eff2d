"""Scheduler benchmark: placements per second through the real scheduler and the real store,
and how evenly they spread, against an exhaustive best-fit placement of the same stream.

Nodes are simulated (rows in the store, no agents: the fake side of this benchmark): 5,000 of
mixed sizes across 50 failure domains. 50,000 machines of mixed sizes wait for a node, one in
ten in an anti-affinity group of five. Then, on SQLite and then on PostgreSQL (a throwaway
cluster started here), `services.scheduling.Scheduler.round()` places all of them: pages of
pending machines, each one write transaction with the claims as conditional increments.

  placements_per_s_*  machines placed / wall time of the rounds
  p99_place_ms        99th percentile, over machines, of the time from the start of the page
                      that took a machine to that page's commit (PostgreSQL run)
  imbalance           population stddev of node utilisation afterwards (`scheduler.utilisation`:
                      memory and vCPU shares averaged), read back from the store
  imbalance_exhaustive  the same for every machine placed, in the same order, on the best of
                      all 5,000 nodes by the same rule (filters, weighers, ties), with numpy

The last line printed is one JSON object with the figures.

    make bench    or    .venv/bin/python -m bench.scheduler [--nodes N] [--machines M]
"""

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hutch.model.machine import (
    Capacity,
    Desired,
    GroupPolicy,
    Machine,
    MachineSpec,
    MachineState,
    Node,
    NodeState,
)
from hutch.model.tenancy import Project, Quota
from hutch.placement import CPU_OVERCOMMIT, limit, utilisation
from hutch.services.notify import Notifier
from hutch.services.scheduling import Scheduler
from hutch.store.sql import SqlStore
from tests.store.postgres import PostgresCluster, _bindir

DOMAINS = 50
GROUP_EVERY = 10  # one machine in ten is in an anti-affinity group...
GROUP_SIZE = 5  # ...of five
OVERHEAD = 96  # MiB per micro-VM, as an agent measures it
NODE_CPUS = (4, 8, 16, 32)
NODE_MEMORY = (16 << 10, 32 << 10, 64 << 10, 128 << 10)
MACHINE_CPUS = (1, 1, 2, 2, 4, 8)
MACHINE_MEMORY = (512, 1024, 2048, 4096, 8192)


def make_nodes(count: int, rng: random.Random) -> list[Node]:
    nodes = []
    for i in range(count):
        size = rng.randrange(len(NODE_CPUS))
        nodes.append(
            Node(
                id=f"n-{i:05d}",
                name=f"node-{i:05d}",
                address="http://127.0.0.1:9",  # never called: nothing runs
                runtimes=("microvm", "container"),
                accel="kvm",
                capacity=Capacity(NODE_CPUS[size], NODE_MEMORY[size], 1 << 21),
                allocated=Capacity(0, 0, 0),
                overhead_mib={"microvm": OVERHEAD, "container": 0},
                labels={},
                state=NodeState.READY,
                created_at=0.0,
                last_seen=time.time() + 3600,
                domain=f"d{rng.randrange(DOMAINS)}",
            )
        )
    return nodes


def make_machines(project: str, count: int, rng: random.Random) -> list[Machine]:
    machines = []
    for i in range(count):
        grouped = i % GROUP_EVERY == 0
        spec = MachineSpec(
            image="busybox",
            cpus=rng.choice(MACHINE_CPUS),
            memory_mib=rng.choice(MACHINE_MEMORY),
            group=f"g{i // (GROUP_EVERY * GROUP_SIZE)}" if grouped else "",
            group_policy=GroupPolicy.ANTI_AFFINITY if grouped else GroupPolicy.NONE,
        )
        machines.append(
            Machine(
                id=f"m-{i:06d}",
                project_id=project,
                name=f"m-{i:06d}",
                spec=spec,
                state=MachineState.CREATED,
                desired=Desired.RUNNING,
                created_at=1000.0 + i,
                updated_at=1000.0 + i,
            )
        )
    return machines


async def fill(store: SqlStore, nodes: list[Node], machines: list[Machine]) -> None:
    project = Project(id="p-bench", name="bench", created_at=0.0, quota=Quota())
    async with store.write() as tx:  # a bulk load: the rows create() writes, in few trips
        await tx.projects.create(project)
        await tx.nodes.create_many([(node, f"credential-{node.id}") for node in nodes])
        await tx.machines.create_many(machines)


async def schedule(url: str, nodes: list[Node], machines: list[Machine]) -> dict[str, float]:
    store = SqlStore(url)
    await store.open()
    try:
        await fill(store, nodes, machines)
        # The 55,000 nodes and machines this benchmark keeps for its checks are not the
        # scheduler's: out of the collector's way, they do not make each full collection
        # during the rounds walk them (a controller holds no such lists).
        gc.freeze()
        scheduler = Scheduler(store, Notifier())
        latencies: list[float] = []  # per machine placed
        placed = 0
        after, snapshot = None, None
        started = time.perf_counter()
        while True:  # what Scheduler.round() does, timing each page
            page_started = time.perf_counter()
            result, after, snapshot = await scheduler.page(after, snapshot)
            latencies += [time.perf_counter() - page_started] * result.placed
            placed += result.placed
            if after is None:
                break
        elapsed = time.perf_counter() - started
        gc.unfreeze()
        async with store.write() as tx:
            final = await tx.nodes.list()
            left = len(await tx.machines.pending(10))
        check(final, placed, left, machines)
    finally:
        await store.close()
    return {
        "placed": placed,
        "seconds": elapsed,
        "per_s": placed / elapsed,
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else 0.0,
        "imbalance": statistics.pstdev(utilisation(n) for n in final),
    }


def check(final: list[Node], placed: int, left: int, machines: list[Machine]) -> None:
    """Every machine placed once, no node over its limit: else the figures mean nothing."""
    if placed != len(machines) or left:
        raise SystemExit(f"{placed} of {len(machines)} placed, {left} left waiting")
    claimed = sum(n.allocated.memory_mib for n in final)
    if claimed != sum(m.spec.memory_mib + OVERHEAD for m in machines):
        raise SystemExit(f"nodes hold {claimed} MiB: not what the machines asked for")
    for node in final:
        most, a = limit(node), node.allocated
        if a.cpus > most.cpus or a.memory_mib > most.memory_mib or a.disk_mib > most.disk_mib:
            raise SystemExit(f"node {node.name} is overbooked: {a} > {most}")


def exhaustive(nodes: list[Node], machines: list[Machine]) -> float:
    """Best fit over every node for each machine in turn, by the scheduler's rule."""
    order = sorted(range(len(nodes)), key=lambda i: nodes[i].name)  # ties: the first name
    ns = [nodes[i] for i in order]
    cap_cpu = np.array([n.capacity.cpus for n in ns], dtype=np.float64)
    cap_mem = np.array([n.capacity.memory_mib for n in ns], dtype=np.float64)
    cap_disk = np.array([n.capacity.disk_mib for n in ns], dtype=np.float64)
    domain = np.array([int(n.domain[1:]) for n in ns])
    cpu, mem, disk = np.zeros(len(ns)), np.zeros(len(ns)), np.zeros(len(ns))
    members: dict[str, np.ndarray] = {}
    for m in sorted(machines, key=lambda m: (m.created_at, m.id)):
        s = m.spec
        want_mem = s.memory_mib + OVERHEAD
        ok = (
            (mem + want_mem <= cap_mem)
            & (disk + s.scratch_mib <= cap_disk)
            & (cpu + s.cpus <= cap_cpu * CPU_OVERCOMMIT)
            & (s.cpus <= cap_cpu)  # no more vCPUs than the node has CPUs (filters.too_big)
        )
        here = members.setdefault(s.group, np.zeros(len(ns))) if s.group else None
        if here is not None:
            ok &= here == 0  # anti-affinity
        candidates = np.flatnonzero(ok)
        if not len(candidates):
            raise SystemExit(f"exhaustive placement found no node for {m.id}")
        after = ((mem + want_mem) / cap_mem + (cpu + s.cpus) / (cap_cpu * CPU_OVERCOMMIT)) / 2
        score = _normalised(1.0 - after[candidates])
        if here is not None:
            per_domain = np.bincount(domain, weights=here, minlength=DOMAINS)
            score += 2.0 * _normalised(-(2.0 * per_domain[domain[candidates]] + here[candidates]))
        best = candidates[int(np.argmax(score))]  # argmax: the first of equals
        cpu[best] += s.cpus
        mem[best] += want_mem
        disk[best] += s.scratch_mib
        if here is not None:
            here[best] += 1
    used = (mem / cap_mem + cpu / (cap_cpu * CPU_OVERCOMMIT)) / 2
    return float(np.std(used))


def _normalised(raw: np.ndarray) -> np.ndarray:
    low, high = raw.min(), raw.max()
    return (raw - low) / (high - low) if high > low else np.zeros_like(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--machines", type=int, default=50_000)
    args = parser.parse_args()
    rng = random.Random(7)
    nodes = make_nodes(args.nodes, rng)
    machines = make_machines("p-bench", args.machines, rng)
    print(f"{len(nodes)} simulated nodes, {len(machines)} machines", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="hutch-bench-") as tmp:
        sqlite = asyncio.run(schedule(f"sqlite:///{Path(tmp) / 'hutch.db'}", nodes, machines))
    print(f"sqlite: {sqlite}", file=sys.stderr)
    bindir = _bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found: apt-get install postgresql-15")
    cluster = PostgresCluster(bindir).start()
    try:
        postgres = asyncio.run(schedule(cluster.url(cluster.create_database()), nodes, machines))
    finally:
        cluster.stop()
    print(f"postgres: {postgres}", file=sys.stderr)
    started = time.perf_counter()
    best = exhaustive(nodes, machines)
    print(f"exhaustive: {best:.5f} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    figures = {
        "nodes": len(nodes),
        "machines": len(machines),
        "placements_per_s_sqlite": round(sqlite["per_s"]),
        "placements_per_s_postgres": round(postgres["per_s"]),
        "p99_place_ms": round(postgres["p99_ms"], 1),
        "p99_place_ms_sqlite": round(sqlite["p99_ms"], 1),
        "imbalance": round(postgres["imbalance"], 5),
        "imbalance_sqlite": round(sqlite["imbalance"], 5),
        "imbalance_exhaustive": round(best, 5),
        "imbalance_ratio": round(max(postgres["imbalance"], sqlite["imbalance"]) / best, 3),
        "target_placements_per_s": 3750,
        "target_imbalance_ratio": 1.10,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
