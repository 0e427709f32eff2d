"""Placement: failure domains and cordons on nodes, groups, constraints and strategies on
machines, a project's default strategy, the scheduler's queue, and the leader's lease."""

import sqlalchemy as sa
from alembic import op

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0003"
down_revision = "0002"

_PENDING = sa.text("node_id IS NULL AND state = 'created' AND desired = 'running'")


def upgrade() -> None:
    add_columns(
        "projects",
        sa.Column("strategy", sa.String(length=32), nullable=False, server_default="spread"),
    )
    add_columns(
        "nodes",
        sa.Column("domain", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("cordoned", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # A cordon was a state; it is a flag now, beside reachability.
    op.execute("UPDATE nodes SET cordoned = true, state = 'ready' WHERE state = 'cordoned'")
    add_columns(
        "machines",
        sa.Column("group_name", sa.String(length=63), nullable=False, server_default=""),
        sa.Column("group_policy", sa.String(length=32), nullable=False, server_default="none"),
        sa.Column("constraints", sa.JSON(), nullable=False, server_default="{}"),
        sa.Column("strategy", sa.String(length=32), nullable=True),
    )
    op.create_index("ix_machines_group", "machines", ["project_id", "group_name"])
    op.create_index(
        "ix_machines_pending",
        "machines",
        ["created_at"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_machines_pending", table_name="machines")
    op.drop_index("ix_machines_group", table_name="machines")
    drop_columns("machines", "strategy", "constraints", "group_policy", "group_name")
    op.execute("UPDATE nodes SET state = 'cordoned' WHERE cordoned AND state = 'ready'")
    drop_columns("nodes", "cordoned", "domain")
    drop_columns("projects", "strategy")
