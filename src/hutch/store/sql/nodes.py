"""Nodes: the repository, its rows, and the one statement that claims capacity on many."""

import builtins
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict, NotFound
from hutch.model.machine import Capacity, Node, NodeState
from hutch.store import tables as t
from hutch.store.base import Claim
from hutch.store.sql.repo import Backend, Conn, Repo, among, from_row


class SqlNodes(Repo):
    def __init__(self, conn: Conn, backend: Backend) -> None:
        super().__init__(conn, backend)
        self.bumped: set[str] = set()  # nodes whose revision this transaction bumped

    async def create(self, node: Node, credential_hash: str) -> None:
        if await self._insert(t.nodes, _row(node, credential_hash)):
            return
        n = t.nodes
        if await self._exists(n, n.c.name == node.name):
            raise Conflict(f"a node named {node.name!r} already exists")
        if await self._exists(n, n.c.credential_hash == credential_hash):
            raise Conflict("a node with that credential already exists")
        raise Conflict(f"a node with id {node.id!r} already exists")

    async def create_many(self, nodes: Sequence[tuple[Node, str]]) -> None:
        if nodes:  # executemany: SQLAlchemy sends multi-row INSERTs
            await self._c.execute(t.nodes.insert(), [_row(n, c) for n, c in nodes])

    async def get(self, node_id: str) -> Node:
        stmt = sa.select(t.nodes).where(t.nodes.c.id == node_id)
        return _to_node(await self._found(stmt, "node", node_id))

    async def changed(
        self, known: Mapping[str, Node]
    ) -> tuple[builtins.list[Node], builtins.set[str]]:
        n = t.nodes
        stmt = sa.select(
            n.c.id, n.c.version, n.c.allocated_cpus, n.c.allocated_memory_mib,
            n.c.allocated_disk_mib,
        )  # fmt: skip
        changed, updated, seen = [], [], set()
        for r in await self._c.execute(stmt):
            seen.add(r.id)
            was = known.get(r.id)
            allocated = Capacity(r.allocated_cpus, r.allocated_memory_mib, r.allocated_disk_mib)
            if was is None or was.version != r.version:
                updated.append(r.id)
            elif was.allocated != allocated:
                changed.append(replace(was, allocated=allocated))
        if updated:
            stmt = sa.select(n).where(n.c.id.in_(updated))
            changed += [_to_node(r) for r in await self._c.execute(stmt)]
        return changed, set(known) - seen

    async def by_credential(self, credential_hash: str) -> Node | None:
        row = await self._one(
            sa.select(t.nodes).where(t.nodes.c.credential_hash == credential_hash)
        )
        return None if row is None else _to_node(row)

    async def list(self) -> list[Node]:
        return [_to_node(r) for r in await self._c.execute(_LIST)]

    async def update(self, node: Node) -> Node:
        async def refused() -> NoReturn:  # the only constraint an update can break
            raise Conflict(f"a node named {node.name!r} already exists")

        n = t.nodes
        row = await self._compare_and_set(
            n, (n.c.id == node.id,), "node", node, _node_values(node), refused=refused
        )
        return _to_node(row)

    async def lock(self, node_id: str) -> Node:
        return _to_node(await self._locked(t.nodes, node_id, "node"))

    async def delete(self, node_id: str) -> None:
        await self._locked(t.nodes, node_id, "node", key=True)
        m = t.machines
        on_it = m.c.node_id == node_id
        live = (await self._c.execute(sa.select(sa.func.count()).where(on_it, t.LIVE))).scalar_one()
        if live:
            raise Conflict(f"node {node_id!r} still has {live} machine(s): drain it first")
        v = t.volumes
        held = (
            await self._c.execute(sa.select(sa.func.count()).where(v.c.node_id == node_id))
        ).scalar_one()
        if held:
            raise Conflict(
                f"node {node_id!r} still holds {held} volume(s): export and delete them first"
            )
        s = t.machine_snapshots
        kept = (
            await self._c.execute(sa.select(sa.func.count()).where(s.c.node_id == node_id))
        ).scalar_one()
        if kept:
            raise Conflict(f"node {node_id!r} still holds {kept} machine snapshot(s): delete them")
        await self._c.execute(sa.update(m).where(on_it).values(node_id=None))  # history stays
        await self._c.execute(sa.delete(t.nodes).where(t.nodes.c.id == node_id))

    async def claim(self, claims: Sequence[Claim]) -> builtins.set[str]:
        """Add each claim's `want` to its node's allocation where the sum stays within its
        `limit`, all in one conditional statement: two claims never overbook a node, whoever
        makes them. The ids of the nodes claimed. The claims travel as one JSON parameter, so
        the statement is the same (prepared once) for a page of any size."""
        if not claims:
            return set()
        rows = [
            {"id": c.node_id, "cpus": c.want.cpus, "memory": c.want.memory_mib,
             "disk": c.want.disk_mib, "max_cpus": c.limit.cpus,
             "max_memory": c.limit.memory_mib, "max_disk": c.limit.disk_mib}
            for c in claims
        ]  # fmt: skip
        stmt = _CLAIM_PG if self._pg else _CLAIM_SQLITE
        result = await self._c.execute(stmt, {"claims": json.dumps(rows)})
        return {str(row[0]) for row in result}

    async def release(self, node_id: str, want: Capacity) -> None:
        """Take `want` off the node's allocation (never below zero)."""
        n = t.nodes

        def less(column: sa.Column[int], amount: int) -> sa.ColumnElement[int]:
            return sa.case((column > amount, column - amount), else_=0)

        await self._c.execute(
            sa.update(n)
            .where(n.c.id == node_id)
            .values(
                allocated_cpus=less(n.c.allocated_cpus, want.cpus),
                allocated_memory_mib=less(n.c.allocated_memory_mib, want.memory_mib),
                allocated_disk_mib=less(n.c.allocated_disk_mib, want.disk_mib),
            )
        )

    async def bump_revisions(self, node_ids: Sequence[str]) -> None:
        """In one statement; ids of nodes that are gone are passed over."""
        if node_ids:
            self.bumped.update(node_ids)
            stmt = _BUMP_PG if self._pg else _BUMP_SQLITE
            await self._c.execute(stmt, {"ids": sorted(set(node_ids))})

    async def revision(self, node_id: str) -> int:
        row = await self._one(sa.select(t.nodes.c.revision).where(t.nodes.c.id == node_id))
        if row is None:
            raise NotFound(f"node {node_id!r} not found")
        revision: int = row[0]
        return revision


_BUMP_PG, _BUMP_SQLITE = (
    sa.update(t.nodes).where(among(t.nodes.c.id, pg)).values(revision=t.nodes.c.revision + 1)
    for pg in (True, False)
)
_CLAIM_SET = """
    allocated_cpus = n.allocated_cpus + w.cpus,
    allocated_memory_mib = n.allocated_memory_mib + w.memory,
    allocated_disk_mib = n.allocated_disk_mib + w.disk
"""
_CLAIM_WHERE = """
    n.id = w.id
    AND n.allocated_cpus + w.cpus <= w.max_cpus
    AND n.allocated_memory_mib + w.memory <= w.max_memory
    AND n.allocated_disk_mib + w.disk <= w.max_disk
"""
_CLAIM_COLUMNS = ("id", "cpus", "memory", "disk", "max_cpus", "max_memory", "max_disk")
_CLAIM_PG = sa.text(
    f"UPDATE nodes AS n SET {_CLAIM_SET} FROM jsonb_to_recordset(CAST(:claims AS jsonb)) AS w("
    + ", ".join(f"{c} {'text' if c == 'id' else 'int'}" for c in _CLAIM_COLUMNS)
    + f") WHERE {_CLAIM_WHERE} RETURNING n.id"
)
_CLAIM_SQLITE = sa.text(
    "WITH w AS (SELECT "
    + ", ".join(f"value ->> '$.{c}' AS {c}" for c in _CLAIM_COLUMNS)
    + f" FROM json_each(:claims)) UPDATE nodes AS n SET {_CLAIM_SET} FROM w WHERE {_CLAIM_WHERE}"
    " RETURNING id"  # SQLite's RETURNING names the updated table's columns only, unqualified
)


def _row(node: Node, credential_hash: str) -> dict[str, Any]:
    """The row a create writes."""
    return {
        "id": node.id,
        "created_at": node.created_at,
        "version": node.version,
        "revision": 0,
        "credential_hash": credential_hash,
        **_node_values(node),
        **_allocation(node.allocated),
    }


def _node_values(n: Node) -> dict[str, Any]:
    """The columns an update writes: everything but id, creation time, version, revision, the
    credential, and the allocation (only claim() and release() change it, as increments)."""
    return {
        "name": n.name,
        "address": n.address,
        "runtimes": list(n.runtimes),
        "accel": n.accel,
        "capacity_cpus": n.capacity.cpus,
        "capacity_memory_mib": n.capacity.memory_mib,
        "capacity_disk_mib": n.capacity.disk_mib,
        "overhead_mib": dict(n.overhead_mib),
        "labels": dict(n.labels),
        "state": n.state.value,
        "last_seen": n.last_seen,
        "domain": n.domain,
        "cordoned": n.cordoned,
    }


def _allocation(a: Capacity) -> dict[str, int]:
    return {
        "allocated_cpus": a.cpus,
        "allocated_memory_mib": a.memory_mib,
        "allocated_disk_mib": a.disk_mib,
    }


def _to_node(r: Row[Any]) -> Node:
    return from_row(
        Node,
        r,
        runtimes=tuple(r.runtimes),
        capacity=Capacity(r.capacity_cpus, r.capacity_memory_mib, r.capacity_disk_mib),
        allocated=Capacity(r.allocated_cpus, r.allocated_memory_mib, r.allocated_disk_mib),
        overhead_mib=dict(r.overhead_mib),
        labels=dict(r.labels),
        state=NodeState(r.state),
    )


_LIST = sa.select(t.nodes).order_by(t.nodes.c.name)  # built once: every create asks, twice
