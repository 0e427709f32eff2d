"""Images: the digest and origin a machine's image resolved to, and image quotas per project."""

import sqlalchemy as sa

from hutch.store.migrations.columns import add_columns, drop_columns

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    add_columns(
        "projects",
        sa.Column("quota_images_mib", sa.Integer(), nullable=True),
        sa.Column("quota_images_unpacked_mib", sa.Integer(), nullable=True),
    )
    add_columns(
        "machines",
        sa.Column("image_digest", sa.String(length=80), nullable=False, server_default=""),
        sa.Column("image_source", sa.String(length=32), nullable=False, server_default=""),
    )


def downgrade() -> None:
    drop_columns("machines", "image_source", "image_digest")
    drop_columns("projects", "quota_images_unpacked_mib", "quota_images_mib")
