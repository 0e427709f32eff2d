"""Alembic's environment, for programmatic runs only: `hutch.store.sql` hands over a connection
already inside the transaction (and, on PostgreSQL, the advisory lock) it will commit itself.

To write a new revision, autogenerate against a database at head, from the repository root:

    python -c 'import hutch.store.sql as s; s.make_revision("sqlite:///tmp.db", "what changed")'
"""

from alembic import context

from hutch.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("hutch's migrations run through hutch.store.sql, with a connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    # SQLite alters tables by copying them: later migrations need batch mode there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
