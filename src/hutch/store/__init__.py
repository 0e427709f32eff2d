"""The control plane's store: `base.py` is the contract, `sql/` implements it over SQLite or
PostgreSQL (SQLAlchemy async Core: `sql/engine.py` the transactions, a module per aggregate for
its repository and rows), `tables.py` is the schema and `migrations/` brings a database
to it (Alembic, run by `Store.open()`).

    store = open_store("sqlite:////var/lib/hutch/hutch.db")  # or postgresql://USER@HOST:PORT/DB
    await store.open()
    async with store.write() as tx:
        await tx.projects.lock(project_id)
        ...
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hutch.store.base import Store


def open_store(url: str) -> "Store":
    """The store at `url`, not yet opened: `await store.open()` connects and migrates.

    `sqlite:///PATH` (relative; `sqlite:////abs/path` for an absolute one, as in SQLAlchemy) or
    `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`, optionally `?host=/unix/socket/dir`.
    Invalid for any other scheme."""
    # Imported here: `import hutch.store.base` (the types) stays free of SQLAlchemy and Alembic.
    from hutch.store.sql import SqlStore  # noqa: PLC0415

    return SqlStore(url)
