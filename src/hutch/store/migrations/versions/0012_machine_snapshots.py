"""Machine snapshots (`hutch snapshot create`), and the snapshot a machine continues from
(`hutch run --from`). Written in the shapes `store/tables.py` declares, as 0009 is."""

import sqlalchemy as sa
from alembic import op

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0012"
down_revision = "0011"


def _text(name: str, length: int) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=False)


def _int(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False)


def upgrade() -> None:
    add_columns("machines", sa.Column("from_snapshot", sa.String(64), nullable=False,
                                      server_default=""))  # fmt: skip
    op.create_table(
        "machine_snapshots",
        _text("id", 64),
        _text("project_id", 64),
        _text("name", 63),
        _text("machine_id", 64),
        _text("node_id", 64),
        _text("image", 512),
        _text("image_digest", 80),
        _int("cpus"),
        _int("memory_mib"),
        _int("disk_mib"),
        _text("runtime", 32),
        sa.Column("command", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("entrypoint", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("env", sa.JSON(), nullable=False),
        _text("workdir", 4096),
        _text("user_spec", 255),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _text("state", 32),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_machine_snapshots_node_id_nodes")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_machine_snapshots_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machine_snapshots")),
        sa.UniqueConstraint(
            "project_id", "name", name=op.f("uq_machine_snapshots_project_id_name")
        ),
    )
    op.create_index(op.f("ix_machine_snapshots_node_id"), "machine_snapshots", ["node_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_machine_snapshots_node_id"), table_name="machine_snapshots")
    op.drop_table("machine_snapshots")
    drop_columns("machines", "from_snapshot")
