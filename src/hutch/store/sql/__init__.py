"""The store over SQLAlchemy's async Core, on SQLite or PostgreSQL: `engine` holds the
connections and transactions, and each aggregate has a module with its repository and its rows
(`projects`, `tokens`, `machines`, `nodes`, `events`, `leases`), all over `repo.Repo`."""

from hutch.store.sql.engine import SqlStore, alembic_config, make_revision, parse_url
from hutch.store.sql.events import MAX_EVENTS

__all__ = ["MAX_EVENTS", "SqlStore", "alembic_config", "make_revision", "parse_url"]
