"""The usage ledger (services/metering.py): append-only rows of what machines, volumes and
snapshots used, unique by an idempotency key, and the marks of how far each stream it is made
from was counted. Quantities are integer millionths (tables.Millionths).

Chained to 0015 while 0016 (telemetry) is not on main: renumber at merge."""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"


def _big(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            nullable=False,
        ),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("machine_id", sa.String(64), nullable=True),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("start", sa.Double(), nullable=False),
        sa.Column("end", sa.Double(), nullable=False),
        _big("vcpu_seconds"),
        _big("cpu_seconds"),
        _big("memory_gib_seconds"),
        _big("storage_gib_hours"),
        _big("egress_bytes"),
        sa.Column("starts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage")),
        sa.UniqueConstraint("key", name=op.f("uq_usage_key")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_usage_project_id_start", "usage", ["project_id", "start"])
    op.create_index("ix_usage_start", "usage", ["start"])
    op.create_table(
        "usage_marks",
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), autoincrement=False, nullable=False),
        _big("seq"),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("running_s", sa.Double(), nullable=False),
        sa.Column("cpu_s", sa.Double(), nullable=False),
        _big("egress_bytes"),
        sa.Column("ended", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "generation", name=op.f("pk_usage_marks")),
    )


def downgrade() -> None:
    op.drop_table("usage_marks")
    op.drop_index("ix_usage_start", table_name="usage")
    op.drop_index("ix_usage_project_id_start", table_name="usage")
    op.drop_table("usage")
