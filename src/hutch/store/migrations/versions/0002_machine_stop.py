"""Machines keep how their last stop is carried out, and a restart's backoff."""

import sqlalchemy as sa

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    add_columns(
        "machines",
        sa.Column("stop_signal", sa.String(length=32), nullable=False, server_default=""),
        sa.Column("stop_timeout", sa.Double(), nullable=False, server_default="10"),
        sa.Column("start_after", sa.Double(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    drop_columns("machines", "start_after", "stop_timeout", "stop_signal")
