"""A project's events: the repository and its rows.

Event ids. An event's id is its number in its project (`events.seq`: 1, 2, 3...), so the ids a
project sees say nothing about the others. `events.append()` takes the next number by bumping
`projects.event_seq`, which holds the project's row until the commit: a project's events are
numbered in commit order, and a reader never sees number 7 before 6 (as it could with a
sequence, whose values become visible at commit). (So a transaction that appends events of two
projects locks both: take them in one order.)
"""

from collections.abc import Sequence

import sqlalchemy as sa

from hutch.model.errors import Invalid, NotFound
from hutch.model.machine import Event
from hutch.store import tables as t
from hutch.store.base import NewEvent
from hutch.store.sql.repo import Repo, from_row

MAX_EVENTS = 1000  # events per since() call
_NUMBER = (  # built once: every state change asks
    sa.update(t.projects)
    .where(t.projects.c.id == sa.bindparam("project"))
    .values(event_seq=t.projects.c.event_seq + sa.bindparam("n", type_=sa.Integer))
    .returning(t.projects.c.event_seq)
)

_COLUMNS = (*NewEvent._fields, "seq")  # what append() writes of each event
_APPEND_PG = sa.text(
    f"INSERT INTO events ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    "CAST(:project_id AS text[]), CAST(:kind AS text[]), CAST(:object_id AS text[]),"
    " CAST(:state AS text[]), CAST(:message AS text[]), CAST(:time AS float8[]),"
    " CAST(:seq AS bigint[]))"
)
_INSERT = t.events.insert()  # built once: every state change appends


class SqlEvents(Repo):
    async def append(self, events: Sequence[NewEvent]) -> list[Event]:
        """The events in one statement, numbered in the order given (see the module's
        docstring); NotFound if a project is gone."""
        if not events:
            return []
        counts: dict[str, int] = {}
        for e in events:
            counts[e.project_id] = counts.get(e.project_id, 0) + 1
        following = {p: await self._number(p, counts[p]) for p in sorted(counts)}
        appended = []
        for e in events:
            appended.append(Event(following[e.project_id], *e))
            following[e.project_id] += 1
        rows = [(*e, a.id) for e, a in zip(events, appended, strict=True)]
        if self._pg:  # a column per array: one execution, not a thousand rows of parameters
            columns = zip(*rows, strict=True)
            params = {name: list(values) for name, values in zip(_COLUMNS, columns, strict=True)}
            await self._c.execute(_APPEND_PG, params)
        else:
            named = [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
            await self._c.execute(_INSERT, named)
        return appended

    async def _number(self, project_id: str, n: int) -> int:
        """Take the project's next `n` event numbers: the first. The update holds the project's
        row until the transaction ends, so a project's events are numbered in commit order,
        whichever controller writes them (see the module's docstring); NotFound if it is gone."""
        last = (
            await self._c.execute(_NUMBER, {"project": project_id, "n": n})
        ).scalar_one_or_none()
        if last is None:
            raise NotFound(f"project {project_id!r} not found")
        return int(last) - n + 1

    async def last(self, project_id: str) -> int:
        p = t.projects
        row = await self._found(
            sa.select(p.c.event_seq).where(p.c.id == project_id), "project", project_id
        )
        return int(row[0])

    async def of_object(self, project_id: str, object_id: str, limit: int) -> list[Event]:
        if limit < 1:
            raise Invalid("limit must be at least 1")
        e = t.events
        stmt = (
            sa.select(e)
            .where(e.c.project_id == project_id, e.c.object_id == object_id)
            .order_by(e.c.seq.desc())
            .limit(min(limit, MAX_EVENTS))
        )
        return [from_row(Event, r, id=r.seq) for r in await self._c.execute(stmt)]

    async def since(self, project_id: str, after: int, limit: int = 500) -> list[Event]:
        """At most MAX_EVENTS events, whatever `limit` asks."""
        if limit < 1:
            raise Invalid("limit must be at least 1")
        e = t.events
        stmt = (
            sa.select(e)
            .where(e.c.project_id == project_id, e.c.seq > after)
            .order_by(e.c.seq)
            .limit(min(limit, MAX_EVENTS))
        )
        return [from_row(Event, r, id=r.seq) for r in await self._c.execute(stmt)]
