"""The initial schema: projects, tokens, nodes, machines, events."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

_LIVE = sa.text("state != 'destroyed'")


def _sizes(prefix: str) -> list[sa.Column[int]]:
    """The cpus, memory and disk a node offers or has allocated, or a machine asks for."""
    return [
        sa.Column(f"{prefix}{size}", sa.Integer(), nullable=False)
        for size in ("cpus", "memory_mib", "disk_mib")
    ]


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        *(
            sa.Column(f"quota_{quota}", sa.Integer(), nullable=True)
            for quota in ("machines", "vcpus", "memory_mib", "disk_mib")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("runtimes", sa.JSON(), nullable=False),
        sa.Column("accel", sa.String(length=32), nullable=False),
        *_sizes("capacity_"),
        *_sizes("allocated_"),
        sa.Column("overhead_mib", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("credential_hash", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("credential_hash", name=op.f("uq_nodes_credential_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("system", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.Column("secret_hash", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_tokens_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_tokens_secret_hash")),
    )
    op.create_index(op.f("ix_tokens_project_id"), "tokens", ["project_id"], unique=False)
    op.create_table(
        "machines",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("image", sa.String(length=512), nullable=False),
        sa.Column("command", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("entrypoint", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("workdir", sa.String(length=4096), nullable=False),
        sa.Column("user_spec", sa.String(length=255), nullable=False),
        *_sizes(""),
        sa.Column("scratch_mib", sa.Integer(), nullable=False),
        sa.Column("runtime", sa.String(length=32), nullable=False),
        sa.Column("restart", sa.String(length=32), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("auto_destroy", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("desired", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("oom_killed", sa.Boolean(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_machines_node_id_nodes")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_machines_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machines")),
    )
    op.create_index(op.f("ix_machines_node_id"), "machines", ["node_id"], unique=False)
    op.create_index(
        "ix_machines_project_id_created_at_id",
        "machines",
        ["project_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "uq_machines_project_id_name_live",
        "machines",
        ["project_id", "name"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_events_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_project_id_id", "events", ["project_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("machines")
    op.drop_table("tokens")
    op.drop_table("nodes")
    op.drop_table("projects")
