"""The scheduler's queue indexed in its own order, (created_at, id): a page of pending machines
is the index's next rows, not a sort of every machine still waiting."""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"

_PENDING = sa.text("node_id IS NULL AND state = 'created' AND desired = 'running'")


def _pending_index(*columns: str) -> None:
    op.drop_index("ix_machines_pending", table_name="machines")
    op.create_index(
        "ix_machines_pending",
        "machines",
        list(columns),
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def upgrade() -> None:
    _pending_index("created_at", "id")


def downgrade() -> None:
    _pending_index("created_at")
