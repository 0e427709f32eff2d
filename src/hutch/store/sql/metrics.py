"""Machine metric history: the repository and its rows."""

import builtins
import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hutch.model.machine import Desired
from hutch.model.metrics import MetricPoint
from hutch.store import tables as t
from hutch.store.base import MAX_POINTS
from hutch.store.sql.repo import Repo, from_row

_KEY = ("machine_id", "step", "bucket", "generation")
ROWS_PER_INSERT = 500  # x 23 columns: under SQLite's and asyncpg's 32,766 parameters


class SqlMetrics(Repo):
    async def put(self, points: Sequence[MetricPoint]) -> None:
        # One row per key in a statement (PostgreSQL refuses to update a row twice in one): the
        # newest reading of each bucket.
        newest: dict[tuple[Any, ...], MetricPoint] = {}
        for p in points:
            key = tuple(getattr(p, k) for k in _KEY)
            if key not in newest or newest[key].time < p.time:
                newest[key] = p
        rows = [dataclasses.asdict(p) for p in newest.values()]
        m = t.machine_metrics
        fields = [c.name for c in m.c if c.name not in _KEY]
        # Statements of ROWS_PER_INSERT rows: both backends bound the parameters of one.
        for start in range(0, len(rows), ROWS_PER_INSERT):
            insert = (postgresql.insert if self._pg else sqlite.insert)(m)
            stmt = insert.values(rows[start : start + ROWS_PER_INSERT])
            # A bucket keeps its newest reading: one resent late, or a second sample in the
            # same bucket that the node read earlier, changes nothing.
            stmt = stmt.on_conflict_do_update(
                index_elements=list(_KEY),
                set_={name: stmt.excluded[name] for name in fields},
                where=stmt.excluded.time > m.c.time,
            )
            await self._c.execute(stmt)

    async def history(
        self, machine_id: str, step: float, since: float, limit: int
    ) -> builtins.list[MetricPoint]:
        m = t.machine_metrics
        stmt = (
            sa.select(m)
            .where(m.c.machine_id == machine_id, m.c.step == step, m.c.bucket > since - step)
            .order_by(m.c.bucket, m.c.generation)
            .limit(min(limit, MAX_POINTS))
        )
        return [_point(r) for r in await self._c.execute(stmt)]

    async def latest(
        self, step: float, since: float, project_id: str | None = None
    ) -> builtins.list[tuple[str, str, MetricPoint]]:
        m = t.machine_metrics
        newest = (
            sa.select(m.c.machine_id, sa.func.max(m.c.bucket).label("bucket"))
            .where(m.c.step == step, m.c.bucket >= since)
            .group_by(m.c.machine_id)
        )
        if project_id is not None:
            newest = newest.where(m.c.project_id == project_id)
        sub = newest.subquery()
        mc = t.machines.c
        stmt = (
            sa.select(m, t.projects.c.name.label("project_name"), mc.name.label("machine_name"))
            .join(sub, sa.and_(m.c.machine_id == sub.c.machine_id, m.c.bucket == sub.c.bucket))
            .join(t.machines, mc.id == m.c.machine_id)
            .join(t.projects, t.projects.c.id == m.c.project_id)
            # A machine's current generation only; one destroyed (or being destroyed) has none.
            .where(m.c.step == step, m.c.generation == mc.generation, t.LIVE)
            .where(mc.desired != Desired.DESTROYED.value)
            .order_by(m.c.project_id, m.c.machine_id)
        )
        return [(r.project_name, r.machine_name, _point(r)) for r in await self._c.execute(stmt)]

    async def prune(self, step: float, before: float) -> int:
        m = t.machine_metrics
        result = await self._c.execute(sa.delete(m).where(m.c.step == step, m.c.bucket < before))
        return int(result.rowcount or 0)


def _point(row: Any) -> MetricPoint:
    return from_row(MetricPoint, row)
