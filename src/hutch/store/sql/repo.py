"""What every repository shares: the connection it runs on, and a few statements."""

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, NoReturn, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from hutch.model.errors import Conflict, NotFound

Backend = Literal["sqlite", "postgresql"]
M = TypeVar("M")


def from_row(model: type[M], row: Row[Any], prefix: str = "", /, **converted: Any) -> M:
    """A model dataclass from the row's columns named as its fields (after `prefix`);
    `converted` gives the fields whose column is named otherwise or holds another type (an
    enum's value, a JSON list for a tuple)."""
    names = _FIELDS.get(model)
    if names is None:
        names = _FIELDS[model] = tuple(f.name for f in dataclasses.fields(model))  # type: ignore[arg-type]
    plain = {n: getattr(row, prefix + n) for n in names if n not in converted}
    return model(**plain, **converted)


_FIELDS: dict[type, tuple[str, ...]] = {}  # each model's field names, as from_row() meets it


class Conn(Protocol):
    """What repositories need of a connection: AsyncConnection, or _InLoop on SQLite."""

    async def execute(
        self, statement: sa.Executable, parameters: Any = None, /
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

    async def _one(self, stmt: sa.Select[Any]) -> Row[Any] | None:
        row: Row[Any] | None = (await self._c.execute(stmt)).first()
        return row

    async def _exists(self, table: sa.Table, *where: sa.ColumnElement[bool]) -> bool:
        return (
            await self._one(sa.select(sa.literal(1)).select_from(table).where(*where)) is not None
        )

    async def _insert(self, table: sa.Table, values: Mapping[str, Any]) -> bool:
        """Insert one row; False if a constraint refused it. In a savepoint, so that on
        PostgreSQL the transaction stays usable after the refusal."""
        try:
            async with self._c.begin_nested():
                await self._c.execute(table.insert().values(**values))
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
        stmt = sa.select(table).where(table.c.id == row_id)
        if self._pg:
            stmt = stmt.with_for_update(key_share=not key)
        if (row := await self._one(stmt)) is None:
            raise NotFound(f"{what} {row_id!r} not found")
        return row
