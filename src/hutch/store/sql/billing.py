"""Billing's rows: the price book, closed invoices, credits, budgets (model/prices.py)."""

import builtins
import dataclasses
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.prices import Budget, Credit, Invoice, Line, PriceBook
from hutch.store import tables as t
from hutch.store.sql.repo import Repo

MAX_INVOICES = 200  # per list() call


class SqlBilling(Repo):
    async def book(self) -> PriceBook:
        row = await self._one(sa.select(t.price_books.c.book).where(t.price_books.c.id == 1))
        return PriceBook() if row is None else PriceBook.parse(row.book)

    async def set_book(self, book: PriceBook, at: float) -> None:
        p = t.price_books
        values = {"book": book.document(), "updated_at": at}
        done = await self._c.execute(sa.update(p).where(p.c.id == 1).values(**values))
        if not done.rowcount and not await self._insert(p, {"id": 1, **values}):
            await self._c.execute(sa.update(p).where(p.c.id == 1).values(**values))

    async def close(self, invoice: Invoice) -> bool:
        """Store the closed invoice and mark the credits on its credit lines as carried by it;
        False (nothing written) if the project's invoice of that period exists already."""
        row = {
            "id": invoice.id, "project_id": invoice.project_id,
            "period_start": invoice.period_start, "period_end": invoice.period_end,
            "currency": invoice.currency, "total": str(invoice.total),
            "lines": [_line_doc(line) for line in invoice.lines], "closed_at": invoice.closed_at,
        }  # fmt: skip
        return await self._insert(t.invoices, row)

    async def carry(self, credit_ids: Sequence[str], invoice_id: str) -> None:
        c = t.credits
        await self._c.execute(
            sa.update(c).where(c.c.id.in_(credit_ids), c.c.invoice_id == "")
            .values(invoice_id=invoice_id)
        )  # fmt: skip

    async def closed_until(self) -> dict[str, float]:
        i = t.invoices
        end = sa.func.max(i.c.period_end).label("end")
        stmt = sa.select(i.c.project_id, end).group_by(i.c.project_id)
        return {r.project_id: float(r.end) for r in await self._c.execute(stmt)}

    async def invoice(self, project_id: str | None, invoice_id: str) -> Invoice | None:
        i = t.invoices
        stmt = sa.select(i).where(i.c.id == invoice_id)
        if project_id is not None:
            stmt = stmt.where(i.c.project_id == project_id)
        row = await self._one(stmt)
        return None if row is None else _invoice(row)

    async def invoices(
        self, project_id: str | None, limit: int, before: float | None = None
    ) -> builtins.list[Invoice]:
        """Newest period first, at most `limit` (and MAX_INVOICES), periods before `before`."""
        i = t.invoices
        stmt = sa.select(i).order_by(i.c.period_start.desc(), i.c.project_id)
        if project_id is not None:
            stmt = stmt.where(i.c.project_id == project_id)
        if before is not None:
            stmt = stmt.where(i.c.period_start < before)
        rows = await self._c.execute(stmt.limit(min(limit, MAX_INVOICES)))
        return [_invoice(r) for r in rows]

    async def add_credit(self, credit: Credit) -> None:
        await self._c.execute(
            t.credits.insert().values(
                **{**dataclasses.asdict(credit), "amount": str(credit.amount)}
            )
        )

    async def pending_credits(self, project_id: str, before: float) -> builtins.list[Credit]:
        """The project's credits no invoice carries yet, granted before `before`, oldest first."""
        c = t.credits
        stmt = (
            sa.select(c)
            .where(c.c.project_id == project_id, c.c.invoice_id == "", c.c.created_at < before)
            .order_by(c.c.created_at, c.c.id)
        )
        return [
            Credit(r.id, r.project_id, Decimal(r.amount), r.reason, r.created_at, r.invoice_id)
            for r in await self._c.execute(stmt)
        ]

    async def budget(self, project_id: str) -> Budget | None:
        row = await self._one(sa.select(t.budgets).where(t.budgets.c.project_id == project_id))
        return None if row is None else _budget(row)

    async def budgets(self) -> builtins.list[Budget]:
        """Every budget of a project that exists."""
        b = t.budgets
        stmt = sa.select(b).join(t.projects, t.projects.c.id == b.c.project_id)
        return [_budget(r) for r in await self._c.execute(stmt)]

    async def set_budget(self, budget: Budget) -> None:
        b = t.budgets
        values = {**dataclasses.asdict(budget), "amount": str(budget.amount)}
        await self._c.execute(sa.delete(b).where(b.c.project_id == budget.project_id))
        await self._c.execute(b.insert().values(**values))

    async def mark_budget(self, project_id: str, period_start: float, level: int) -> bool:
        """Record that the project's budget announced `level` in the period: False if it had
        already (in that period), so two leaders never announce a threshold twice."""
        b = t.budgets
        stmt = sa.update(b).where(
            b.c.project_id == project_id,
            sa.or_(b.c.period_start != period_start, b.c.level < level),
        ).values(period_start=period_start, level=level)  # fmt: skip
        return bool((await self._c.execute(stmt)).rowcount)

    async def delete_budget(self, project_id: str) -> None:
        await self._c.execute(sa.delete(t.budgets).where(t.budgets.c.project_id == project_id))


def _line_doc(line: Line) -> dict[str, str]:
    return {k: str(v) for k, v in dataclasses.asdict(line).items()}


def line_of(doc: dict[str, Any]) -> Line:
    d = {k: Decimal(doc[k]) for k in ("quantity", "unit_price", "amount")}
    return Line(doc["kind"], doc["description"], doc["unit"], label=doc.get("label", ""), **d)


def _invoice(r: Row[Any]) -> Invoice:
    return Invoice(
        r.id, r.project_id, r.period_start, r.period_end, r.currency,
        tuple(line_of(d) for d in r.lines), Decimal(r.total), r.closed_at,
    )  # fmt: skip


def _budget(r: Row[Any]) -> Budget:
    return Budget(r.project_id, Decimal(r.amount), r.stop, r.period_start, r.level)
