"""Machines keep whether a client follows their output from the start (`hutch run` attached):
only then does the node hold it for a first follower (log_hold)."""

import sqlalchemy as sa

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    add_columns(
        "machines",
        sa.Column("hold_output", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    drop_columns("machines", "hold_output")
