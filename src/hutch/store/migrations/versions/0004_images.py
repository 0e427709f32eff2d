"""Images: the digest and origin a machine's image resolved to, and image quotas per project."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("quota_images_mib", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quota_images_unpacked_mib", sa.Integer(), nullable=True))
    with op.batch_alter_table("machines") as batch:
        batch.add_column(
            sa.Column("image_digest", sa.String(length=80), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("image_source", sa.String(length=32), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("image_source")
        batch.drop_column("image_digest")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("quota_images_unpacked_mib")
        batch.drop_column("quota_images_mib")
