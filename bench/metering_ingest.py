"""Metering benchmark, part 2 (`bench/metering.py` runs it with the other parts): the
controller's ingest rate of usage records (machines' samples counted into the ledger's hourly
rows), on SQLite and on PostgreSQL (a throwaway cluster started here).

Nodes and machines are rows in the store (no agents); each node has `per_node` machines placed
on it, running. A turn is every node posting one sample of each of its machines (seq + 1,
counters moved on) through `Metering.record`, the path the controller's ingest takes (posts
that arrive together written in one transaction: the machines read in one query, the marks
taken and moved in bulk, the hours' rows added into in one INSERT ... ON CONFLICT DO UPDATE).
Up to `concurrency` posts are in flight at once, as on a controller serving many nodes. A first
turn (the generations' first samples, which also add their starts) is not timed; then `turns`
turns are.

  ingest_records_per_s_{sqlite,postgres}  samples counted / wall time of the timed turns
  ingest_target_records_per_s             5,000 nodes x 20 machines every 10 s: 10,000

    .venv/bin/python -m bench.metering_ingest [--nodes N] [--per-node M] [--turns T]  (alone)
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from hutch.model.machine import (
    Capacity,
    Desired,
    Machine,
    MachineSpec,
    MachineState,
    Node,
    NodeState,
)
from hutch.model.tenancy import Project, Quota
from hutch.services.metering import Metering
from hutch.store.sql import SqlStore
from hutch.wire.telemetry import MachineSample, Net, NodeSample, Samples
from tests.store.postgres import PostgresCluster, _bindir

TARGET = 5000 * 20 / 10  # records per second: 5,000 nodes x 20 machines every 10 s
T0 = float(int(time.time()) - 3600)  # an hour ago: metering takes readings up to a day old
NODES_PER_PROJECT = 10
CONCURRENCY = 100  # posts in flight at once, as HTTP requests to one controller


async def seed(store: SqlStore, nodes: int, per_node: int) -> dict[str, list[str]]:
    """The nodes and their machines, in the store: node id -> its machines' ids."""
    placed: dict[str, list[str]] = {}
    for first in range(0, nodes, NODES_PER_PROJECT):
        project = Project(f"p-{first:05d}", f"proj-{first:05d}", T0, Quota())
        async with store.write() as tx:
            await tx.projects.create(project)
            for n in range(first, min(first + NODES_PER_PROJECT, nodes)):
                node = Node(
                    id=f"n-{n:05d}", name=f"node-{n:05d}", address="https://10.0.0.1:7443",
                    runtimes=("microvm",), accel="tcg", capacity=Capacity(64, 256 << 10, 1 << 20),
                    allocated=Capacity(0, 0, 0), overhead_mib={"microvm": 96}, labels={},
                    state=NodeState.READY, created_at=T0, last_seen=T0,
                )  # fmt: skip
                await tx.nodes.create(node, f"cred-{n}")
                ids = placed[node.id] = []
                for i in range(per_node):
                    m = Machine(
                        id=f"m-{n:05d}-{i:02d}", project_id=project.id, name=f"m-{n:05d}-{i:02d}",
                        spec=MachineSpec(image="busybox", cpus=2, memory_mib=512,
                                         labels={"team": f"t{i % 4}"}),
                        state=MachineState.RUNNING, desired=Desired.RUNNING, created_at=T0,
                        updated_at=T0, node_id=node.id, generation=1,
                    )  # fmt: skip
                    await tx.machines.create(m)
                    ids.append(m.id)
    return placed


def post(machines: list[str], seq: int) -> Samples:
    """A node's post: each machine's sample number `seq`, 10 s after the one before."""
    now = T0 + 10 * seq
    node = NodeSample(time=now, cpu_s=seq, memory_bytes=1, hutch_cpu_s=0, hutch_memory_bytes=1)
    return Samples(
        node=node,
        machines=[
            MachineSample(
                machine=m, generation=1, seq=seq, time=now, state="running", vcpus=2,
                memory_mib=512, running_s=10.0 * seq, cpu_s=3.5 * seq, memory_bytes=1 << 28,
                memory_limit_bytes=512 << 20, public=Net(tx_bytes=1000 * seq),
            )
            for m in machines
        ],
    )  # fmt: skip


async def ingest(url: str, nodes: int, per_node: int, turns: int, concurrency: int) -> float:
    """Records added per second over `turns` turns (see the module's docstring)."""
    store = SqlStore(url)
    await store.open()
    try:
        placed = await seed(store, nodes, per_node)
        metering = Metering(store)
        gate = asyncio.Semaphore(concurrency)

        async def one(node: str, samples: Samples) -> None:
            async with gate:
                await metering.record(node, samples)

        async def turn(seq: int) -> float:
            posts = {n: post(ms, seq) for n, ms in placed.items()}  # built before the clock
            started = time.perf_counter()
            await asyncio.gather(*(one(n, p) for n, p in posts.items()))
            return time.perf_counter() - started

        async def vcpu_seconds() -> float:
            async with store.read() as tx:
                return float(sum(t.vcpu_seconds for t in await tx.usage.totals(None)))

        await turn(1)
        before = await vcpu_seconds()
        timed = sum([await turn(seq) for seq in range(2, turns + 2)])
        # Each sample adds 10 s x 2 vCPUs into its hour's row: all of them counted, once.
        counted, samples = (await vcpu_seconds() - before) / 20, nodes * per_node * turns
        if counted != samples:
            raise SystemExit(f"{counted} samples counted, {samples} sent")
        return samples / timed
    finally:
        await store.close()


def run(nodes: int = 500, per_node: int = 20, turns: int = 5) -> dict[str, float]:
    """This part's figures, on SQLite and PostgreSQL."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        sqlite = asyncio.run(ingest(url, nodes, per_node, turns, concurrency=CONCURRENCY))
    print(f"sqlite: {sqlite:.0f} records/s", file=sys.stderr)
    bindir = _bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found: apt-get install postgresql-15")
    cluster = PostgresCluster(bindir).start()
    try:
        url = cluster.url(cluster.create_database())
        postgres = asyncio.run(ingest(url, nodes, per_node, turns, concurrency=CONCURRENCY))
    finally:
        cluster.stop()
    print(f"postgres: {postgres:.0f} records/s", file=sys.stderr)
    return {
        "ingest_records_per_s_sqlite": round(sqlite),
        "ingest_records_per_s_postgres": round(postgres),
        "ingest_target_records_per_s": round(TARGET),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--per-node", type=int, default=20)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.nodes, args.per_node, args.turns)))


if __name__ == "__main__":
    main()
