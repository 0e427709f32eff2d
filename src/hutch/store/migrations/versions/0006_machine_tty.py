"""Machines keep whether their main process has a terminal (and its size at start) and a
stdin (`hutch run -it`)."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("tty", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("stdin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("tty_rows", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tty_cols", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("tty_cols")
        batch.drop_column("tty_rows")
        batch.drop_column("stdin")
        batch.drop_column("tty")
