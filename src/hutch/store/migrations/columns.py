"""Steps the migrations share, for them alone. A migration's schema is frozen, so what is here
must never change meaning: add a new helper beside these rather than edit one."""

import sqlalchemy as sa
from alembic import op


def add_columns(table: str, *columns: sa.Column[object]) -> None:
    """Add `columns` to `table`, in order, in one batch (SQLite copies the table once)."""
    with op.batch_alter_table(table) as batch:
        for column in columns:
            batch.add_column(column)


def drop_columns(table: str, *names: str) -> None:
    """Drop the columns `names` from `table`, in order, in one batch."""
    with op.batch_alter_table(table) as batch:
        for name in names:
            batch.drop_column(name)
