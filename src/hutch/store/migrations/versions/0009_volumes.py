"""Volumes: a project's persistent disks and their snapshots, and the quotas on them.

Written by hand in the shapes `store/tables.py` declares (its naming convention spelled out, as
0007 does); test_migrations checks that the result is the tables' schema."""

import sqlalchemy as sa
from alembic import op

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0009"
down_revision = "0008"

# (table, column) of each index that upgrade makes and downgrade drops, in creation order.
INDEXES = (
    ("volumes", "machine_id"),
    ("volumes", "node_id"),
    ("volume_snapshots", "project_id"),
)


def _text(name: str, length: int) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=False)


def _big(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def _ref(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def _unique(table: str, *columns: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(*columns, name=op.f(f"uq_{table}_{'_'.join(columns)}"))


def upgrade() -> None:
    add_columns(
        "projects",
        sa.Column("quota_volume_gib", sa.Integer(), nullable=True),
        sa.Column("quota_snapshot_gib", sa.Integer(), nullable=True),
    )
    op.create_table(
        "volumes",
        _text("id", 64),
        _text("project_id", 64),
        _text("name", 63),
        _big("size_bytes"),
        _text("fs", 32),
        _text("state", 32),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("machine_id", sa.String(length=64), nullable=True),
        _big("used_bytes"),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        _ref("volumes", "node_id", "nodes"),
        _ref("volumes", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volumes")),
        _unique("volumes", "project_id", "name"),
    )
    op.create_table(
        "volume_snapshots",
        _text("id", 64),
        _text("volume_id", 64),
        _text("project_id", 64),
        _text("name", 63),
        _big("size_bytes"),
        _big("used_bytes"),
        sa.Column("created_at", sa.Double(), nullable=False),
        _ref("volume_snapshots", "project_id", "projects"),
        _ref("volume_snapshots", "volume_id", "volumes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_snapshots")),
        _unique("volume_snapshots", "volume_id", "name"),
    )
    for table, column in INDEXES:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
    op.drop_table("volume_snapshots")
    op.drop_table("volumes")
    drop_columns("projects", "quota_snapshot_gib", "quota_volume_gib")
