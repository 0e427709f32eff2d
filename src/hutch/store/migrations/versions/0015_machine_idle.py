"""Idle machines (`hutch run --idle`): how long a machine may go without a connection to its
published ports and what is done then, its node's last sight of one, whether it idled to
suspended (so a connection resumes it), and when a running machine idles (indexed: the
leader looks for machines that idled)."""

import sqlalchemy as sa
from alembic import op

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0015"
down_revision = "0014"

_IDLING = sa.text("idle_at IS NOT NULL")


def upgrade() -> None:
    add_columns(
        "machines",
        sa.Column("idle_s", sa.Double(), nullable=True),
        sa.Column("on_idle", sa.String(length=32), nullable=False, server_default="stop"),
        sa.Column("active_at", sa.Double(), nullable=True),
        sa.Column("idled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("idle_at", sa.Double(), nullable=True),
    )
    op.create_index(
        "ix_machines_idle_at",
        "machines",
        ["idle_at"],
        sqlite_where=_IDLING,
        postgresql_where=_IDLING,
    )


def downgrade() -> None:
    op.drop_index("ix_machines_idle_at", table_name="machines")
    drop_columns("machines", "idle_at", "idled", "active_at", "on_idle", "idle_s")
