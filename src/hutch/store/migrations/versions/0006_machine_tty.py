"""Machines keep whether their main process has a terminal (and its size at start) and a
stdin (`hutch run -it`)."""

import sqlalchemy as sa

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    add_columns(
        "machines",
        sa.Column("tty", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("stdin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("tty_rows", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("tty_cols", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    drop_columns("machines", "tty_cols", "tty_rows", "stdin", "tty")
