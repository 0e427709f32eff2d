"""Warm pools (`hutch pool set`): the pools, the machines they own and the template snapshot a
machine's generation is restored from, and the machine snapshots that are a pool's template."""

import sqlalchemy as sa
from alembic import op

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0014"
down_revision = "0013"


def _id(name: str) -> "sa.Column[object]":
    return sa.Column(name, sa.String(64), nullable=False, server_default="")


def _int(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False)


def upgrade() -> None:
    add_columns("machines", _id("pool"), _id("pool_snapshot"))
    add_columns("machine_snapshots", _id("pool"))
    op.create_table(
        "pools",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("image", sa.String(512), nullable=False),
        _int("cpus"),
        _int("memory_mib"),
        _int("disk_mib"),
        sa.Column("runtime", sa.String(32), nullable=False),
        _int("min_ready"),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("image_digest", sa.String(80), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        _int("version"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_pools_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pools")),
        sa.UniqueConstraint(
            "project_id",
            "image",
            "cpus",
            "memory_mib",
            "disk_mib",
            "runtime",
            name=op.f("uq_pools_project_id_image_cpus_memory_mib_disk_mib_runtime"),
        ),
    )


def downgrade() -> None:
    op.drop_table("pools")
    drop_columns("machine_snapshots", "pool")
    drop_columns("machines", "pool_snapshot", "pool")
