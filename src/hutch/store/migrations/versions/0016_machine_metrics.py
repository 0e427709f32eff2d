"""Machine metric history (`GET /v1/machines/{id}/metrics`): a point per machine, tier, bucket
and generation, pruned by the leader when its tier no longer keeps it."""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"

COUNTERS = (
    "memory_bytes", "memory_limit_bytes",
    "disk_read_bytes", "disk_write_bytes", "disk_read_ops", "disk_write_ops",
    "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "egress_bytes", "ingress_bytes",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "machine_metrics",
        sa.Column("machine_id", sa.String(64), nullable=False),
        sa.Column("step", sa.Double(), nullable=False),
        sa.Column("bucket", sa.Double(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("running_s", sa.Double(), nullable=False),
        sa.Column("cpu_s", sa.Double(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTERS),
        sa.PrimaryKeyConstraint(
            "machine_id", "step", "bucket", "generation", name=op.f("pk_machine_metrics")
        ),
    )
    op.create_index("ix_machine_metrics_step_bucket", "machine_metrics", ["step", "bucket"])


def downgrade() -> None:
    op.drop_index("ix_machine_metrics_step_bucket", table_name="machine_metrics")
    op.drop_table("machine_metrics")
