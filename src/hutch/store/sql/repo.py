"""What every repository shares: the connection it runs on, and a few statements."""

import dataclasses
import json
import operator
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, NoReturn, Protocol, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from hutch.model.errors import Conflict, NotFound

Backend = Literal["sqlite", "postgresql"]
M = TypeVar("M")


def from_row(model: type[M], row: Row[Any], prefix: str = "", /, **converted: Any) -> M:
    """A model dataclass from the row's columns named as its fields (after `prefix`);
    `converted` gives the fields whose column is named otherwise or holds another type (an
    enum's value, a JSON list for a tuple). A field neither gives is an AttributeError."""
    key = (model, prefix, tuple(converted))
    reader = _READERS.get(key)
    # The rows of one result share their metadata (`_parent`): their columns are read once.
    if reader is None or reader.result is not row._parent:
        columns = row._fields
        if reader is None or reader.columns != columns:
            reader = _reader(model, prefix, columns, converted)
        reader = _READERS[key] = dataclasses.replace(reader, result=row._parent)
    return model(**dict(zip(reader.names, reader.values(row), strict=True)), **converted)


@dataclasses.dataclass(frozen=True, slots=True)
class _Reader:
    """How from_row() reads a model from rows of one shape: the fields' names and a getter of
    their columns by position (a Row's attributes are read one Python call each: 40 times
    slower), for the last result it read."""

    columns: tuple[str, ...]
    names: tuple[str, ...]
    values: Callable[[Row[Any]], tuple[Any, ...]]
    result: object = None


_READERS: dict[tuple[Any, ...], _Reader] = {}


def _reader(
    model: type, prefix: str, columns: tuple[str, ...], converted: Mapping[str, Any]
) -> _Reader:
    fields = tuple(f.name for f in dataclasses.fields(model) if f.name not in converted)
    missing = [prefix + n for n in fields if prefix + n not in columns]
    if missing:
        raise AttributeError(f"no column {', '.join(missing)} for {model.__name__}")
    at = [columns.index(prefix + n) for n in fields]
    if len(at) >= 2:
        return _Reader(columns, fields, operator.itemgetter(*at))
    return _Reader(columns, fields, lambda row: tuple(row[i] for i in at))  # itemgetter(i): a value


_INSERTS: dict[sa.Table, sa.Insert] = {}  # built once: a statement's cache key is kept on it
_LOCKS: dict[tuple[sa.Table, bool, bool], "sa.Select[Any]"] = {}  # _locked's, likewise


class _JsonIds(sa.types.TypeDecorator[list[str]]):
    """A list of ids bound as one JSON array (SQLite's json_each reads it)."""

    impl = sa.String
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: sa.Dialect) -> str:
        return json.dumps(value or [])


class Decoded(sa.types.UserDefinedType[Any]):
    """A JSON value read for a hot path: SQLite's text decoded by orjson itself, one C call per
    value where sa.JSON's processor is three Python calls around it (a tenth of a list's
    request); asyncpg decodes JSON itself. For reading only (type_coerce a column to it)."""

    cache_ok = True

    def __init__(self, nullable: bool = False) -> None:
        self.nullable = nullable

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return None
        return _loads_or_none if self.nullable else orjson.loads


def _loads_or_none(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def among(column: sa.ColumnElement[Any], pg: bool) -> sa.ColumnElement[bool]:
    """`column` is one of the list of ids bound as "ids": one parameter, an array on PostgreSQL
    (`= ANY`), a JSON array on SQLite (json_each), not an IN list rendered into the statement
    and bound id by id at every execution (a page names 100 machines, the scheduler's a
    thousand machines or nodes)."""
    if pg:
        return column == sa.any_(sa.bindparam("ids", type_=sa.ARRAY(sa.String)))
    ids = sa.func.json_each(sa.bindparam("ids", type_=_JsonIds()))
    return column.in_(sa.select(sa.column("value")).select_from(ids))


def _insert_of(table: sa.Table) -> sa.Insert:
    stmt = _INSERTS.get(table)
    if stmt is None:
        stmt = _INSERTS[table] = table.insert()
    return stmt


def by_ref(project_id: str, ref: str) -> dict[str, str]:
    """The parameters of a `Repo._by_ref` statement."""
    return {"project_id": project_id, "ref": ref}


class Conn(Protocol):
    """What repositories need of a connection: AsyncConnection, or _InLoop on SQLite."""

    async def execute(
        self, statement: sa.Executable, parameters: Any = None, /
    ) -> sa.CursorResult[Any]: ...

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, /
    ) -> sa.CursorResult[Any]: ...

    def begin_nested(self) -> Any: ...


class Versioned(Protocol):
    """A model updated by compare-and-set on its version (a machine, a node)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...


class Repo:
    def __init__(self, conn: Conn, backend: Backend) -> None:
        self._c = conn
        self._pg = backend == "postgresql"

    async def _one(
        self, stmt: sa.Executable, params: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        row: Row[Any] | None = (await self._c.execute(stmt, params)).first()
        return row

    async def _found(
        self, stmt: sa.Executable, what: str, ref: str, params: Mapping[str, Any] | None = None
    ) -> Row[Any]:
        """The statement's first row (a select, or a write's RETURNING), with `params` for its
        bound parameters; NotFound, naming `what` by `ref`, if there is none."""
        if (row := await self._one(stmt, params)) is None:
            raise NotFound(f"{what} {ref!r} not found")
        return row

    @staticmethod
    def _by_ref(table: sa.Table) -> "sa.Select[Any]":
        """The project's rows whose id or name is `ref`, the one with that id first (an id wins
        over a name); `project_id` and `ref` are bound parameters (`by_ref`). Built once by
        its callers: building a statement and its cache key takes longer than SQLite takes to
        run it."""
        ref: sa.BindParameter[str] = sa.bindparam("ref")
        return (
            sa.select(table)
            .where(
                table.c.project_id == sa.bindparam("project_id"),
                sa.or_(table.c.id == ref, table.c.name == ref),
            )
            .order_by(sa.case((table.c.id == ref, 0), else_=1))
        )

    async def _exists(self, table: sa.Table, *where: sa.ColumnElement[bool]) -> bool:
        return (
            await self._one(sa.select(sa.literal(1)).select_from(table).where(*where)) is not None
        )

    async def _insert(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        """Insert one row; False if a constraint refused it. On PostgreSQL in a savepoint, so
        that the transaction stays usable after the refusal; SQLite undoes the refused
        statement alone (ABORT), and two statements fewer count in every create."""
        try:
            if self._pg:
                async with self._c.begin_nested():
                    await self._c.execute(_insert_of(table), values)
            else:
                await self._c.execute(_insert_of(table), values)
        except IntegrityError:
            return False
        return True

    async def _stale(
        self,
        table: sa.Table,
        where: tuple[sa.ColumnElement[bool], ...],
        what: str,
        wrote: "Versioned",
    ) -> NoReturn:
        """Why a compare-and-set of `wrote` on its version wrote nothing: Conflict if the row
        is still `where` (someone else changed it), else NotFound."""
        if await self._exists(table, *where):
            raise Conflict(
                f"{what} {wrote.name!r} was changed by someone else since version "
                f"{wrote.version}: read it again and retry"
            )
        raise NotFound(f"{what} {wrote.id!r} not found")

    async def _locked(
        self, table: sa.Table, row_id: str, what: str, *, key: bool = False
    ) -> Row[Any]:
        """The row, held until the transaction ends; NotFound if it is not there. `key`: also
        keep out inserts that reference it (FOR UPDATE), as before deleting it."""
        stmt = _LOCKS.get((table, self._pg, key))
        if stmt is None:  # built once: every quota check asks
            stmt = sa.select(table).where(table.c.id == sa.bindparam("row_id"))
            if self._pg:
                stmt = stmt.with_for_update(key_share=not key)
            _LOCKS[table, self._pg, key] = stmt
        return await self._found(stmt, what, row_id, {"row_id": row_id})

    async def _compare_and_set(
        self,
        table: sa.Table,
        where: tuple[sa.ColumnElement[bool], ...],
        what: str,
        wrote: "Versioned",
        values: Mapping[str, Any],
        *,
        refused: Callable[[], Awaitable[NoReturn]],
    ) -> Row[Any]:
        """Write `values` to the row `where` if its version is still `wrote.version`, bumping
        it: the new row. In a savepoint: a constraint's refusal is `refused()`'s error, and a
        version that moved on is Conflict (NotFound if the row is gone), see _stale()."""
        stmt = (
            sa.update(table)
            .where(*where, table.c.version == wrote.version)
            .values(**values, version=wrote.version + 1)
            .returning(*table.c)
        )
        try:
            async with self._c.begin_nested():
                row = (await self._c.execute(stmt)).first()
        except IntegrityError:
            await refused()
        if row is None:
            await self._stale(table, where, what, wrote)
        return row
