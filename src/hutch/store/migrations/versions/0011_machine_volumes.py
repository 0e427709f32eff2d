"""Machines with volumes: a machine's volumes (its spec), whether a volume's (or a snapshot's)
file system may be a tenant's craft, and whether a snapshot was taken frozen. Who has a volume
is `volumes.machine_id` (0009)."""

import sqlalchemy as sa

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0011"
down_revision = "0010"


def _flag(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())


def upgrade() -> None:
    add_columns("machines", sa.Column("volumes", sa.JSON(), nullable=False, server_default="[]"))
    add_columns("volumes", _flag("untrusted"))
    add_columns("volume_snapshots", _flag("untrusted"), _flag("frozen"))


def downgrade() -> None:
    drop_columns("volume_snapshots", "frozen", "untrusted")
    drop_columns("volumes", "untrusted")
    drop_columns("machines", "volumes")
