"""The store over SQLAlchemy's async Core: SQLite (aiosqlite) or PostgreSQL (asyncpg).

Transactions. On SQLite, `write()` starts with BEGIN IMMEDIATE, so there is one writer at a time
across every process using the file, and what a writer reads cannot change under it: that is what
makes a quota check race-free there. Writers of one process also take their turn in an asyncio
lock, so they queue in order instead of polling SQLite's busy handler; writers of other processes
wait in that handler (`BUSY_TIMEOUT`). `read()` is a deferred BEGIN on a connection that cannot
write (query_only); in WAL mode readers never block writers nor wait for them.
Both run their statements on plain sqlite3 in the event loop: a reader never waits for a lock,
and neither does a writer once its BEGIN IMMEDIATE holds the file's. Only what may wait goes to
the writer's own thread: the BEGIN IMMEDIATE (another process may hold the lock) and the COMMIT
(its fsync, and the WAL checkpoint). So a write transaction is two passes of the event loop,
whatever it does, instead of about four per statement through aiosqlite's thread; under load,
when every pass also carries the streams' turns (`hutch.http.fair`), that decides how long a
create takes. A write is acknowledged only once that COMMIT has returned.
On PostgreSQL, transactions are READ COMMITTED; `projects.lock()` and `nodes.lock()` take the row
(FOR NO KEY UPDATE: it excludes the other lockers, but not the inserts of rows that merely
reference it), and `read()` transactions are READ ONLY. A deadlock or serialization failure ends
the transaction as Conflict; the caller decides whether to retry the whole block.

Event ids. An event's id is its number in its project (`events.seq`: 1, 2, 3...), so the ids a
project sees say nothing about the others. `events.append()` takes the next number by bumping
`projects.event_seq`, which holds the project's row until the commit: a project's events are
numbered in commit order, and a reader never sees number 7 before 6 (as it could with a
sequence, whose values become visible at commit). (So a transaction that appends events of two
projects locks both: take them in one order.)

Do not nest `write()` blocks of one store: the inner one waits for the outer, and gives up after
BUSY_TIMEOUT as Unavailable.

Schema. `open()` runs the Alembic migrations (`migrations/`) up to head, inside one transaction
holding an advisory lock on PostgreSQL and the write lock on SQLite, so controllers that start
together migrate once.
"""

import asyncio
import base64
import binascii
import builtins
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hutch.model.errors import Conflict, HutchError, Invalid, NotFound, Unavailable
from hutch.model.machine import (
    ACTIVE,
    Capacity,
    Desired,
    Event,
    GroupPolicy,
    Machine,
    MachineSpec,
    MachineState,
    Node,
    NodeState,
    RestartPolicy,
    Strategy,
)
from hutch.model.tenancy import Project, Quota, Role, Token, Usage
from hutch.store import tables as t
from hutch.store.base import (
    Claim,
    EventRepo,
    LeaseRepo,
    MachineRepo,
    NewEvent,
    NodeRepo,
    ProjectRepo,
    TokenRepo,
    Tx,
)

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT = 30.0  # seconds a writer waits for the SQLite file before giving up
CONNECT_TIMEOUT = 10.0  # seconds to reach PostgreSQL
MAX_PAGE = 200  # machines per list() page
MAX_EVENTS = 1000  # events per since() call
_MIGRATION_LOCK = 0x6875_7463_6D69_6772  # PostgreSQL advisory lock key ("hutcmigr")
_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_READ_ONLY = "25006"  # PostgreSQL: a write in a READ ONLY transaction

Backend = Literal["sqlite", "postgresql"]
T = TypeVar("T")


def parse_url(url: str) -> tuple[Backend, URL]:
    """The backend and the SQLAlchemy URL (with the async driver) for a store URL; Invalid if
    it names neither a SQLite file nor a PostgreSQL database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise Invalid(
            "the store URL is malformed: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        ) from None
    scheme, _, driver = parsed.drivername.partition("+")
    if scheme == "sqlite" and driver in ("", "aiosqlite", "pysqlite"):
        if not parsed.database or parsed.database == ":memory:" or parsed.query.get("mode"):
            raise Invalid("a SQLite store needs a file: sqlite:///PATH")
        return "sqlite", parsed.set(drivername="sqlite+aiosqlite")
    if scheme in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        if not parsed.database:
            raise Invalid("a PostgreSQL store URL names its database: postgresql://USER@HOST/DB")
        return "postgresql", parsed.set(drivername="postgresql+asyncpg")
    raise Invalid(
        f"unsupported store URL scheme {parsed.drivername!r}: use sqlite:///PATH "
        "or postgresql://USER@HOST:PORT/DB"
    )


def alembic_config() -> Config:
    """Alembic's configuration for hutch's migrations, without an alembic.ini. Set
    `attributes["connection"]` to a (sync) connection before running a command with it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    return config


def make_revision(url: str, message: str) -> None:
    """Developers: write the next migration (`migrations/versions/NNNN_message.py`),
    autogenerated from the difference between the database at `url` (brought to head first)
    and `tables.py`. Review it, and format it with ruff, before committing."""

    async def run() -> None:
        store = SqlStore(url)
        await store.open()
        try:
            async with store.engine.begin() as conn:

                def revision(sync: Connection) -> None:
                    config = alembic_config()
                    config.attributes["connection"] = sync
                    head = ScriptDirectory.from_config(config).get_current_head() or "0"
                    number = f"{int(head) + 1:04d}"  # revisions are numbered: 0001, 0002...
                    command.revision(config, message, autogenerate=True, rev_id=number)

                await conn.run_sync(revision)
        finally:
            await store.close()

    asyncio.run(run())


class SqlStore:
    """`hutch.store.base.Store` over SQLite or PostgreSQL, chosen by the URL."""

    def __init__(self, url: str) -> None:
        self.backend, self._url = parse_url(url)
        self._engine: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None  # PostgreSQL's reads
        self._sqlite_reader: sa.Engine | None = None  # SQLite's, run in the event loop
        self._sqlite_writer: sa.Engine | None = None  # SQLite's writes (statements in the loop)
        self._writer_thread: ThreadPoolExecutor | None = None  # its BEGIN and COMMIT
        self._turn: asyncio.Lock | None = None  # SQLite: this process's writers queue here

    @property
    def where(self) -> str:
        """The store's location for messages: host, port and database, never a password
        (nor, for SQLite, the file's path)."""
        if self.backend == "sqlite":
            return "the SQLite store"
        host = self._url.query.get("host") or self._url.host or "localhost"
        if isinstance(host, tuple):
            host = ",".join(host)
        port = f":{self._url.port}" if self._url.port else ""
        return f"the PostgreSQL store at {host}{port} (database {self._url.database})"

    @property
    def engine(self) -> AsyncEngine:
        """The engine for migrations (and PostgreSQL's writes). Unavailable before open()."""
        if self._engine is None:
            raise Unavailable(f"{self.where} is not open")
        return self._engine

    async def open(self) -> None:
        if self._engine is not None:
            return
        if self.backend == "sqlite":
            # Checked first: a failed aiosqlite connect leaves its thread behind.
            directory = Path(self._url.database or "").parent
            if not directory.is_dir():
                raise Unavailable(f"cannot open {self.where}: its directory does not exist")
            self._engine = _sqlite_engine(self._url)
            self._sqlite_reader = _sqlite_reader(self._url)
            self._sqlite_writer = _sqlite_writer(self._url)
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="hutch-store-writer")
            self._turn = asyncio.Lock()
        else:
            self._engine = self._reader = create_async_engine(
                self._url,
                isolation_level="READ COMMITTED",
                pool_pre_ping=True,  # a controller outlives a PostgreSQL restart
                connect_args={"timeout": CONNECT_TIMEOUT},
            )
        try:
            async with (
                _migrating(),
                self._writer_turn(),
                self._engine.connect() as conn,
                conn.begin(),
            ):
                if self.backend == "postgresql":
                    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
                await conn.run_sync(_upgrade)
        except (DBAPIError, OSError, TimeoutError) as e:
            await self.close()
            raise Unavailable(f"cannot open {self.where}: {_reason(e)}") from e
        except CommandError as e:
            # Typically a revision this hutch does not have: a newer hutch migrated the store.
            await self.close()
            raise Unavailable(
                f"cannot open {self.where}: its schema is not one this hutch knows ({e}); "
                "was it upgraded by a newer version?"
            ) from e
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        engines = {e for e in (self._engine, self._reader) if e is not None}
        self._engine = self._reader = None
        for engine in engines:
            await engine.dispose()
        if self._sqlite_reader is not None:
            self._sqlite_reader.dispose()
            self._sqlite_reader = None
        if self._sqlite_writer is not None:
            self._sqlite_writer.dispose()
            self._sqlite_writer = None
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=False)
            self._writer_thread = None

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        if self._sqlite_reader is not None:
            async with self._translated():
                with self._sqlite_reader.connect() as sync, sync.begin():
                    yield SqlTx(_InLoop(sync), self.backend)
            return
        if self._reader is None:
            raise Unavailable(f"{self.where} is not open")
        async with self._translated(), self._reader.connect() as conn:
            if self.backend == "postgresql":
                await conn.execution_options(postgresql_readonly=True)
            async with conn.begin():
                yield SqlTx(conn, self.backend)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        if self._sqlite_writer is not None and self._writer_thread is not None:
            writing = self._sqlite_write(self._sqlite_writer, self._writer_thread)
            async with self._translated(), self._writer_turn(), writing as tx:
                yield tx
            return
        engine = self.engine
        async with self._translated(), self._writer_turn(), engine.connect() as conn, conn.begin():
            yield SqlTx(conn, self.backend)

    @contextlib.asynccontextmanager
    async def _sqlite_write(
        self, engine: sa.Engine, thread: ThreadPoolExecutor
    ) -> AsyncIterator[Tx]:
        """BEGIN IMMEDIATE and COMMIT in the writer's thread, the statements in the loop (see
        the module's docstring); a rollback, which neither waits nor syncs, in the loop too."""

        def begin() -> tuple[Connection, sa.RootTransaction]:
            conn = engine.connect()
            try:
                return conn, conn.begin()
            except BaseException:
                conn.close()
                raise

        def undo(begun: tuple[Connection, sa.RootTransaction]) -> None:
            begun[1].rollback()
            begun[0].close()

        conn, transaction = await _in_thread(thread, begin, undo)
        try:
            try:
                yield SqlTx(_InLoop(conn), self.backend)
            except BaseException:
                transaction.rollback()
                raise
            await _in_thread(thread, transaction.commit)
        finally:
            conn.close()  # back to the pool; nothing is left to roll back

    @contextlib.asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        if self._turn is None:
            yield
            return
        try:
            async with asyncio.timeout(BUSY_TIMEOUT):
                await self._turn.acquire()
        except TimeoutError:
            raise Unavailable(
                f"{self.where} has been busy with other writers for {BUSY_TIMEOUT:.0f} s"
            ) from None
        try:
            yield
        finally:
            self._turn.release()

    @contextlib.asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        """Database failures as hutch's errors; our own errors and bugs pass through."""
        try:
            yield
        except HutchError:
            raise
        except DBAPIError as e:
            raise _translate(e, self.where) from e
        except (OSError, TimeoutError) as e:
            raise Unavailable(f"{self.where} failed: {_reason(e)}") from e


def _sqlite_engine(url: URL) -> AsyncEngine:
    """The migrations' writer: aiosqlite, BEGIN IMMEDIATE (`write()` uses `_sqlite_writer`)."""
    engine = create_async_engine(url)
    _sqlite_setup(engine.sync_engine, write=True)
    return engine


def _sqlite_writer(url: URL) -> sa.Engine:
    """The writer: plain sqlite3, used by one task at a time (the writers' turn), in the loop
    and in the writer's thread in turn (so not bound to a thread)."""
    engine = sa.create_engine(
        url.set(drivername="sqlite"),
        pool_size=1,
        max_overflow=0,
        pool_reset_on_return=None,  # every transaction ends in a commit or a rollback
        connect_args={"check_same_thread": False},
    )
    _sqlite_setup(engine, write=True)
    return engine


async def _in_thread(
    thread: ThreadPoolExecutor, call: Callable[[], T], undo: Callable[[T], None] | None = None
) -> T:
    """`call()` in `thread`. Cancelled meanwhile, it still waits for the call to end, and
    `undo`es what it returned (a BEGIN IMMEDIATE must not be left holding the file's lock)."""
    future = asyncio.get_running_loop().run_in_executor(thread, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait([future])
        if undo is not None and not future.cancelled() and future.exception() is None:
            undo(future.result())
        raise


def _sqlite_reader(url: URL) -> sa.Engine:
    """The reader: plain sqlite3 called from the event loop. In WAL mode a reader never waits
    for a lock, and a read transaction here costs ~0.1 ms against ~1.3 ms for the eight trips
    to aiosqlite's thread the same read takes. The pool never makes a reader wait (that would
    block the loop): it opens another connection instead."""
    engine = sa.create_engine(
        url.set(drivername="sqlite"), pool_size=4, max_overflow=-1, pool_reset_on_return=None
    )
    _sqlite_setup(engine, write=False)
    return engine


def _sqlite_setup(engine: sa.Engine, *, write: bool) -> None:
    # SQLAlchemy's recipe for taking BEGIN away from the sqlite3 driver: with isolation_level
    # None the driver never begins on its own, and the "begin" event emits ours: BEGIN
    # IMMEDIATE for the writer, a deferred BEGIN on query_only connections for readers.
    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if write:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")  # a commit survives a power cut too
        else:
            cursor.execute("PRAGMA query_only = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class _InLoop:
    """A sync connection with the few AsyncConnection methods the repositories use: statements
    that never wait for a lock, run in the event loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(
        self, statement: sa.Executable, parameters: Any = None, /
    ) -> sa.CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    @contextlib.asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        with self._conn.begin_nested():  # a savepoint: readers' query_only connections refuse it
            yield


_MIGRATING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _migrating() -> asyncio.Lock:
    """One migration at a time in this event loop: Alembic keeps its context in a global."""
    loop = asyncio.get_running_loop()
    lock = _MIGRATING.get(loop)
    if lock is None:
        lock = _MIGRATING[loop] = asyncio.Lock()
    return lock


def _upgrade(conn: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _reason(e: BaseException) -> str:
    if isinstance(e, DBAPIError) and e.orig is not None:
        e = e.orig
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _translate(e: DBAPIError, where: str) -> Exception:
    sqlstate = getattr(e.orig, "sqlstate", None)
    errorname = getattr(e.orig, "sqlite_errorname", None)
    if sqlstate == _READ_ONLY or errorname == "SQLITE_READONLY":
        return RuntimeError("a write inside store.read(): use store.write()")
    if errorname == "SQLITE_BUSY":
        return Unavailable(f"{where} stayed locked by another writer for {BUSY_TIMEOUT:.0f} s")
    if sqlstate in _RETRYABLE:
        return Conflict(
            "the transaction collided with a concurrent one (deadlock or serialization "
            "failure) and was rolled back: retry it"
        )
    if isinstance(e, IntegrityError):
        return Conflict("the change conflicts with what is stored, so it was not made")
    if e.connection_invalidated or isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError):
        return Unavailable(f"{where} failed: {_reason(e)}")
    return e


# -- repositories ---------------------------------------------------------------------------------


class _Conn(Protocol):
    """What repositories need of a connection: AsyncConnection, or _InLoop on SQLite."""

    async def execute(
        self, statement: sa.Executable, parameters: Any = None, /
    ) -> sa.CursorResult[Any]: ...

    def begin_nested(self) -> Any: ...


class _Repo:
    def __init__(self, conn: _Conn, backend: Backend) -> None:
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

    async def _lock_row(
        self, table: sa.Table, row_id: str, what: str, *, key: bool = False
    ) -> None:
        """Hold the row until the transaction ends; NotFound if it is not there. `key`: also
        keep out inserts that reference it (FOR UPDATE), as before deleting it."""
        stmt = sa.select(table.c.id).where(table.c.id == row_id)
        if self._pg:
            stmt = stmt.with_for_update(key_share=not key)
        if await self._one(stmt) is None:
            raise NotFound(f"{what} {row_id!r} not found")


class _Projects(_Repo):
    async def create(self, project: Project) -> None:
        if await self._insert(t.projects, {**_quota_values(project.quota), **_project(project)}):
            return
        if await self._exists(t.projects, t.projects.c.name == project.name):
            raise Conflict(f"a project named {project.name!r} already exists")
        raise Conflict(f"a project with id {project.id!r} already exists")

    async def get(self, project_id: str) -> Project:
        row = await self._one(sa.select(t.projects).where(t.projects.c.id == project_id))
        if row is None:
            raise NotFound(f"project {project_id!r} not found")
        return _to_project(row)

    async def by_name(self, name: str) -> Project:
        row = await self._one(sa.select(t.projects).where(t.projects.c.name == name))
        if row is None:
            raise NotFound(f"project {name!r} not found")
        return _to_project(row)

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
        row = (await self._c.execute(stmt)).first()
        if row is None:
            raise NotFound(f"project {project_id!r} not found")
        return _to_project(row)

    async def set_strategy(self, project_id: str, strategy: Strategy) -> Project:
        stmt = (
            sa.update(t.projects)
            .where(t.projects.c.id == project_id)
            .values(strategy=strategy.value)
            .returning(*t.projects.c)
        )
        row = (await self._c.execute(stmt)).first()
        if row is None:
            raise NotFound(f"project {project_id!r} not found")
        return _to_project(row)

    async def delete(self, project_id: str) -> None:
        """Conflict while it has machines that are not destroyed; otherwise its destroyed
        machines, tokens and events go with it. (Images live in the nodes' image stores: the
        caller checks those.)"""
        # FOR UPDATE, not the usual lock: machines being created in the project (their foreign
        # key takes a share of this row) must finish first, so that the count below sees them.
        await self._lock_row(t.projects, project_id, "project", key=True)
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
        for table in (t.events, t.machines, t.tokens):
            await self._c.execute(sa.delete(table).where(table.c.project_id == project_id))
        await self._c.execute(sa.delete(t.projects).where(t.projects.c.id == project_id))

    async def lock(self, project_id: str) -> None:
        await self._lock_row(t.projects, project_id, "project")


class _Tokens(_Repo):
    async def create(self, token: Token, secret_hash: str) -> None:
        values = {
            "id": token.id,
            "name": token.name,
            "project_id": token.project_id,
            "role": token.role.value,
            "system": token.system,
            "created_at": token.created_at,
            "expires_at": token.expires_at,
            "revoked_at": token.revoked_at,
            "secret_hash": secret_hash,
        }
        if await self._insert(t.tokens, values):
            return
        if token.project_id is not None and not await self._exists(
            t.projects, t.projects.c.id == token.project_id
        ):
            raise NotFound(f"project {token.project_id!r} not found")
        if await self._exists(t.tokens, t.tokens.c.secret_hash == secret_hash):
            raise Conflict("a token with that secret already exists")
        raise Conflict(f"a token with id {token.id!r} already exists")

    async def by_hash(self, secret_hash: str) -> Token | None:
        row = await self._one(sa.select(t.tokens).where(t.tokens.c.secret_hash == secret_hash))
        return None if row is None else _to_token(row)

    async def get(self, token_id: str) -> Token:
        row = await self._one(sa.select(t.tokens).where(t.tokens.c.id == token_id))
        if row is None:
            raise NotFound(f"token {token_id!r} not found")
        return _to_token(row)

    async def list(self, project_id: str | None) -> list[Token]:
        where = (
            t.tokens.c.project_id.is_(None)
            if project_id is None
            else t.tokens.c.project_id == project_id
        )
        stmt = sa.select(t.tokens).where(where).order_by(t.tokens.c.created_at, t.tokens.c.id)
        return [_to_token(r) for r in await self._c.execute(stmt)]

    async def usable(
        self, token_ids: Sequence[str], project_ids: Sequence[str], now: float
    ) -> tuple[set[str], set[str]]:
        tok, prj = t.tokens.c, t.projects.c
        tokens = sa.select(sa.literal("t").label("kind"), tok.id).where(
            tok.id.in_(token_ids),
            tok.revoked_at.is_(None),
            sa.or_(tok.expires_at.is_(None), tok.expires_at > now),
        )
        projects = sa.select(sa.literal("p").label("kind"), prj.id).where(prj.id.in_(project_ids))
        rows: Sequence[Any] = (await self._c.execute(sa.union_all(tokens, projects))).all()
        return {r[1] for r in rows if r[0] == "t"}, {r[1] for r in rows if r[0] == "p"}

    async def revoke(self, token_id: str, at: float) -> Token:
        """Revoked from `at`; revoking again keeps the first time."""
        stmt = (
            sa.update(t.tokens)
            .where(t.tokens.c.id == token_id)
            .values(revoked_at=sa.func.coalesce(t.tokens.c.revoked_at, at))
            .returning(*t.tokens.c)
        )
        row = (await self._c.execute(stmt)).first()
        if row is None:
            raise NotFound(f"token {token_id!r} not found")
        return _to_token(row)


class _Machines(_Repo):
    async def create(self, machine: Machine) -> None:
        values = {
            "id": machine.id,
            "project_id": machine.project_id,
            "created_at": machine.created_at,
            "version": machine.version,
            **_machine_values(machine),
        }
        if await self._insert(t.machines, values):
            return
        m = t.machines
        if not await self._exists(t.projects, t.projects.c.id == machine.project_id):
            raise NotFound(f"project {machine.project_id!r} not found")
        if await self._exists(m, m.c.id == machine.id):
            raise Conflict(f"a machine with id {machine.id!r} already exists")
        await self._refused(machine)

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
        m = t.machines
        # An id wins over a name; among machines of that name, the live one, else the newest.
        stmt = (
            sa.select(m)
            .where(m.c.project_id == project_id, sa.or_(m.c.id == ref, m.c.name == ref))
            .order_by(
                sa.case((m.c.id == ref, 0), else_=1),
                sa.case((t.LIVE, 0), else_=1),
                m.c.created_at.desc(),
            )
            .limit(1)
        )
        row = await self._one(stmt)
        if row is None:
            raise NotFound(f"machine {ref!r} not found")
        return _to_machine(row)

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
        if limit < 1:
            raise Invalid("limit must be at least 1")
        limit = min(limit, MAX_PAGE)
        m = t.machines
        stmt = sa.select(m).where(m.c.project_id == project_id)
        if states:
            stmt = stmt.where(m.c.state.in_([MachineState(s).value for s in states]))
        for key, value in (labels or {}).items():
            stmt = stmt.where(m.c.labels[key].as_string() == value)
        if cursor is not None:
            after_time, after_id = _decode_cursor(cursor)
            stmt = stmt.where(
                sa.or_(
                    m.c.created_at > after_time,
                    sa.and_(m.c.created_at == after_time, m.c.id > after_id),
                )
            )
        stmt = stmt.order_by(m.c.created_at, m.c.id).limit(limit + 1)
        rows = list(await self._c.execute(stmt))
        page = [_to_machine(r) for r in rows[:limit]]
        more = len(rows) > limit
        return page, _encode_cursor(page[-1].created_at, page[-1].id) if more else None

    async def update(self, machine: Machine) -> Machine:
        m = t.machines
        stmt = (
            sa.update(m)
            .where(
                m.c.id == machine.id,
                m.c.project_id == machine.project_id,
                m.c.version == machine.version,
            )
            .values(**_machine_values(machine), version=machine.version + 1)
            .returning(*m.c)
        )
        try:
            async with self._c.begin_nested():
                row = (await self._c.execute(stmt)).first()
        except IntegrityError:
            await self._refused(machine)
            raise  # not reached: _refused always raises
        if row is not None:
            return _to_machine(row)
        if await self._exists(m, m.c.id == machine.id, m.c.project_id == machine.project_id):
            raise Conflict(
                f"machine {machine.name!r} was changed by someone else since version "
                f"{machine.version}: read it again and retry"
            )
        raise NotFound(f"machine {machine.id!r} not found")

    async def usage(self, project_id: str) -> Usage:
        m = t.machines
        stmt = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(m.c.cpus), 0),
            sa.func.coalesce(sa.func.sum(m.c.memory_mib), 0),
            sa.func.coalesce(sa.func.sum(m.c.scratch_mib), 0),
        ).where(
            m.c.project_id == project_id,
            m.c.state.in_([s.value for s in ACTIVE]),
            # Created not to start (or stopped before placement): it will hold nothing until a
            # start, which checks the quota again.
            sa.or_(m.c.node_id.is_not(None), m.c.desired == Desired.RUNNING.value),
        )
        count, vcpus, memory_mib, disk_mib = tuple((await self._c.execute(stmt)).one())
        return Usage(machines=count, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib)

    async def on_node(self, node_id: str) -> builtins.list[Machine]:
        m = t.machines
        stmt = sa.select(m).where(m.c.node_id == node_id, t.LIVE).order_by(m.c.created_at, m.c.id)
        return [_to_machine(r) for r in await self._c.execute(stmt)]

    async def by_id(self, machine_id: str) -> Machine:
        row = await self._one(sa.select(t.machines).where(t.machines.c.id == machine_id))
        if row is None:
            raise NotFound(f"machine {machine_id!r} not found")
        return _to_machine(row)

    async def pending(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> builtins.list[Machine]:
        """Machines waiting for a node, oldest first, from after (created_at, id). On
        PostgreSQL they stay locked to this transaction (and skipped by another's), so nobody
        changes them under the scheduler."""
        m = t.machines
        stmt = sa.select(m).where(t.PENDING)
        if after is not None:
            stmt = stmt.where(sa.tuple_(m.c.created_at, m.c.id) > sa.tuple_(*after))
        stmt = stmt.order_by(m.c.created_at, m.c.id).limit(limit)
        if self._pg:
            stmt = stmt.with_for_update(skip_locked=True)
        return [_to_machine(r) for r in await self._c.execute(stmt)]

    async def place(self, placed: Sequence[tuple[str, str]], at: float) -> None:
        """Give pending machines their node: (machine id, node id) pairs, in one statement."""
        if not placed:
            return
        m = t.machines
        stmt = (
            sa.update(m)
            .where(m.c.id == sa.bindparam("machine"), m.c.node_id.is_(None))
            .values(node_id=sa.bindparam("node"), error="", updated_at=at, version=m.c.version + 1)
        )
        rows = [{"machine": machine, "node": node} for machine, node in placed]
        await self._c.execute(stmt, rows)

    async def group_members(
        self, project_id: str, groups: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """Where each group's active machines are: group -> node id -> how many."""
        m = t.machines
        found: dict[str, dict[str, int]] = {g: {} for g in groups}
        if not groups:
            return found
        stmt = (
            sa.select(m.c.group_name, m.c.node_id, sa.func.count())
            .where(
                m.c.project_id == project_id,
                m.c.group_name.in_(sorted(set(groups))),
                m.c.node_id.is_not(None),
                m.c.state.in_([s.value for s in ACTIVE]),
                m.c.desired != Desired.DESTROYED.value,
            )
            .group_by(m.c.group_name, m.c.node_id)
        )
        rows: list[tuple[Any, ...]] = [tuple(row) for row in await self._c.execute(stmt)]
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

    async def purge(self, project_id: str, machine_id: str) -> None:
        """Conflict unless the machine is destroyed."""
        m = t.machines
        mine = (m.c.id == machine_id, m.c.project_id == project_id)
        result = await self._c.execute(sa.delete(m).where(*mine, sa.not_(t.LIVE)))
        if result.rowcount:
            return
        if await self._exists(m, *mine):
            raise Conflict(f"machine {machine_id!r} is not destroyed: destroy it first")
        raise NotFound(f"machine {machine_id!r} not found")


class _Nodes(_Repo):
    async def create(self, node: Node, credential_hash: str) -> None:
        values = {
            "id": node.id,
            "created_at": node.created_at,
            "version": node.version,
            "revision": 0,
            "credential_hash": credential_hash,
            **_node_values(node),
            **_allocation(node.allocated),
        }
        if await self._insert(t.nodes, values):
            return
        n = t.nodes
        if await self._exists(n, n.c.name == node.name):
            raise Conflict(f"a node named {node.name!r} already exists")
        if await self._exists(n, n.c.credential_hash == credential_hash):
            raise Conflict("a node with that credential already exists")
        raise Conflict(f"a node with id {node.id!r} already exists")

    async def get(self, node_id: str) -> Node:
        row = await self._one(sa.select(t.nodes).where(t.nodes.c.id == node_id))
        if row is None:
            raise NotFound(f"node {node_id!r} not found")
        return _to_node(row)

    async def by_credential(self, credential_hash: str) -> Node | None:
        row = await self._one(
            sa.select(t.nodes).where(t.nodes.c.credential_hash == credential_hash)
        )
        return None if row is None else _to_node(row)

    async def list(self) -> list[Node]:
        return [
            _to_node(r) for r in await self._c.execute(sa.select(t.nodes).order_by(t.nodes.c.name))
        ]

    async def update(self, node: Node) -> Node:
        n = t.nodes
        stmt = (
            sa.update(n)
            .where(n.c.id == node.id, n.c.version == node.version)
            .values(**_node_values(node), version=node.version + 1)
            .returning(*n.c)
        )
        try:
            async with self._c.begin_nested():
                row = (await self._c.execute(stmt)).first()
        except IntegrityError:
            raise Conflict(f"a node named {node.name!r} already exists") from None
        if row is not None:
            return _to_node(row)
        if await self._exists(n, n.c.id == node.id):
            raise Conflict(
                f"node {node.name!r} was changed by someone else since version {node.version}: "
                "read it again and retry"
            )
        raise NotFound(f"node {node.id!r} not found")

    async def lock(self, node_id: str) -> None:
        await self._lock_row(t.nodes, node_id, "node")

    async def delete(self, node_id: str) -> None:
        await self._lock_row(t.nodes, node_id, "node", key=True)
        m = t.machines
        on_it = m.c.node_id == node_id
        live = (await self._c.execute(sa.select(sa.func.count()).where(on_it, t.LIVE))).scalar_one()
        if live:
            raise Conflict(f"node {node_id!r} still has {live} machine(s): drain it first")
        await self._c.execute(sa.update(m).where(on_it).values(node_id=None))  # history stays
        await self._c.execute(sa.delete(t.nodes).where(t.nodes.c.id == node_id))

    async def claim(self, claims: Sequence[Claim]) -> builtins.set[str]:
        """Add each claim's `want` to its node's allocation where the sum stays within its
        `limit`, all in one conditional statement: two claims never overbook a node, whoever
        makes them. The ids of the nodes claimed. The claims travel as one JSON parameter, so
        the statement is the same (prepared once) for a page of any size."""
        if not claims:
            return set()
        rows = [
            {"id": c.node_id, "cpus": c.want.cpus, "memory": c.want.memory_mib,
             "disk": c.want.disk_mib, "max_cpus": c.limit.cpus,
             "max_memory": c.limit.memory_mib, "max_disk": c.limit.disk_mib}
            for c in claims
        ]  # fmt: skip
        stmt = _CLAIM_PG if self._pg else _CLAIM_SQLITE
        result = await self._c.execute(stmt, {"claims": json.dumps(rows)})
        return {str(row[0]) for row in result}

    async def release(self, node_id: str, want: Capacity) -> None:
        """Take `want` off the node's allocation (never below zero)."""
        n = t.nodes

        def less(column: sa.Column[int], amount: int) -> sa.ColumnElement[int]:
            return sa.case((column > amount, column - amount), else_=0)

        await self._c.execute(
            sa.update(n)
            .where(n.c.id == node_id)
            .values(
                allocated_cpus=less(n.c.allocated_cpus, want.cpus),
                allocated_memory_mib=less(n.c.allocated_memory_mib, want.memory_mib),
                allocated_disk_mib=less(n.c.allocated_disk_mib, want.disk_mib),
            )
        )

    async def bump_revisions(self, node_ids: Sequence[str]) -> None:
        if node_ids:
            n = t.nodes
            await self._c.execute(
                sa.update(n)
                .where(n.c.id.in_(sorted(set(node_ids))))
                .values(revision=n.c.revision + 1)
            )

    async def bump_revision(self, node_id: str) -> int:
        n = t.nodes
        stmt = (
            sa.update(n)
            .where(n.c.id == node_id)
            .values(revision=n.c.revision + 1)
            .returning(n.c.revision)
        )
        row = (await self._c.execute(stmt)).first()
        if row is None:
            raise NotFound(f"node {node_id!r} not found")
        revision: int = row[0]
        return revision

    async def revision(self, node_id: str) -> int:
        row = await self._one(sa.select(t.nodes.c.revision).where(t.nodes.c.id == node_id))
        if row is None:
            raise NotFound(f"node {node_id!r} not found")
        revision: int = row[0]
        return revision


class _Events(_Repo):
    async def append(
        self, project_id: str, *, kind: str, object_id: str, state: str, message: str, time: float
    ) -> Event:
        seq = await self._number(project_id, 1)
        values = {"project_id": project_id, "kind": kind, "object_id": object_id, "state": state,
                  "message": message, "time": time, "seq": seq}  # fmt: skip
        await self._c.execute(t.events.insert().values(**values))
        return Event(seq, project_id, kind, object_id, state, message, time)

    async def append_many(self, events: Sequence[NewEvent]) -> None:
        """Many events in one statement (the scheduler's batches), in the order given."""
        if not events:
            return
        counts: dict[str, int] = {}
        for e in events:
            counts[e.project_id] = counts.get(e.project_id, 0) + 1
        following = {p: await self._number(p, counts[p]) for p in sorted(counts)}
        rows = []
        for e in events:
            rows.append({**e._asdict(), "seq": following[e.project_id]})
            following[e.project_id] += 1
        await self._c.execute(t.events.insert(), rows)

    async def _number(self, project_id: str, n: int) -> int:
        """Take the project's next `n` event numbers: the first. The update holds the project's
        row until the transaction ends, so a project's events are numbered in commit order,
        whichever controller writes them (see the module's docstring); NotFound if it is gone."""
        p = t.projects
        stmt = (
            sa.update(p)
            .where(p.c.id == project_id)
            .values(event_seq=p.c.event_seq + n)
            .returning(p.c.event_seq)
        )
        last = (await self._c.execute(stmt)).scalar_one_or_none()
        if last is None:
            raise NotFound(f"project {project_id!r} not found")
        return int(last) - n + 1

    async def last(self, project_id: str) -> int:
        p = t.projects
        row = await self._one(sa.select(p.c.event_seq).where(p.c.id == project_id))
        if row is None:
            raise NotFound(f"project {project_id!r} not found")
        return int(row[0])

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
        return [
            Event(
                id=r.seq,
                project_id=r.project_id,
                kind=r.kind,
                object_id=r.object_id,
                state=r.state,
                message=r.message,
                time=r.time,
            )
            for r in await self._c.execute(stmt)
        ]


class _Leases(_Repo):
    async def acquire(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        """Hold (or renew) the lease until now + ttl if it is free, expired or already the
        holder's: its term (bumped when the holder changes). None: someone else holds it."""
        lease = t.leases
        stmt = (
            sa.update(lease)
            .where(
                lease.c.name == name,
                sa.or_(lease.c.holder == holder, lease.c.expires_at < now),
            )
            .values(
                holder=holder,
                expires_at=now + ttl,
                term=sa.case((lease.c.holder == holder, lease.c.term), else_=lease.c.term + 1),
            )
            .returning(lease.c.term)
        )
        row = (await self._c.execute(stmt)).first()
        if row is not None:
            term: int = row[0]
            return term
        values = {"name": name, "holder": holder, "term": 1, "expires_at": now + ttl}
        return 1 if await self._insert(lease, values) else None

    async def release(self, name: str, holder: str) -> None:
        lease = t.leases
        await self._c.execute(
            sa.update(lease)
            .where(lease.c.name == name, lease.c.holder == holder)
            .values(expires_at=0.0)
        )

    async def holder(self, name: str, now: float) -> tuple[str, int] | None:
        """(holder, term) of an unexpired lease."""
        lease = t.leases
        row = await self._one(
            sa.select(lease.c.holder, lease.c.term).where(
                lease.c.name == name, lease.c.expires_at >= now
            )
        )
        if row is None:
            return None
        holder, term = tuple(row)
        return str(holder), int(term)


class SqlTx:
    """One transaction's repositories (`hutch.store.base.Tx`)."""

    def __init__(self, conn: _Conn, backend: Backend) -> None:
        self.projects: ProjectRepo = _Projects(conn, backend)
        self.tokens: TokenRepo = _Tokens(conn, backend)
        self.machines: MachineRepo = _Machines(conn, backend)
        self.nodes: NodeRepo = _Nodes(conn, backend)
        self.events: EventRepo = _Events(conn, backend)
        self.leases: LeaseRepo = _Leases(conn, backend)


# -- rows <-> model -------------------------------------------------------------------------------


def _project(p: Project) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "created_at": p.created_at, "strategy": p.strategy.value}


def _quota_values(q: Quota) -> dict[str, Any]:
    return {
        "quota_machines": q.machines,
        "quota_vcpus": q.vcpus,
        "quota_memory_mib": q.memory_mib,
        "quota_disk_mib": q.disk_mib,
        "quota_images_mib": q.images_mib,
        "quota_images_unpacked_mib": q.images_unpacked_mib,
    }


def _to_project(r: Row[Any]) -> Project:
    return Project(
        id=r.id,
        name=r.name,
        created_at=r.created_at,
        quota=Quota(
            machines=r.quota_machines,
            vcpus=r.quota_vcpus,
            memory_mib=r.quota_memory_mib,
            disk_mib=r.quota_disk_mib,
            images_mib=r.quota_images_mib,
            images_unpacked_mib=r.quota_images_unpacked_mib,
        ),
        strategy=Strategy(r.strategy),
    )


def _to_token(r: Row[Any]) -> Token:
    return Token(
        id=r.id,
        name=r.name,
        project_id=r.project_id,
        role=Role(r.role),
        system=r.system,
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
    )


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
    }


def _to_machine(r: Row[Any]) -> Machine:
    spec = MachineSpec(
        image=r.image,
        command=None if r.command is None else tuple(r.command),
        entrypoint=None if r.entrypoint is None else tuple(r.entrypoint),
        env=tuple(r.env),
        workdir=r.workdir,
        user=r.user_spec,
        cpus=r.cpus,
        memory_mib=r.memory_mib,
        disk_mib=r.disk_mib,
        runtime=r.runtime,
        restart=RestartPolicy(r.restart),
        labels=dict(r.labels),
        auto_destroy=r.auto_destroy,
        group=r.group_name,
        group_policy=GroupPolicy(r.group_policy),
        constraints=dict(r.constraints),
        strategy=None if r.strategy is None else Strategy(r.strategy),
        tty=r.tty,
        stdin=r.stdin,
        rows=r.tty_rows,
        cols=r.tty_cols,
    )
    return Machine(
        id=r.id,
        project_id=r.project_id,
        name=r.name,
        spec=spec,
        state=MachineState(r.state),
        desired=Desired(r.desired),
        created_at=r.created_at,
        updated_at=r.updated_at,
        node_id=r.node_id,
        generation=r.generation,
        exit_code=r.exit_code,
        error=r.error,
        oom_killed=r.oom_killed,
        restarts=r.restarts,
        started_at=r.started_at,
        finished_at=r.finished_at,
        stop_signal=r.stop_signal,
        stop_timeout=r.stop_timeout,
        start_after=r.start_after,
        image_digest=r.image_digest,
        image_source=r.image_source,
        version=r.version,
    )


_CLAIM_SET = """
    allocated_cpus = n.allocated_cpus + w.cpus,
    allocated_memory_mib = n.allocated_memory_mib + w.memory,
    allocated_disk_mib = n.allocated_disk_mib + w.disk
"""
_CLAIM_WHERE = """
    n.id = w.id
    AND n.allocated_cpus + w.cpus <= w.max_cpus
    AND n.allocated_memory_mib + w.memory <= w.max_memory
    AND n.allocated_disk_mib + w.disk <= w.max_disk
"""
_CLAIM_COLUMNS = ("id", "cpus", "memory", "disk", "max_cpus", "max_memory", "max_disk")
_CLAIM_PG = sa.text(
    f"UPDATE nodes AS n SET {_CLAIM_SET} FROM jsonb_to_recordset(CAST(:claims AS jsonb)) AS w("
    + ", ".join(f"{c} {'text' if c == 'id' else 'int'}" for c in _CLAIM_COLUMNS)
    + f") WHERE {_CLAIM_WHERE} RETURNING n.id"
)
_CLAIM_SQLITE = sa.text(
    "WITH w AS (SELECT "
    + ", ".join(f"value ->> '$.{c}' AS {c}" for c in _CLAIM_COLUMNS)
    + f" FROM json_each(:claims)) UPDATE nodes AS n SET {_CLAIM_SET} FROM w WHERE {_CLAIM_WHERE}"
    " RETURNING id"  # SQLite's RETURNING names the updated table's columns only, unqualified
)


def _node_values(n: Node) -> dict[str, Any]:
    """The columns an update writes: everything but id, creation time, version, revision, the
    credential, and the allocation (only claim() and release() change it, as increments)."""
    return {
        "name": n.name,
        "address": n.address,
        "runtimes": list(n.runtimes),
        "accel": n.accel,
        "capacity_cpus": n.capacity.cpus,
        "capacity_memory_mib": n.capacity.memory_mib,
        "capacity_disk_mib": n.capacity.disk_mib,
        "overhead_mib": dict(n.overhead_mib),
        "labels": dict(n.labels),
        "state": n.state.value,
        "last_seen": n.last_seen,
        "domain": n.domain,
        "cordoned": n.cordoned,
    }


def _allocation(a: Capacity) -> dict[str, int]:
    return {
        "allocated_cpus": a.cpus,
        "allocated_memory_mib": a.memory_mib,
        "allocated_disk_mib": a.disk_mib,
    }


def _to_node(r: Row[Any]) -> Node:
    return Node(
        id=r.id,
        name=r.name,
        address=r.address,
        runtimes=tuple(r.runtimes),
        accel=r.accel,
        capacity=Capacity(r.capacity_cpus, r.capacity_memory_mib, r.capacity_disk_mib),
        allocated=Capacity(r.allocated_cpus, r.allocated_memory_mib, r.allocated_disk_mib),
        overhead_mib=dict(r.overhead_mib),
        labels=dict(r.labels),
        state=NodeState(r.state),
        created_at=r.created_at,
        last_seen=r.last_seen,
        domain=r.domain,
        cordoned=r.cordoned,
        version=r.version,
    )


def _encode_cursor(created_at: float, machine_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, machine_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, machine_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, TypeError, UnicodeError):
        created_at = machine_id = None
    if not isinstance(created_at, int | float) or not isinstance(machine_id, str):
        raise Invalid("the cursor is not one this store handed out")
    return float(created_at), machine_id
