"""Volumes keep the operation their node is doing (and until when it holds them), so that a
second operation on the same volume is refused while one is under way."""

import sqlalchemy as sa

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    add_columns(
        "volumes",
        sa.Column("operation", sa.String(length=32), nullable=False, server_default=""),
        sa.Column("operation_until", sa.Double(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    drop_columns("volumes", "operation", "operation_until")
