"""Machines keep how their last stop is carried out, and a restart's backoff."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(
            sa.Column("stop_signal", sa.String(length=32), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("stop_timeout", sa.Double(), nullable=False, server_default="10")
        )
        batch.add_column(sa.Column("start_after", sa.Double(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("start_after")
        batch.drop_column("stop_timeout")
        batch.drop_column("stop_signal")
