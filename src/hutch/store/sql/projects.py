"""Projects (tenants) and their quotas: the repository and its rows."""

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict
from hutch.model.machine import Strategy
from hutch.model.tenancy import Project, Quota
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, from_row


class SqlProjects(Repo):
    async def create(self, project: Project) -> None:
        if await self._insert(t.projects, {**_quota_values(project.quota), **_project(project)}):
            return
        if await self._exists(t.projects, t.projects.c.name == project.name):
            raise Conflict(f"a project named {project.name!r} already exists")
        raise Conflict(f"a project with id {project.id!r} already exists")

    async def get(self, project_id: str) -> Project:
        return _to_project(await self._found(_GET, "project", project_id, {"id": project_id}))

    async def by_name(self, name: str) -> Project:
        return _to_project(await self._found(_BY_NAME, "project", name, {"name": name}))

    async def list(self) -> list[Project]:
        rows = await self._c.execute(sa.select(t.projects).order_by(t.projects.c.name))
        return [_to_project(r) for r in rows]

    async def set_quota(self, project_id: str, quota: Quota) -> Project:
        stmt = (
            sa.update(t.projects)
            .where(t.projects.c.id == project_id)
            .values(**_quota_values(quota))
            .returning(*t.projects.c)
        )
        return _to_project(await self._found(stmt, "project", project_id))

    async def set_strategy(self, project_id: str, strategy: Strategy) -> Project:
        stmt = (
            sa.update(t.projects)
            .where(t.projects.c.id == project_id)
            .values(strategy=strategy.value)
            .returning(*t.projects.c)
        )
        return _to_project(await self._found(stmt, "project", project_id))

    async def delete(self, project_id: str) -> None:
        """Conflict while it has machines that are not destroyed; otherwise its destroyed
        machines, tokens and events go with it. (Images live in the nodes' image stores: the
        caller checks those.)"""
        # FOR UPDATE, not the usual lock: machines being created in the project (their foreign
        # key takes a share of this row) must finish first, so that the count below sees them.
        await self._locked(t.projects, project_id, "project", key=True)
        m = t.machines
        count = (
            await self._c.execute(
                sa.select(sa.func.count()).where(m.c.project_id == project_id, t.LIVE)
            )
        ).scalar_one()
        if count:
            raise Conflict(
                f"this project still has {count} machine(s) that are not destroyed: "
                "destroy them first"
            )
        volumes = (
            await self._c.execute(
                sa.select(sa.func.count()).where(t.volumes.c.project_id == project_id)
            )
        ).scalar_one()
        if volumes:
            raise Conflict(f"this project still has {volumes} volume(s): delete them first")
        s = t.machine_snapshots
        snapshots = (
            await self._c.execute(sa.select(sa.func.count()).where(s.c.project_id == project_id))
        ).scalar_one()
        if snapshots:
            raise Conflict(
                f"this project still has {snapshots} machine snapshot(s): delete them first"
            )
        pools = (
            await self._c.execute(
                sa.select(sa.func.count()).where(t.pools.c.project_id == project_id)
            )
        ).scalar_one()
        if pools:
            raise Conflict(f"this project still has {pools} warm pool(s): remove them first")
        mine = sa.select(m.c.id).where(m.c.project_id == project_id)
        for linked in (t.fences, t.network_addresses, t.machine_ports, t.machine_security_groups):
            await self._c.execute(sa.delete(linked).where(linked.c.machine_id.in_(mine)))
        groups = sa.select(t.security_groups.c.id).where(
            t.security_groups.c.project_id == project_id
        )
        rules = t.security_group_rules
        await self._c.execute(sa.delete(rules).where(rules.c.group_id.in_(groups)))
        tokens = sa.select(t.tokens.c.id).where(t.tokens.c.project_id == project_id)
        await self._c.execute(
            sa.delete(t.web_sessions).where(t.web_sessions.c.token_id.in_(tokens))
        )
        for table in (t.events, t.machines, t.tokens, t.security_groups, t.networks):
            await self._c.execute(sa.delete(table).where(table.c.project_id == project_id))
        await self._c.execute(sa.delete(t.projects).where(t.projects.c.id == project_id))

    async def lock(self, project_id: str) -> Project:
        return _to_project(await self._locked(t.projects, project_id, "project"))


def _project(p: Project) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "created_at": p.created_at, "strategy": p.strategy.value}


def _quota_values(q: Quota) -> dict[str, Any]:
    return {f"quota_{name}": value for name, value in dataclasses.asdict(q).items()}


def _to_project(r: Row[Any]) -> Project:
    return from_row(Project, r, quota=from_row(Quota, r, "quota_"), strategy=Strategy(r.strategy))


# Built once: every request asks for its project, by name (`?project=`) or by its token's id.
_BY_NAME = sa.select(t.projects).where(t.projects.c.name == sa.bindparam("name"))
_GET = sa.select(t.projects).where(t.projects.c.id == sa.bindparam("id"))
