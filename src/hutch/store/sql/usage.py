"""The usage ledger: the repository and its rows (see hutch.model.usage).

`add()` inserts in batches with ON CONFLICT (key) DO NOTHING, so a record sent twice, or by two
controllers at once, is in the ledger once; `add_into()` with ON CONFLICT (key) DO UPDATE adding
the quantities (metering's hourly rows, counted once by the marks moved in the same
transaction). A node's post is one statement per MAX_BATCH rows.
"""

import builtins
import dataclasses
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row

from hutch.model.errors import Invalid
from hutch.model.machine import MachineState
from hutch.model.sandbox import scratch_mib
from hutch.model.usage import (
    COUNTS,
    MAX_RECORDS,
    QUANTITIES,
    By,
    Held,
    Hour,
    Owner,
    UsageMark,
    UsageRecord,
    UsageTotal,
)
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, from_row
from hutch.wire.common import INT64_MAX

MAX_BATCH = 1000  # rows per INSERT: under both backends' limits on bound parameters
_DAY = 86400
MIB = 1 << 20
T = TypeVar("T")


class SqlUsage(Repo):
    async def add(self, records: Sequence[UsageRecord]) -> int:
        u = t.usage
        added = 0
        for batch in _batches(records):
            stmt = self._insert_ignoring(u, ["key"]).returning(u.c.id)
            result = await self._c.execute(stmt, [_values(r) for r in batch])
            added += len(result.all())
        return added

    async def add_into(self, hours: Sequence[Hour]) -> None:
        # The driver's own SQL and plain tuples: SQLAlchemy's work per row was most of the
        # ingest's (bench/metering_ingest.py).
        if not hours:
            return
        if self._pg:  # one statement over arrays: one server round for all the rows
            columns = list(zip(*((h.key, h.project_id, h.machine_id, _labels(h.labels), *h[4:])
                                 for h in hours), strict=True))  # fmt: skip
            await self._c.exec_driver_sql(_ADD_INTO_PG, tuple(columns))
        else:
            rows = [(h.key, h.project_id, h.machine_id, h.machine_id, _labels(h.labels), *h[4:])
                    for h in hours]  # fmt: skip
            await self._c.exec_driver_sql(_ADD_INTO_SQLITE, rows)

    async def totals(
        self,
        project_id: str | None,
        since: float | None = None,
        until: float | None = None,
        by: By = None,
    ) -> builtins.list[UsageTotal]:
        u = t.usage
        if by == "machine":
            group: sa.ColumnElement[Any] = u.c.subject
        elif by == "label":
            group = sa.cast(u.c.labels, sa.Text)
        elif by == "day":
            group = (
                sa.func.floor(u.c.start / _DAY)
                if self._pg
                else sa.cast(u.c.start / _DAY, sa.Integer)
            )
        elif by is None:
            group = sa.literal("")
        else:
            raise Invalid(f"usage totals are by machine, label or day, not {by!r}")
        rows = (await self._c.execute(_grouped(project_id, since, until, group))).all()
        if by == "label":
            return _by_label(rows)
        totals = [_total(r, _day(r.grp) if by == "day" else r.grp) for r in rows]
        return sorted(totals, key=lambda x: (x.project_id, x.group))

    async def by_labels(
        self, project_id: str, since: float, until: float
    ) -> builtins.list[tuple[dict[str, str], UsageTotal]]:
        labels = t.usage.c.labels
        # PostgreSQL cannot compare json: grouped by its text. SQLite stores the text: grouped
        # by it as it is (a CAST of each row cost a third more).
        group = sa.cast(labels, sa.Text) if self._pg else sa.type_coerce(labels, sa.Text)
        rows = await self._c.execute(_grouped(project_id, since, until, group))
        return [(json.loads(r.grp), _total(r, "")) for r in rows]

    async def records(
        self,
        project_id: str | None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[builtins.list[UsageRecord], str | None]:
        if limit < 1:
            raise Invalid("limit must be at least 1")
        limit = min(limit, MAX_RECORDS)
        u = t.usage
        where = _within(project_id, since, until)
        if cursor is not None:
            after = int(cursor) if cursor.isascii() and cursor.isdigit() else -1
            if not 0 <= after <= INT64_MAX:  # what an id column holds; more would not bind
                raise Invalid(f"the cursor {cursor[:40]!r} is not one a page of usage gave")
            where.append(u.c.id > after)
        stmt = sa.select(u).where(*where).order_by(u.c.id).limit(limit + 1)
        rows = (await self._c.execute(stmt)).all()
        page = [_to_record(r) for r in rows[:limit]]
        return page, str(page[-1].id) if len(rows) > limit else None

    async def owners(self, machine_ids: Sequence[str]) -> dict[str, Owner]:
        found: dict[str, Owner] = {}
        for chunk in _batches(sorted(set(machine_ids))):
            if self._pg:  # (asyncpg decodes the labels' JSON)
                rows = _tuples(await self._c.exec_driver_sql(_OWNERS.format("= ANY($1)"), (chunk,)))
                found |= {r[0]: Owner(r[0], r[1], r[2], r[3], r[4]) for r in rows}
            else:
                where = f"IN ({', '.join('?' * len(chunk))})"
                rows = _tuples(await self._c.exec_driver_sql(_OWNERS.format(where), tuple(chunk)))
                found |= {r[0]: Owner(r[0], r[1], r[2], r[3], _decoded(r[4])) for r in rows}
        return found

    async def marks(self, streams: Sequence[tuple[str, int]]) -> dict[tuple[str, int], UsageMark]:
        streams = sorted(set(streams))  # one order for every writer: no deadlock between them
        found = await self._marks(streams)
        if missing := [s for s in streams if s not in found]:
            # New streams: made (another writer may make them at the same time), then taken.
            new = [dataclasses.asdict(UsageMark(s, g)) for s, g in missing]
            await self._c.execute(
                self._insert_ignoring(t.usage_marks, ["subject", "generation"]), new
            )
            found |= await self._marks(missing)
        return found

    async def _marks(self, streams: Sequence[tuple[str, int]]) -> dict[tuple[str, int], UsageMark]:
        found: dict[tuple[str, int], UsageMark] = {}
        for chunk in _batches(streams):
            if self._pg:  # held: FOR UPDATE, in one order for every writer
                subjects, generations = [s for s, _ in chunk], [g for _, g in chunk]
                rows = _tuples(await self._c.exec_driver_sql(_MARKS_PG, (subjects, generations)))
            else:
                values = ", ".join(["(?, ?)"] * len(chunk))
                flat = tuple(x for stream in chunk for x in stream)
                rows = _tuples(await self._c.exec_driver_sql(_MARKS_SQLITE.format(values), flat))
            for r in rows:  # (SQLite's booleans are 0 and 1)
                found[r[0], r[1]] = UsageMark(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]))
        return found

    async def set_marks(self, marks: Sequence[UsageMark]) -> None:
        rows = [(k.seq, k.time, k.running_s, k.cpu_s, k.egress_bytes, k.ended, k.subject,
                 k.generation) for k in marks]  # fmt: skip
        if rows and self._pg:  # one statement over arrays, as add_into
            await self._c.exec_driver_sql(_SET_MARKS_PG, tuple(zip(*rows, strict=True)))
        elif rows:
            await self._c.exec_driver_sql(_SET_MARK_SQLITE, rows)

    async def prune_marks(self) -> int:
        m = t.usage_marks
        kept = sa.select(t.machines.c.id).where(t.machines.c.id == m.c.subject)
        gone = sa.delete(m).where(m.c.generation > 0, ~sa.exists(kept))
        return int((await self._c.execute(gone)).rowcount)

    async def held(self, start: float, end: float) -> builtins.list[Held]:
        m, v, vs, ms = t.machines, t.volumes, t.volume_snapshots, t.machine_snapshots
        destroyed = m.c.state == MachineState.DESTROYED.value
        machines = sa.select(
            m.c.id, m.c.project_id, m.c.labels, m.c.disk_mib, m.c.memory_mib, m.c.created_at,
            sa.case((destroyed, m.c.updated_at), else_=None).label("until"),
        ).where(m.c.created_at < end, sa.or_(~destroyed, m.c.updated_at > start))  # fmt: skip
        held = [
            Held(r.id, r.project_id, scratch_mib(r.disk_mib, r.memory_mib) * MIB, r.created_at,
                 r.until, r.id, r.labels)
            for r in await self._c.execute(machines)
        ]  # fmt: skip
        for table in (v, vs, ms):
            disks = sa.select(table.c.id, table.c.project_id, table.c.size_bytes,
                              table.c.created_at).where(table.c.created_at < end)  # fmt: skip
            held += [Held(r.id, r.project_id, r.size_bytes, r.created_at)
                     for r in await self._c.execute(disks)]  # fmt: skip
        return held

    def _insert_ignoring(self, table: sa.Table, key: builtins.list[str]) -> Any:
        """INSERT ... ON CONFLICT (key) DO NOTHING, in the backend's dialect."""
        insert = postgresql.insert if self._pg else sqlite.insert
        return insert(table).on_conflict_do_nothing(index_elements=key)


_SUMMED = """ON CONFLICT (key) DO UPDATE SET start = {}(usage.start, excluded.start),
 "end" = {}(usage."end", excluded."end"),
 vcpu_seconds = usage.vcpu_seconds + excluded.vcpu_seconds,
 cpu_seconds = usage.cpu_seconds + excluded.cpu_seconds,
 memory_gib_seconds = usage.memory_gib_seconds + excluded.memory_gib_seconds,
 egress_bytes = usage.egress_bytes + excluded.egress_bytes"""
_INTO = """INSERT INTO usage (key, project_id, machine_id, subject, labels, start, "end",
 vcpu_seconds, cpu_seconds, memory_gib_seconds, egress_bytes, storage_gib_hours, starts)"""
_ADD_INTO_SQLITE = f"""{_INTO} VALUES ({", ".join("?" * 11)}, 0, 0)
 {_SUMMED.format("min", "max")}"""
_ADD_INTO_PG = f"""{_INTO} SELECT k, p, m, m, l::json, s, e, v, c, g, b, 0, 0 FROM unnest(
 $1::varchar[], $2::varchar[], $3::varchar[], $4::text[], $5::float8[], $6::float8[],
 $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) AS r(k, p, m, l, s, e, v, c, g, b)
 {_SUMMED.format("least", "greatest")}"""
_OWNERS = "SELECT id, project_id, node_id, generation, labels FROM machines WHERE id {}"
_MARK_COLUMNS = "subject, generation, seq, time, running_s, cpu_s, egress_bytes, ended"
_MARKS_PG = f"""SELECT {_MARK_COLUMNS} FROM usage_marks WHERE (subject, generation) IN
 (SELECT * FROM unnest($1::varchar[], $2::integer[])) ORDER BY subject, generation FOR UPDATE"""
_MARKS_SQLITE = f"""SELECT {_MARK_COLUMNS} FROM usage_marks WHERE (subject, generation) IN
 (VALUES {{}})"""
_SET_MARK_SQLITE = """UPDATE usage_marks SET seq = ?, time = ?, running_s = ?, cpu_s = ?,
 egress_bytes = ?, ended = ? WHERE subject = ? AND generation = ?"""
_SET_MARKS_PG = """UPDATE usage_marks AS m SET seq = v.seq, time = v.time,
 running_s = v.running_s, cpu_s = v.cpu_s, egress_bytes = v.egress_bytes, ended = v.ended
 FROM unnest($1::bigint[], $2::float8[], $3::float8[], $4::float8[], $5::bigint[],
 $6::boolean[], $7::varchar[], $8::integer[])
 AS v(seq, time, running_s, cpu_s, egress_bytes, ended, subject, generation)
 WHERE m.subject = v.subject AND m.generation = v.generation"""


@functools.lru_cache(maxsize=4096)
def _canonical(labels: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(labels))


def _tuples(result: sa.CursorResult[Any]) -> builtins.list[tuple[Any, ...]]:
    """The rows of the driver's own SQL, as the tuples they are."""
    return cast(builtins.list[tuple[Any, ...]], result.all())


@functools.lru_cache(maxsize=4096)
def _decoded(labels: str) -> Mapping[str, str]:
    """A machine's labels from their JSON (SQLite's text): many machines share a set."""
    return MappingProxyType(json.loads(labels))


def _labels(labels: Mapping[str, str]) -> str:
    """A record's labels as the ledger stores them: JSON with sorted keys, as `add` writes them
    (a set of labels is grouped by its text)."""
    return _canonical(tuple(sorted(labels.items())))


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), MAX_BATCH):
        yield items[i : i + MAX_BATCH]


def _grouped(
    project_id: str | None, since: float | None, until: float | None, group: sa.ColumnElement[Any]
) -> sa.Select[Any]:
    """The sums of the records in [since, until), per project and `group` (as "grp")."""
    u = t.usage
    sums = [sa.func.sum(u.c[n]).label(n) for n in QUANTITIES + COUNTS]
    return (
        sa.select(u.c.project_id, group.label("grp"), *sums, sa.func.count().label("n"))
        .where(*_within(project_id, since, until))
        .group_by(u.c.project_id, group)
    )


def _within(
    project_id: str | None, since: float | None, until: float | None
) -> builtins.list[sa.ColumnElement[bool]]:
    """A record is in [since, until) if its start is."""
    u = t.usage
    where = []
    if project_id is not None:
        where.append(u.c.project_id == project_id)
    if since is not None:
        where.append(u.c.start >= since)
    if until is not None:
        where.append(u.c.start < until)
    return where


def _values(r: UsageRecord) -> dict[str, Any]:
    return {
        "key": r.key, "project_id": r.project_id, "machine_id": r.machine_id,
        "subject": r.subject, "labels": dict(sorted(r.labels.items())), "start": r.start,
        "end": r.end, "vcpu_seconds": r.vcpu_seconds, "cpu_seconds": r.cpu_seconds,
        "memory_gib_seconds": r.memory_gib_seconds, "storage_gib_hours": r.storage_gib_hours,
        "egress_bytes": r.egress_bytes, "starts": r.starts,
    }  # fmt: skip


def _to_record(r: Row[Any]) -> UsageRecord:
    return from_row(UsageRecord, r)


def _total(r: Row[Any], group: str) -> UsageTotal:
    sums: dict[str, Any] = {n: r._mapping[n] for n in QUANTITIES}
    sums.update({n: int(r._mapping[n]) for n in COUNTS})
    return UsageTotal(r.project_id, group, **sums, records=int(r.n))


def _day(number: Any) -> str:
    return datetime.fromtimestamp(int(number) * _DAY, UTC).strftime("%Y-%m-%d")


def _by_label(rows: Sequence[Row[Any]]) -> builtins.list[UsageTotal]:
    """Each label set's sums added into each of its "key=value" groups ("" for none)."""
    groups: dict[tuple[str, str], UsageTotal] = {}
    for r in rows:
        labels = json.loads(r.grp) or {"": None}
        for k, v in labels.items():
            name = f"{k}={v}" if k else ""
            part = _total(r, name)
            have = groups.get((r.project_id, name))
            groups[r.project_id, name] = part if have is None else _plus(have, part)
    return [groups[k] for k in sorted(groups)]


def _plus(a: UsageTotal, b: UsageTotal) -> UsageTotal:
    sums = {n: getattr(a, n) + getattr(b, n) for n in QUANTITIES + COUNTS + ("records",)}
    return UsageTotal(a.project_id, a.group, **sums)
