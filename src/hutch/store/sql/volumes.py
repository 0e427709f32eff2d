"""Volumes and their snapshots: the repository and its rows.

Callers change a project's volumes under the project's lock (`projects.lock()`), so that quota
checks and attachments cannot interleave; the unique constraints refuse a name taken twice."""

import builtins
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict
from hutch.model.snapshot import SnapshotState
from hutch.model.volume import Snapshot, Volume, VolumeState
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, by_ref, from_row


class SqlVolumes(Repo):
    async def create(self, volume: Volume) -> None:
        if not await self._insert(t.volumes, _volume_values(volume)):
            raise Conflict(f"a volume named {volume.name!r} already exists in this project")

    async def get(self, project_id: str, ref: str) -> Volume:
        return _to_volume(await self._found(_GET, "volume", ref, by_ref(project_id, ref)))

    async def list(self, project_id: str) -> builtins.list[Volume]:
        v = t.volumes
        stmt = sa.select(v).where(v.c.project_id == project_id).order_by(v.c.created_at, v.c.id)
        return [_to_volume(r) for r in await self._c.execute(stmt)]

    async def by_ids(self, ids: Sequence[str]) -> dict[str, Volume]:
        if not ids:
            return {}
        v = t.volumes
        rows = await self._c.execute(sa.select(v).where(v.c.id.in_(sorted(set(ids)))))
        return {r.id: _to_volume(r) for r in rows}

    async def of_machine(self, machine_id: str) -> builtins.list[Volume]:
        v = t.volumes
        stmt = sa.select(v).where(v.c.machine_id == machine_id).order_by(v.c.id)
        return [_to_volume(r) for r in await self._c.execute(stmt)]

    async def detach(self, machine_id: str) -> None:
        """The machine's volumes are no longer attached to it (it is destroyed)."""
        v = t.volumes
        await self._c.execute(
            sa.update(v)
            .where(v.c.machine_id == machine_id)
            .values(
                machine_id=None,
                state=sa.case(
                    (v.c.state == VolumeState.ATTACHED.value, VolumeState.AVAILABLE.value),
                    else_=v.c.state,
                ),
            )
        )

    async def update(self, volume: Volume) -> Volume:
        values = _volume_values(volume)
        for key in ("id", "project_id", "created_at"):
            values.pop(key)
        stmt = (
            sa.update(t.volumes)
            .where(t.volumes.c.id == volume.id)
            .values(**values)
            .returning(*t.volumes.c)
        )
        return _to_volume(await self._found(stmt, "volume", volume.id))

    async def delete(self, volume_id: str) -> None:
        """The volume and its snapshots' rows."""
        s = t.volume_snapshots
        await self._c.execute(sa.delete(s).where(s.c.volume_id == volume_id))
        await self._c.execute(sa.delete(t.volumes).where(t.volumes.c.id == volume_id))

    async def totals(self, project_id: str) -> tuple[int, int]:
        """(bytes of the project's volumes, bytes of its snapshots), by their sizes: volume
        snapshots and machine snapshots alike (one being taken at the most it may come to,
        its memory and disk)."""
        v, s, ms = t.volumes, t.volume_snapshots, t.machine_snapshots
        volumes = await self._c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(v.c.size_bytes), 0)).where(
                v.c.project_id == project_id
            )
        )
        snapshots = await self._c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(s.c.size_bytes), 0)).where(
                s.c.project_id == project_id
            )
        )
        taking = ms.c.state == SnapshotState.CREATING.value
        machine_snapshots = await self._c.execute(
            sa.select(
                sa.func.coalesce(
                    sa.func.sum(
                        sa.case(
                            (taking, (ms.c.memory_mib + ms.c.disk_mib) * (1 << 20)),
                            else_=ms.c.size_bytes,
                        )
                    ),
                    0,
                )
            ).where(ms.c.project_id == project_id)
        )
        return int(volumes.scalar_one()), int(snapshots.scalar_one()) + int(
            machine_snapshots.scalar_one()
        )

    # -- snapshots -----------------------------------------------------------------------------

    async def create_snapshot(self, snap: Snapshot) -> None:
        if not await self._insert(t.volume_snapshots, _snapshot_values(snap)):
            raise Conflict(f"the volume already has a snapshot named {snap.name!r}")

    async def snapshot(self, volume_id: str, ref: str) -> Snapshot:
        s = t.volume_snapshots
        stmt = (
            sa.select(s)
            .where(s.c.volume_id == volume_id, sa.or_(s.c.id == ref, s.c.name == ref))
            .order_by(sa.case((s.c.id == ref, 0), else_=1))
            .limit(1)
        )
        return _to_snapshot(await self._found(stmt, "snapshot", ref))

    async def snapshots(self, volume_id: str) -> builtins.list[Snapshot]:
        s = t.volume_snapshots
        stmt = sa.select(s).where(s.c.volume_id == volume_id).order_by(s.c.created_at, s.c.id)
        return [_to_snapshot(r) for r in await self._c.execute(stmt)]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        s = t.volume_snapshots
        await self._c.execute(sa.delete(s).where(s.c.id == snapshot_id))


def _volume_values(v: Volume) -> dict[str, Any]:
    return {
        "id": v.id, "project_id": v.project_id, "name": v.name, "size_bytes": v.size_bytes,
        "fs": v.fs, "state": v.state.value, "node_id": v.node_id, "machine_id": v.machine_id,
        "used_bytes": v.used_bytes, "error": v.error, "created_at": v.created_at,
        "operation": v.operation, "operation_until": v.operation_until,
        "untrusted": v.untrusted,
    }  # fmt: skip


def _snapshot_values(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id, "volume_id": s.volume_id, "project_id": s.project_id, "name": s.name,
        "size_bytes": s.size_bytes, "used_bytes": s.used_bytes, "created_at": s.created_at,
        "untrusted": s.untrusted, "frozen": s.frozen,
    }  # fmt: skip


def _to_volume(r: Row[Any]) -> Volume:
    return from_row(Volume, r, state=VolumeState(r.state))


def _to_snapshot(r: Row[Any]) -> Snapshot:
    return from_row(Snapshot, r)


_GET = Repo._by_ref(t.volumes).limit(1)  # built once
