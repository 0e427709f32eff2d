"""Machine snapshots: the repository and its rows."""

import builtins
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict
from hutch.model.machine import MachineState
from hutch.model.snapshot import MachineSnapshot, SnapshotState
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, by_ref, from_row


class SqlSnapshots(Repo):
    async def create(self, snap: MachineSnapshot) -> None:
        if not await self._insert(t.machine_snapshots, _values(snap)):
            raise Conflict(f"a machine snapshot named {snap.name!r} already exists in this project")

    async def get(self, project_id: str, ref: str) -> MachineSnapshot:
        return _to_snapshot(await self._found(_GET, "snapshot", ref, by_ref(project_id, ref)))

    async def by_id(self, snapshot_id: str) -> MachineSnapshot:
        stmt = sa.select(t.machine_snapshots).where(t.machine_snapshots.c.id == snapshot_id)
        return _to_snapshot(await self._found(stmt, "snapshot", snapshot_id))

    async def list(self, project_id: str, pool: str = "") -> builtins.list[MachineSnapshot]:
        s = t.machine_snapshots
        stmt = (
            sa.select(s)
            .where(s.c.project_id == project_id, s.c.pool == pool)
            .order_by(s.c.created_at, s.c.id)
        )
        return [_to_snapshot(r) for r in await self._c.execute(stmt)]

    async def update(self, snap: MachineSnapshot) -> MachineSnapshot:
        values = _values(snap)
        for key in ("id", "project_id", "created_at"):
            values.pop(key)
        s = t.machine_snapshots
        stmt = sa.update(s).where(s.c.id == snap.id).values(**values).returning(*s.c)
        return _to_snapshot(await self._found(stmt, "snapshot", snap.id))

    async def delete(self, snapshot_id: str) -> None:
        s = t.machine_snapshots
        await self._c.execute(sa.delete(s).where(s.c.id == snapshot_id))

    async def clones(self, snapshot_id: str) -> builtins.list[str]:
        m = t.machines
        # A clone restarts from its snapshot; a machine taken from a pool boots afresh once
        # it has ended, so only one not ended holds its pool's template.
        ended = [s.value for s in MachineState if s.finished]
        using = sa.or_(
            sa.and_(m.c.from_snapshot == snapshot_id, t.LIVE),
            sa.and_(m.c.pool_snapshot == snapshot_id, m.c.state.not_in(ended)),
        )
        stmt = sa.select(m.c.name).where(using).order_by(m.c.created_at, m.c.id)
        return [r.name for r in await self._c.execute(stmt)]


def _values(s: MachineSnapshot) -> dict[str, Any]:
    return {
        "id": s.id, "project_id": s.project_id, "name": s.name, "machine_id": s.machine_id,
        "node_id": s.node_id, "image": s.image, "image_digest": s.image_digest, "cpus": s.cpus,
        "memory_mib": s.memory_mib, "disk_mib": s.disk_mib, "runtime": s.runtime,
        "command": None if s.command is None else list(s.command),
        "entrypoint": None if s.entrypoint is None else list(s.entrypoint),
        "env": list(s.env), "workdir": s.workdir, "user_spec": s.user,
        "networks": list(s.networks), "size_bytes": s.size_bytes, "state": s.state.value,
        "created_at": s.created_at, "pool": s.pool,
    }  # fmt: skip


def _to_snapshot(r: Row[Any]) -> MachineSnapshot:
    return from_row(
        MachineSnapshot,
        r,
        command=None if r.command is None else tuple(r.command),
        entrypoint=None if r.entrypoint is None else tuple(r.entrypoint),
        env=tuple(r.env),
        user=r.user_spec,
        networks=tuple(r.networks),
        state=SnapshotState(r.state),
    )


# Built once: a pool's snapshots are not the project's to name.
_GET = Repo._by_ref(t.machine_snapshots).where(t.machine_snapshots.c.pool == "").limit(1)
