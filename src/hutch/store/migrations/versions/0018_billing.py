"""Billing: the price book, closed invoices, credits waiting for an invoice, project budgets."""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"


def _money(name: str) -> "sa.Column[str]":
    return sa.Column(name, sa.String(length=40), nullable=False)


def upgrade() -> None:
    op.create_table(
        "price_books",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("book", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_books")),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.Double(), nullable=False),
        sa.Column("period_end", sa.Double(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        _money("total"),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("closed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint(
            "project_id", "period_start", name=op.f("uq_invoices_project_id_period_start")
        ),
    )
    op.create_table(
        "credits",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        _money("amount"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("invoice_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credits")),
    )
    op.create_index(op.f("ix_credits_project_id"), "credits", ["project_id"])
    op.create_table(
        "budgets",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        _money("amount"),
        sa.Column("stop", sa.Boolean(), nullable=False),
        sa.Column("period_start", sa.Double(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_budgets")),
    )


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_index(op.f("ix_credits_project_id"), table_name="credits")
    op.drop_table("credits")
    op.drop_table("invoices")
    op.drop_table("price_books")
