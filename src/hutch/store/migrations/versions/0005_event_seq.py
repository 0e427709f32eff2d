"""Events are numbered per project (events.seq, from projects.event_seq), not globally: the ids
a project sees say nothing about the others. Existing events are numbered in their old order."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    # add_column, not batch mode: SQLite keeps the events table (and its AUTOINCREMENT) as it is.
    op.add_column(
        "projects", sa.Column("event_seq", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.add_column("events", sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE events SET seq = (SELECT count(*) FROM events AS e"
        " WHERE e.project_id = events.project_id AND e.id <= events.id)"
    )
    op.execute(
        "UPDATE projects SET event_seq = (SELECT count(*) FROM events"
        " WHERE events.project_id = projects.id)"
    )
    op.drop_index("ix_events_project_id_id", table_name="events")
    op.create_index("uq_events_project_id_seq", "events", ["project_id", "seq"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_events_project_id_seq", table_name="events")
    op.create_index("ix_events_project_id_id", "events", ["project_id", "id"])
    op.drop_column("events", "seq")  # ALTER TABLE DROP COLUMN: SQLite 3.35 and later
    op.drop_column("projects", "event_seq")
