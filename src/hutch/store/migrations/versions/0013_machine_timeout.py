"""Machines' lifetimes (`hutch run --timeout`): the timeout and what is done at its end, the
running time's clock, and when a running machine's time runs out (indexed: the leader looks
for machines whose time is up)."""

import sqlalchemy as sa
from alembic import op

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0013"
down_revision = "0012"

_EXPIRING = sa.text("expires_at IS NOT NULL")


def upgrade() -> None:
    add_columns(
        "machines",
        sa.Column("timeout_s", sa.Double(), nullable=True),
        sa.Column("on_timeout", sa.String(length=32), nullable=False, server_default="stop"),
        sa.Column("ran_s", sa.Double(), nullable=False, server_default="0"),
        sa.Column("running_since", sa.Double(), nullable=True),
        sa.Column("extended_s", sa.Double(), nullable=False, server_default="0"),
        sa.Column("expires_at", sa.Double(), nullable=True),
    )
    op.create_index(
        "ix_machines_expires_at",
        "machines",
        ["expires_at"],
        sqlite_where=_EXPIRING,
        postgresql_where=_EXPIRING,
    )


def downgrade() -> None:
    op.drop_index("ix_machines_expires_at", table_name="machines")
    drop_columns(
        "machines", "expires_at", "extended_s", "running_since", "ran_s", "on_timeout", "timeout_s"
    )
