"""Machines: the repository, its rows, and the cursors of its pages."""

import base64
import binascii
import builtins
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict, Invalid, NotFound
from hutch.model.machine import (
    ACTIVE,
    Desired,
    GroupPolicy,
    Machine,
    MachineLine,
    MachineSpec,
    MachineState,
    OnIdle,
    OnTimeout,
    RestartPolicy,
    Strategy,
    VolumeAttach,
)
from hutch.model.sandbox import scratch_mib
from hutch.model.tenancy import Usage
from hutch.store import tables as t
from hutch.store.base import MAX_PAGE, Pending, Records
from hutch.store.sql.repo import Decoded, Repo, by_ref, from_row


class SqlMachines(Repo):
    async def create(self, machine: Machine) -> None:
        if await self._insert(t.machines, _row(machine)):
            return
        m = t.machines
        if not await self._exists(t.projects, t.projects.c.id == machine.project_id):
            raise NotFound(f"project {machine.project_id!r} not found")
        if await self._exists(m, m.c.id == machine.id):
            raise Conflict(f"a machine with id {machine.id!r} already exists")
        await self._refused(machine)

    async def create_many(self, machines: Sequence[Machine]) -> None:
        if machines:  # executemany: SQLAlchemy sends multi-row INSERTs
            await self._c.execute(t.machines.insert(), [_row(m) for m in machines])

    async def _refused(self, machine: Machine) -> NoReturn:
        """Why a write of `machine` broke a constraint other than its id's."""
        m = t.machines
        if machine.state != MachineState.DESTROYED and await self._exists(
            m,
            m.c.project_id == machine.project_id,
            m.c.name == machine.name,
            m.c.id != machine.id,
            t.LIVE,
        ):
            raise Conflict(f"the project already has a machine named {machine.name!r}")
        if machine.node_id is not None and not await self._exists(
            t.nodes, t.nodes.c.id == machine.node_id
        ):
            raise NotFound(f"node {machine.node_id!r} not found")
        raise Conflict(f"machine {machine.name!r} conflicts with what is stored")

    async def get(self, project_id: str, ref: str) -> Machine:
        return _to_machine(await self._found(_GET, "machine", ref, by_ref(project_id, ref)))

    async def list(
        self,
        project_id: str,
        *,
        states: Sequence[MachineState] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Machine], str | None]:
        """At most MAX_PAGE machines a page, whatever `limit` asks."""
        rows, more = await self._page(project_id, states, labels, limit, cursor, shown=False)
        page = [_to_machine(r) for r in rows]
        return page, _encode_cursor(page[-1].created_at, page[-1].id) if more else None

    async def records(
        self,
        project_id: str,
        *,
        states: Sequence[MachineState] = (),
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[Records, str | None]:
        rows, more = await self._page(project_id, states, labels, limit, cursor, shown=True)
        after = _encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return Records(_RECORD_FIELDS, rows), after

    async def _page(
        self,
        project_id: str,
        states: Sequence[MachineState],
        labels: Mapping[str, str] | None,
        limit: int,
        cursor: str | None,
        *,
        shown: bool,
    ) -> tuple[Sequence[Row[Any]], bool]:
        """`list`'s rows (`shown`: only the columns of _SHOWN), and whether more follow."""
        if limit < 1:
            raise Invalid("limit must be at least 1")
        limit = min(limit, MAX_PAGE)
        labels = labels or {}
        params: dict[str, Any] = {"project_id": project_id, "limit": limit + 1}
        params.update((f"label_{i}", value) for i, value in enumerate(labels.values()))
        if cursor is not None:
            params["after_time"], params["after_id"] = _decode_cursor(cursor)
        values = tuple(MachineState(s).value for s in states)
        stmt = _page_statement(values, tuple(labels), cursor is not None, shown, self._pg)
        rows = (await self._c.execute(stmt, params)).all()
        return rows[:limit], len(rows) > limit

    async def lines(
        self, project_id: str, states: Sequence[MachineState]
    ) -> builtins.list[MachineLine]:
        m = t.machines.c
        stmt = (
            sa.select(m.id, m.name, m.state, m.image, m.cpus, m.memory_mib, m.created_at)
            .where(m.project_id == project_id, m.pool == "")
            .where(m.state.in_([MachineState(s).value for s in states]))
            .order_by(m.created_at, m.id)
        )
        return [
            MachineLine(
                r.id, r.name, MachineState(r.state), r.image, r.cpus, r.memory_mib, r.created_at
            )
            for r in await self._c.execute(stmt)
        ]

    async def update(self, machine: Machine) -> Machine:
        m = t.machines
        mine = (m.c.id == machine.id, m.c.project_id == machine.project_id)
        row = await self._compare_and_set(
            m,
            mine,
            "machine",
            machine,
            # created_at too: a warm pool's machine taken by a run is created then.
            {**_machine_values(machine), "created_at": machine.created_at},
            refused=lambda: self._refused(machine),
        )
        return _to_machine(row)

    async def usage(self, project_id: str) -> Usage:
        count, vcpus, memory_mib, disk_mib = tuple(
            (await self._c.execute(_USAGE, {"project_id": project_id})).one()
        )
        return Usage(machines=count, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib)

    async def on_node(self, node_id: str) -> builtins.list[Machine]:
        m = t.machines
        stmt = sa.select(m).where(m.c.node_id == node_id, t.LIVE).order_by(m.c.created_at, m.c.id)
        return [_to_machine(r) for r in await self._c.execute(stmt)]

    async def by_id(self, machine_id: str) -> Machine:
        stmt = sa.select(t.machines).where(t.machines.c.id == machine_id)
        return _to_machine(await self._found(stmt, "machine", machine_id))

    async def pending(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> builtins.list[Pending]:
        """Machines waiting for a node, oldest first, from after (created_at, id). On
        PostgreSQL they stay locked to this transaction (and skipped by another's), so nobody
        changes them under the scheduler."""
        m = t.machines
        stmt = _PENDING
        if after is not None:
            stmt = stmt.where(sa.tuple_(m.c.created_at, m.c.id) > sa.tuple_(*after))
        stmt = stmt.order_by(m.c.created_at, m.c.id).limit(limit)
        if self._pg:
            stmt = stmt.with_for_update(skip_locked=True)
        return [_to_pending(r) for r in await self._c.execute(stmt)]

    async def place(self, placed: Sequence[tuple[str, str]], at: float) -> None:
        """Give pending machines their node: (machine id, node id) pairs, in one statement
        (on PostgreSQL over two arrays: one execution, not one per machine)."""
        if not placed:
            return
        if self._pg:
            machines, nodes = (list(column) for column in zip(*placed, strict=True))
            await self._c.execute(_PLACE_PG, {"machines": machines, "nodes": nodes, "at": at})
            return
        m = t.machines
        stmt = (
            sa.update(m)
            .where(m.c.id == sa.bindparam("machine"), m.c.node_id.is_(None))
            .values(node_id=sa.bindparam("node"), error="", updated_at=at, version=m.c.version + 1)
        )
        rows = [{"machine": machine, "node": node} for machine, node in placed]
        await self._c.execute(stmt, rows)

    async def still_pending(self, why: Sequence[tuple[str, str]], at: float) -> None:
        if why:
            rows = [{"machine": machine, "why": text, "at": at} for machine, text in why]
            await self._c.execute(_STILL_PENDING, rows)

    async def group_members(
        self, project_id: str, groups: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """Where each group's active machines are: group -> node id -> how many."""
        found: dict[str, dict[str, int]] = {g: {} for g in groups}
        if not groups:
            return found
        if self._pg:
            stmt, params = _GROUP_MEMBERS_PG, {"project": project_id, "groups": sorted(found)}
        else:
            m = t.machines
            stmt = _group_members(
                sa.and_(m.c.project_id == project_id, m.c.group_name.in_(sorted(found)))
            )
            params = {}
        rows: list[tuple[Any, ...]] = [tuple(row) for row in await self._c.execute(stmt, params)]
        for group, node_id, count in rows:
            found[str(group)][str(node_id)] = int(count)
        return found

    async def image_holders(self, project_id: str, images: Sequence[str]) -> dict[str, set[str]]:
        m = t.machines
        found: dict[str, set[str]] = {i: set() for i in images}
        if not images:
            return found
        stmt = (
            sa.select(m.c.image, m.c.node_id)
            .where(
                m.c.project_id == project_id,
                m.c.image.in_(sorted(set(images))),
                m.c.node_id.is_not(None),
                t.LIVE,
            )
            .distinct()
        )
        rows: list[tuple[Any, ...]] = [tuple(row) for row in await self._c.execute(stmt)]
        for image, node_id in rows:
            found[str(image)].add(str(node_id))
        return found

    async def pooled(self, project_id: str | None = None) -> builtins.list[Machine]:
        m = t.machines
        stmt = sa.select(m).where(m.c.pool != "", t.LIVE)
        if project_id is not None:
            stmt = stmt.where(m.c.project_id == project_id)
        return [
            _to_machine(r) for r in await self._c.execute(stmt.order_by(m.c.created_at, m.c.id))
        ]

    async def expired(self, now: float, limit: int) -> builtins.list[Machine]:
        return await self._due(t.machines.c.expires_at, now, limit)

    async def idle(self, now: float, limit: int) -> builtins.list[Machine]:
        return await self._due(t.machines.c.idle_at, now, limit)

    async def _due(
        self, when: "sa.Column[float]", now: float, limit: int
    ) -> builtins.list[Machine]:
        """Running machines (and meant to) whose `when` (a deadline kept in an indexed
        column) is at or before `now`, the earliest first."""
        m = t.machines
        stmt = (
            sa.select(m)
            .where(
                when <= now,
                m.c.state == MachineState.RUNNING.value,
                m.c.desired == Desired.RUNNING.value,
            )
            .order_by(when, m.c.id)
            .limit(limit)
        )
        return [_to_machine(r) for r in await self._c.execute(stmt)]

    async def purge(self, destroyed_before: float, limit: int) -> int:
        """In three statements: the ids (on PostgreSQL locked, skipping rows another
        transaction holds), their events, the rows. Destroyed machines' rows change no more, so
        `updated_at` is when they were destroyed."""
        m, e = t.machines, t.events
        gone = m.c.state == MachineState.DESTROYED.value
        # A machine lost with a node that is not fenced yet keeps its row: its addresses are
        # held for it until then (`NetworkRepo.fenced`).
        unfenced = ~sa.exists().where(t.fences.c.machine_id == m.c.id)
        stmt = (
            sa.select(m.c.id)
            .where(gone, m.c.updated_at < destroyed_before, unfenced)
            .order_by(m.c.updated_at, m.c.id)
            .limit(limit)
        )
        if self._pg:
            stmt = stmt.with_for_update(skip_locked=True)
        ids = [str(machine_id) for machine_id in (await self._c.execute(stmt)).scalars()]
        if not ids:
            return 0
        # Only machine events name a machine (object_id), and a machine id is never reused.
        await self._c.execute(
            sa.delete(e).where(e.c.object_id.in_(ids), e.c.kind.startswith("machine."))
        )
        for linked in (t.network_addresses, t.machine_ports, t.machine_security_groups):
            await self._c.execute(sa.delete(linked).where(linked.c.machine_id.in_(ids)))
        await self._c.execute(sa.delete(m).where(m.c.id.in_(ids), gone))
        return len(ids)


_PLACE_PG = sa.text(
    "UPDATE machines AS m SET node_id = w.node, error = '', updated_at = :at,"
    " version = m.version + 1"
    " FROM unnest(CAST(:machines AS text[]), CAST(:nodes AS text[])) AS w(machine, node)"
    " WHERE m.id = w.machine AND m.node_id IS NULL"
)


# What the scheduler reads of a pending machine (`Pending`, field by field; its scratch disk by
# the model's rule, from disk_mib) and writes back.
_PENDING = sa.select(
    *(t.machines.c[c] for c in (
        "id", "project_id", "created_at", "error", "image", "cpus", "memory_mib", "disk_mib",
        "runtime", "constraints", "strategy", "group_name", "group_policy", "volumes",
        "from_snapshot",
    ))
).where(t.PENDING)  # fmt: skip
_STILL_PENDING = (
    sa.update(t.machines)
    .where(t.machines.c.id == sa.bindparam("machine"))
    .values(
        error=sa.bindparam("why"), updated_at=sa.bindparam("at"), version=t.machines.c.version + 1
    )
)


def _to_pending(r: Row[Any]) -> Pending:
    columns: tuple[Any, ...] = tuple(r)  # by position: see `from_row`
    (machine_id, project_id, created_at, error, image, cpus, memory_mib, disk_mib, runtime,
     constraints, strategy, group, policy, volumes, from_snapshot) = columns  # fmt: skip
    return Pending(
        machine_id, project_id, created_at, error, image, cpus, memory_mib,
        scratch_mib(disk_mib, memory_mib), runtime, dict(constraints),
        None if strategy is None else Strategy(strategy), group, GroupPolicy(policy),
        tuple(VolumeAttach(**v) for v in volumes), from_snapshot,
    )  # fmt: skip


def _group_members(which: sa.ColumnElement[bool]) -> "sa.Select[Any]":
    """The groups' active machines counted per group and node (`MachineRepo.group_members`)."""
    m = t.machines
    return (
        sa.select(m.c.group_name, m.c.node_id, sa.func.count())
        .where(
            which,
            m.c.node_id.is_not(None),
            m.c.state.in_([s.value for s in ACTIVE]),
            m.c.desired != Desired.DESTROYED.value,
        )
        .group_by(m.c.group_name, m.c.node_id)
    )


# The groups as rows to join: the planner looks each up in ix_machines_group, even on a table it
# has no statistics of yet (for a list of names, it scanned the whole project's machines).
_GROUP_MEMBERS_PG = _group_members(
    sa.tuple_(t.machines.c.project_id, t.machines.c.group_name).in_(
        sa.select(
            sa.bindparam("project", type_=sa.String),
            sa.func.unnest(sa.bindparam("groups", type_=sa.ARRAY(sa.String))),
        )
    )
)


def _row(m: Machine) -> dict[str, Any]:
    """The row a create writes."""
    return {
        "id": m.id,
        "project_id": m.project_id,
        "created_at": m.created_at,
        "version": m.version,
        **_machine_values(m),
    }


def _machine_values(m: Machine) -> dict[str, Any]:
    """The columns an update writes: everything but id, project, creation time and version."""
    s = m.spec
    return {
        "name": m.name,
        "image": s.image,
        "command": None if s.command is None else list(s.command),
        "entrypoint": None if s.entrypoint is None else list(s.entrypoint),
        "env": list(s.env),
        "workdir": s.workdir,
        "user_spec": s.user,
        "cpus": s.cpus,
        "memory_mib": s.memory_mib,
        "disk_mib": s.disk_mib,
        "scratch_mib": s.scratch_mib,
        "runtime": s.runtime,
        "restart": s.restart.value,
        "labels": dict(s.labels),
        "auto_destroy": s.auto_destroy,
        "group_name": s.group,
        "group_policy": s.group_policy.value,
        "constraints": dict(s.constraints),
        "strategy": None if s.strategy is None else s.strategy.value,
        "tty": s.tty,
        "stdin": s.stdin,
        "tty_rows": s.rows,
        "tty_cols": s.cols,
        "hold_output": s.hold_output,
        "from_snapshot": s.from_snapshot,
        "volumes": [
            {"volume": v.volume, "target": v.target, "read_only": v.read_only, "name": v.name}
            for v in s.volumes
        ],
        "timeout_s": s.timeout_s,
        "on_timeout": s.on_timeout.value,
        "idle_s": s.idle_s,
        "on_idle": s.on_idle.value,
        "state": m.state.value,
        "desired": m.desired.value,
        "updated_at": m.updated_at,
        "node_id": m.node_id,
        "generation": m.generation,
        "exit_code": m.exit_code,
        "error": m.error,
        "oom_killed": m.oom_killed,
        "restarts": m.restarts,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "stop_signal": m.stop_signal,
        "stop_timeout": m.stop_timeout,
        "start_after": m.start_after,
        "image_digest": m.image_digest,
        "image_source": m.image_source,
        "ran_s": m.ran_s,
        "running_since": m.running_since,
        "extended_s": m.extended_s,
        "expires_at": m.expires_at,
        "pool": m.pool,
        "pool_snapshot": m.pool_snapshot,
        "active_at": m.active_at,
        "idled": m.idled,
        "idle_at": m.idle_at,
    }


# What a record leaves out (MachineRepo.records): the bookkeeping no view shows, 10 columns of 59
# (a sixth of reading the rows).
_UNSHOWN = ("project_id", "scratch_mib", "updated_at", "generation", "stop_signal", "stop_timeout",
            "start_after", "pool", "pool_snapshot", "version")  # fmt: skip
_SHOWN = tuple(
    sa.type_coerce(c, Decoded(bool(c.nullable))).label(c.name) if isinstance(c.type, sa.JSON) else c
    for c in t.machines.c
    if c.name not in _UNSHOWN
)

# The columns named otherwise than their field of Machine or MachineSpec ("user" is reserved).
_FIELD_OF = {"user_spec": "user", "group_name": "group", "tty_rows": "rows", "tty_cols": "cols"}
_RECORD_FIELDS = (
    *(_FIELD_OF.get(c.name, c.name) for c in _SHOWN),
    "addresses",
    "ports",
    "security_groups",
)


def _to_machine(r: Row[Any]) -> Machine:
    renamed = r._mapping
    spec = from_row(
        MachineSpec,
        r,
        command=None if r.command is None else tuple(r.command),
        entrypoint=None if r.entrypoint is None else tuple(r.entrypoint),
        env=tuple(r.env),
        restart=RestartPolicy(r.restart),
        labels=dict(r.labels),
        group_policy=GroupPolicy(r.group_policy),
        constraints=dict(r.constraints),
        strategy=None if r.strategy is None else Strategy(r.strategy),
        **{field: renamed[column] for column, field in _FIELD_OF.items()},
        volumes=_volumes(r.volumes),
        on_timeout=OnTimeout(r.on_timeout),
        on_idle=OnIdle(r.on_idle),
    )
    return from_row(Machine, r, spec=spec, state=MachineState(r.state), desired=Desired(r.desired))


def _volumes(stored: builtins.list[dict[str, Any]]) -> tuple[VolumeAttach, ...]:
    return tuple(VolumeAttach(**v) for v in stored)


@functools.lru_cache(maxsize=128)
def _page_statement(
    states: tuple[str, ...], label_keys: tuple[str, ...], after: bool, shown: bool, pg: bool
) -> "sa.Select[Any]":
    """`_page`'s statement for its shape, its values bound (project_id, label_N, after_time,
    after_id, limit). Kept: building one, and finding its compiled form, cost as much as
    reading a page of rows."""
    m = t.machines
    stmt = sa.select(*(*_SHOWN, *_wiring(pg)) if shown else m.c)
    stmt = stmt.where(m.c.project_id == sa.bindparam("project_id"), m.c.pool == "")
    if states:
        # A parameter per state, its value kept with the statement: an IN of one expanding
        # parameter is rendered again at each execution.
        in_states: list[sa.BindParameter[str]] = [
            sa.bindparam(f"state_{i}", state) for i, state in enumerate(states)
        ]
        stmt = stmt.where(m.c.state.in_(in_states))
    for i, key in enumerate(label_keys):
        stmt = stmt.where(m.c.labels[key].as_string() == sa.bindparam(f"label_{i}"))
    if after:
        after_time: sa.BindParameter[float] = sa.bindparam("after_time")
        after_id: sa.BindParameter[str] = sa.bindparam("after_id")
        stmt = stmt.where(
            sa.or_(
                m.c.created_at > after_time,
                sa.and_(m.c.created_at == after_time, m.c.id > after_id),
            )
        )
    return stmt.order_by(m.c.created_at, m.c.id).limit(sa.bindparam("limit"))


def _wiring(pg: bool) -> tuple["sa.Label[Any]", ...]:
    """A record's wiring, as columns of its row (one statement where a second, for the page's
    machines by id, cost a third of the request): JSON arrays of its addresses ([position,
    network, network id, mac, ip4, ip6]), ports ([host port, port, protocol, host ip]) and
    security groups ([position, name]), each [] when it has none."""
    m, a, n, p = t.machines, t.network_addresses, t.networks, t.machine_ports
    g, sg = t.machine_security_groups, t.security_groups

    def arrays(*columns: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        if pg:
            agg = sa.func.json_agg(sa.func.json_build_array(*columns))
            return sa.func.coalesce(agg, sa.literal_column("'[]'::json"), type_=Decoded())
        return sa.func.json_group_array(sa.func.json_array(*columns), type_=Decoded())

    addresses = (
        sa.select(arrays(a.c.position, n.c.name, a.c.network_id, a.c.mac, a.c.ip4, a.c.ip6))
        .join(n, n.c.id == a.c.network_id)
        .where(a.c.machine_id == m.c.id)
    )
    ports = sa.select(arrays(p.c.host_port, p.c.port, p.c.protocol, p.c.host_ip)).where(
        p.c.machine_id == m.c.id
    )
    groups = (
        sa.select(arrays(g.c.position, sg.c.name))
        .join(sg, sg.c.id == g.c.group_id)
        .where(g.c.machine_id == m.c.id)
    )
    return (
        addresses.scalar_subquery().label("addresses"),
        ports.scalar_subquery().label("ports"),
        groups.scalar_subquery().label("security_groups"),
    )


def _encode_cursor(created_at: float, machine_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, machine_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    """What _encode_cursor encoded; Invalid for anything else, so that only a finite time and
    an id's characters reach a statement (not an int too large for a float, NaN, or a string
    no database stores)."""
    try:
        created_at, machine_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        after = float(created_at)
    except (binascii.Error, ValueError, TypeError, UnicodeError, OverflowError):
        created_at, after, machine_id = None, math.nan, None
    if (
        not isinstance(created_at, int | float)
        or not math.isfinite(after)
        or not isinstance(machine_id, str)
        or not _ID_CHARS.fullmatch(machine_id)
    ):
        raise Invalid("the cursor is not one this store handed out")
    return after, machine_id


_ID_CHARS = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what a machine id is made of


def _usage() -> sa.Select[Any]:
    """What a project's machines hold (MachineRepo.usage); built once, as every create asks."""
    m = t.machines
    # A suspended machine holds its place in the count and disk, not CPU or memory: its
    # scratch disk, and its memory, saved on its node's disk.
    active = m.c.state.in_([s.value for s in ACTIVE])
    saved = sa.case((m.c.state == MachineState.SUSPENDED.value, m.c.memory_mib), else_=0)
    return sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(sa.case((active, m.c.cpus), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((active, m.c.memory_mib), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(m.c.scratch_mib + saved), 0),
    ).where(
        m.c.project_id == sa.bindparam("project_id"),
        sa.or_(active, m.c.state == MachineState.SUSPENDED.value),
        # Created not to start (or stopped before placement): it will hold nothing until a
        # start, which checks the quota again.
        sa.or_(m.c.node_id.is_not(None), m.c.desired == Desired.RUNNING.value),
    )


_USAGE = _usage()
# Built once (every request naming a machine asks): an id wins over a name; among machines of
# that name, the live one, else the newest; a pool's machines are not the project's to name.
_GET = (
    Repo._by_ref(t.machines)
    .where(t.machines.c.pool == "")
    .order_by(sa.case((t.LIVE, 0), else_=1), t.machines.c.created_at.desc())
    .limit(1)
)
