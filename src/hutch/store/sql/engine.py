"""The store's engine and transactions: SQLite (a writer thread, statements in the event loop)
or PostgreSQL (asyncpg), over SQLAlchemy's Core; the repositories live one module per aggregate.

Transactions. On SQLite, a write transaction starts with BEGIN IMMEDIATE, so there is one
writer at a time across every process using the file, and what a writer reads cannot change
under it: that is what makes a quota check race-free there. Writers of one process commit in
groups (`_Batch`): the `write()` blocks that come while a transaction begins or commits form the
next one, and run in it one after another, each in a savepoint of its own; one COMMIT (one
fsync) ends them all, and each block returns only once that COMMIT has. A block that fails
rolls back its savepoint alone, and the others of its batch go on; a COMMIT that fails fails
every block of the batch. Batches of one process take their turn in an asyncio lock, so they
queue in order instead of polling SQLite's busy handler; writers of other processes wait in
that handler (`BUSY_TIMEOUT`). `read()` is a deferred BEGIN on a connection that cannot write
(query_only); in WAL mode readers never block writers nor wait for them.
Both run their statements on plain sqlite3 in the event loop: a reader never waits for a lock,
and neither does a writer once its BEGIN IMMEDIATE holds the file's. Only what may wait goes to
the writer's own thread: the BEGIN IMMEDIATE (another process may hold the lock) and the COMMIT
(its fsync, and the WAL checkpoint). So a batch is two passes of the event loop, whatever it
does, instead of about four per statement through aiosqlite's thread; under load, when every
pass also carries the streams' turns (`hutch.http.fair`), that decides how long a create takes.
A write is acknowledged only once its COMMIT has returned, with the durability of one alone
(WAL, synchronous FULL).
On PostgreSQL, transactions are READ COMMITTED; `projects.lock()` and `nodes.lock()` take the row
(FOR NO KEY UPDATE: it excludes the other lockers, but not the inserts of rows that merely
reference it), and `read()` transactions are READ ONLY. A deadlock or serialization failure ends
the transaction as Conflict; the caller decides whether to retry the whole block.

Do not nest `write()` blocks of one store: the inner one waits for the outer, and gives up after
BUSY_TIMEOUT as Unavailable.

Schema. `open()` runs the Alembic migrations (`migrations/`) up to head, inside one transaction
holding an advisory lock on PostgreSQL and the write lock on SQLite, so controllers that start
together migrate once.
"""

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hutch.model.errors import Conflict, HutchError, Invalid, Unavailable
from hutch.store.base import (
    BillingRepo,
    EventRepo,
    LeaseRepo,
    MachineRepo,
    MetricRepo,
    NetworkRepo,
    NodeRepo,
    PoolRepo,
    ProjectRepo,
    SecurityGroupRepo,
    SessionRepo,
    SnapshotRepo,
    TokenRepo,
    Tx,
    UsageRepo,
    VolumeRepo,
)
from hutch.store.sql.billing import SqlBilling
from hutch.store.sql.events import SqlEvents
from hutch.store.sql.leases import SqlLeases
from hutch.store.sql.machines import SqlMachines
from hutch.store.sql.metrics import SqlMetrics
from hutch.store.sql.networks import SqlNetworks, SqlSecurityGroups
from hutch.store.sql.nodes import SqlNodes
from hutch.store.sql.pools import SqlPools
from hutch.store.sql.projects import SqlProjects
from hutch.store.sql.repo import Backend, Conn
from hutch.store.sql.sessions import SqlSessions
from hutch.store.sql.snapshots import SqlSnapshots
from hutch.store.sql.tokens import SqlTokens
from hutch.store.sql.usage import SqlUsage
from hutch.store.sql.volumes import SqlVolumes

MIGRATIONS = Path(__file__).parent.parent / "migrations"
BUSY_TIMEOUT = 30.0  # seconds a writer waits for the SQLite file before giving up
MAX_BATCH = 64  # SQLite: write blocks committed together at most (so the first is not kept)
CONNECT_TIMEOUT = 10.0  # seconds to reach PostgreSQL
_MIGRATION_LOCK = 0x6875_7463_6D69_6772  # PostgreSQL advisory lock key ("hutcmigr")
_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_READ_ONLY = "25006"  # PostgreSQL: a write in a READ ONLY transaction

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
        self._turn: asyncio.Lock | None = None  # SQLite: one batch (or migration) at a time
        self._forming: _Batch | None = None  # SQLite: the batch that new writers join
        self._revisions: Callable[[frozenset[str]], None] | None = None  # watch_revisions

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
                **_JSON,
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
            async with self._translated(), self._grouped() as (sqlite_tx, batch):
                yield sqlite_tx
            await batch.committed()
            self._committed(sqlite_tx)
            return
        engine = self.engine
        async with self._translated(), self._writer_turn(), engine.connect() as conn, conn.begin():
            tx = SqlTx(conn, self.backend)
            yield tx
        self._committed(tx)

    def watch_revisions(self, listener: Callable[[frozenset[str]], None]) -> None:
        """`listener` is told, after each write commits, the nodes whose revisions it bumped
        (`NodeRepo.bump_revisions`): the long polls of this process wake at once."""
        self._revisions = listener

    def _committed(self, tx: "SqlTx") -> None:
        if tx.bumped and self._revisions is not None:
            self._revisions(frozenset(tx.bumped))

    @contextlib.asynccontextmanager
    async def _grouped(self) -> AsyncIterator[tuple["SqlTx", "_Batch"]]:
        """A turn in the batch now forming (group commit, see the module's docstring): the
        block runs in a savepoint of the batch's transaction, after the blocks before it. The
        caller awaits `batch.committed()` before it says the write is done."""
        batch = self._forming
        if batch is None or len(batch.turns) >= MAX_BATCH:
            batch = self._forming = _Batch()
        turn = batch.queue()
        try:
            async with asyncio.timeout(BUSY_TIMEOUT):
                await turn
        except BaseException as e:
            if turn.done() and not turn.cancelled():  # it came as this task was cancelled
                self._pass_on(batch)
            if isinstance(e, TimeoutError):
                raise Unavailable(self._busy) from None
            raise
        try:
            if batch.broken:
                raise Unavailable(batch.broken)
            if batch.conn is None:
                await self._begin(batch)
            assert batch.conn is not None
            savepoint = batch.conn.begin_nested()
            try:
                yield SqlTx(_InLoop(batch.conn), self.backend), batch
            except BaseException:
                self._undo(batch, savepoint.rollback)  # this block's writes only
                raise
            self._undo(batch, savepoint.commit)
            if batch.broken:
                raise Unavailable(batch.broken)
        finally:
            self._pass_on(batch)

    @property
    def _busy(self) -> str:
        return f"{self.where} has been busy with other writers for {BUSY_TIMEOUT:.0f} s"

    async def _begin(self, batch: "_Batch") -> None:
        """The batch's BEGIN IMMEDIATE, in the writer's thread, once this process's previous
        batch has ended. Failing (not cancelled), it breaks the batch: its blocks fail alike."""
        assert self._turn is not None and self._sqlite_writer is not None
        assert self._writer_thread is not None
        engine, thread = self._sqlite_writer, self._writer_thread

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

        try:
            async with asyncio.timeout(BUSY_TIMEOUT):
                await self._turn.acquire()
        except TimeoutError:
            batch.broken = self._busy
            raise Unavailable(batch.broken) from None
        try:
            begun = await _in_thread(thread, begin, undo)
        except BaseException as e:
            self._turn.release()
            if isinstance(e, DBAPIError | OSError):
                batch.broken = str(_translate(e, self.where) if isinstance(e, DBAPIError) else e)
            raise
        batch.conn, batch.transaction = begun

    def _undo(self, batch: "_Batch", end: Callable[[], None]) -> None:
        """A block's savepoint released or rolled back; if SQLite cannot (it may have rolled
        the whole transaction back, as on a full disk), the batch is broken."""
        try:
            end()
        except DBAPIError as e:
            batch.broken = f"{self.where} failed: {_reason(e)}"

    def _pass_on(self, batch: "_Batch") -> None:
        """The next turn of the batch; after the last, its end: COMMIT (or, broken, ROLLBACK)
        in a task of its own, so that no caller's cancellation stops it half way."""
        if batch.next_turn():
            return
        if self._forming is batch:
            self._forming = None  # who comes now forms the next batch, begun after this one
        if batch.conn is None:  # never begun: every block failed or went before its turn
            batch.end(Unavailable(batch.broken or f"{self.where}: no block was written"))
            return
        assert self._turn is not None and self._writer_thread is not None
        batch.ending = asyncio.create_task(self._end(batch, self._turn, self._writer_thread))

    async def _end(self, batch: "_Batch", turn: asyncio.Lock, thread: ThreadPoolExecutor) -> None:
        assert batch.conn is not None and batch.transaction is not None
        conn, transaction = batch.conn, batch.transaction
        try:
            if batch.broken:
                with contextlib.suppress(DBAPIError):  # SQLite may have rolled it back itself
                    transaction.rollback()  # neither waits nor syncs: in the loop
                batch.end(Unavailable(batch.broken))
                return
            try:
                async with self._translated():
                    await _in_thread(thread, transaction.commit)
            except Exception as e:
                batch.end(e)
            except BaseException:  # cancelled (the loop is closing): the COMMIT's end is unknown
                batch.end(Unavailable(f"{self.where} closed while it committed"))
                raise
            else:
                batch.end(None)
        finally:
            conn.close()  # back to the pool; nothing is left to roll back
            turn.release()

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


# JSON columns read with orjson: the standard library's decoder took a tenth of a machine list.
_JSON: dict[str, Any] = {"json_deserializer": orjson.loads}


def _sqlite_engine(url: URL) -> AsyncEngine:
    """The migrations' writer: aiosqlite, BEGIN IMMEDIATE (`write()` uses `_sqlite_writer`)."""
    engine = create_async_engine(url, **_JSON)
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
        **_JSON,
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
        url.set(drivername="sqlite"),
        pool_size=4,
        max_overflow=-1,
        pool_reset_on_return=None,
        **_JSON,
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


class _Batch:
    """Write blocks of one process that share one SQLite transaction and its one COMMIT: each
    runs in its own savepoint, in the order they came, and each is answered after the COMMIT.
    One block's failure rolls back its savepoint alone; one that SQLite cannot roll back alone
    (it rolled the transaction back) breaks the batch: every block in it fails Unavailable."""

    def __init__(self) -> None:
        self.turns: list[asyncio.Future[None]] = []  # one per block, granted in order
        self.conn: Connection | None = None  # begun by the first turn taken
        self.transaction: sa.RootTransaction | None = None
        self.broken = ""  # why the batch cannot commit, once it cannot
        self.ending: asyncio.Task[None] | None = None  # the COMMIT, once the last block ran
        self._next = 0
        self._outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def queue(self) -> "asyncio.Future[None]":
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.turns.append(turn)
        if len(self.turns) == 1:
            self.next_turn()
        return turn

    def next_turn(self) -> bool:
        """Grant the next waiting turn; False when none is left (the batch ends)."""
        while self._next < len(self.turns):
            turn = self.turns[self._next]
            self._next += 1
            if not turn.done():  # one cancelled while it waited is skipped
                turn.set_result(None)
                return True
        return False

    def end(self, error: BaseException | None) -> None:
        if error is None:
            self._outcome.set_result(None)
        else:
            self._outcome.set_exception(error)
            self._outcome.exception()  # retrieved: a batch of failed blocks has no one to wait

    async def committed(self) -> None:
        """Once the batch's COMMIT returned; its error if it failed (the block's writes are
        lost with it). A caller cancelled meanwhile leaves the COMMIT running."""
        await asyncio.shield(self._outcome)


class _InLoop:
    """A sync connection with the few AsyncConnection methods the repositories use: statements
    that never wait for a lock, run in the event loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(
        self, statement: sa.Executable, parameters: Any = None, /
    ) -> sa.CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, /
    ) -> sa.CursorResult[Any]:
        return self._conn.exec_driver_sql(statement, parameters)

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


class SqlTx:
    """One transaction's repositories (`hutch.store.base.Tx`)."""

    def __init__(self, conn: Conn, backend: Backend) -> None:
        self.projects: ProjectRepo = SqlProjects(conn, backend)
        self.tokens: TokenRepo = SqlTokens(conn, backend)
        self.sessions: SessionRepo = SqlSessions(conn, backend)
        self.machines: MachineRepo = SqlMachines(conn, backend)
        self._nodes = SqlNodes(conn, backend)
        self.nodes: NodeRepo = self._nodes
        self.events: EventRepo = SqlEvents(conn, backend)
        self.leases: LeaseRepo = SqlLeases(conn, backend)
        self.networks: NetworkRepo = SqlNetworks(conn, backend)
        self.security_groups: SecurityGroupRepo = SqlSecurityGroups(conn, backend)
        self.volumes: VolumeRepo = SqlVolumes(conn, backend)
        self.snapshots: SnapshotRepo = SqlSnapshots(conn, backend)
        self.pools: PoolRepo = SqlPools(conn, backend)
        self.metrics: MetricRepo = SqlMetrics(conn, backend)
        self.billing: BillingRepo = SqlBilling(conn, backend)
        self.usage: UsageRepo = SqlUsage(conn, backend)

    @property
    def bumped(self) -> set[str]:
        """The nodes whose revisions this transaction bumped."""
        return self._nodes.bumped
