"""Warm pools: the repository and its rows."""

import builtins
import dataclasses
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict
from hutch.model.pool import Pool, PoolShape, PoolState
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, from_row


class SqlPools(Repo):
    async def create(self, pool: Pool) -> None:
        values = {"id": pool.id, "project_id": pool.project_id, "created_at": pool.created_at,
                  "version": pool.version, **_values(pool)}  # fmt: skip
        if not await self._insert(t.pools, values):
            await _taken(pool)

    async def get(self, project_id: str, pool_id: str) -> Pool:
        p = t.pools
        stmt = sa.select(p).where(p.c.project_id == project_id, p.c.id == pool_id)
        return _to_pool(await self._found(stmt, "pool", pool_id))

    async def by_shape(self, project_id: str, shape: PoolShape) -> Pool | None:
        row = await self._one(_BY_SHAPE, {"project_id": project_id, **dataclasses.asdict(shape)})
        return None if row is None else _to_pool(row)

    async def list(self, project_id: str | None = None) -> builtins.list[Pool]:
        p = t.pools
        stmt = sa.select(p).order_by(p.c.created_at, p.c.id)
        if project_id is not None:
            stmt = stmt.where(p.c.project_id == project_id)
        return [_to_pool(r) for r in await self._c.execute(stmt)]

    async def update(self, pool: Pool) -> Pool:
        p = t.pools
        mine = (p.c.id == pool.id, p.c.project_id == pool.project_id)

        async def refused() -> NoReturn:
            await _taken(pool)

        row = await self._compare_and_set(
            p, mine, "pool", _Named(pool), _values(pool), refused=refused
        )
        return _to_pool(row)

    async def delete(self, pool_id: str) -> None:
        await self._c.execute(sa.delete(t.pools).where(t.pools.c.id == pool_id))


class _Named:
    """A pool as `Repo._compare_and_set` names what it writes (a pool has no name: its id)."""

    def __init__(self, pool: Pool) -> None:
        self.id = self.name = pool.id
        self.version = pool.version


async def _taken(pool: Pool) -> NoReturn:
    s = pool.shape
    raise Conflict(
        f"the project already has a pool of {s.image} with {s.cpus} CPU(s), {s.memory_mib} MiB "
        f"and {s.disk_mib} MiB of disk: set that one"
    )


def _values(pool: Pool) -> dict[str, Any]:
    s = pool.shape
    return {
        "image": s.image, "cpus": s.cpus, "memory_mib": s.memory_mib, "disk_mib": s.disk_mib,
        "runtime": s.runtime, "min_ready": pool.min_ready, "state": pool.state.value,
        "error": pool.error, "snapshot_id": pool.snapshot_id, "image_digest": pool.image_digest,
        "node_id": pool.node_id, "updated_at": pool.updated_at,
    }  # fmt: skip


def _to_pool(r: Row[Any]) -> Pool:
    shape = PoolShape(r.image, r.cpus, r.memory_mib, r.disk_mib, r.runtime)
    return from_row(Pool, r, shape=shape, state=PoolState(r.state))


# Built once: every create of a machine that a pool could give asks. (A shape's fields are
# named as their columns.)
_BY_SHAPE = sa.select(t.pools).where(
    t.pools.c.project_id == sa.bindparam("project_id"),
    *(t.pools.c[f.name] == sa.bindparam(f.name) for f in dataclasses.fields(PoolShape)),
)
