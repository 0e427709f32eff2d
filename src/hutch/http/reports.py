"""Usage and invoices as people read them: the usage CSV and the invoice's HTML, written once
for the API (`/v1/usage?format=csv`, `/v1/invoices/{id}.html`) and the dashboard."""

import csv
import datetime as dt
import io
from pathlib import Path

import jinja2
from markupsafe import Markup

from hutch.model.prices import ROUNDING, Invoice
from hutch.model.usage import QUANTITIES, UsageTotal
from hutch.wire import billing as wire

_HTML = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # descriptions carry reasons and labels that tenants and operators wrote
)


def usage_row(t: UsageTotal) -> wire.UsageRow:
    return wire.UsageRow(
        group=t.group, egress_bytes=t.egress_bytes, starts=t.starts, records=t.records,
        **{q: str(getattr(t, q)) for q in QUANTITIES},
    )  # fmt: skip


def usage_csv(rows: list[wire.UsageRow]) -> str:
    """The rows as CSV with a header line: the UsageRow fields, in their order."""
    out = io.StringIO()
    writer = csv.DictWriter(out, list(wire.UsageRow.model_fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.model_dump() for r in rows)
    return out.getvalue()


def invoice_view(i: Invoice, project: str) -> wire.InvoiceView:
    return wire.InvoiceView(
        id=i.id or "draft", project=project, state="open" if i.closed_at is None else "closed",
        period_start=i.period_start, period_end=i.period_end, currency=i.currency,
        lines=[wire.LineView(kind=x.kind, description=x.description, unit=x.unit, label=x.label,
                             quantity=str(x.quantity), unit_price=str(x.unit_price),
                             amount=str(x.amount)) for x in i.lines],
        total=str(i.total), closed_at=i.closed_at,
    )  # fmt: skip


def day(t: float | None) -> str:
    """An instant as the invoice writes it (UTC, to the minute)."""
    return "" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M")


def invoice_html(view: wire.InvoiceView) -> str:
    """The invoice as a page of its own, to print."""
    return _HTML.get_template("invoice.html").render(
        invoice=view, start=day(view.period_start), end=day(view.period_end),
        closed=day(view.closed_at), rounding=ROUNDING,
    )  # fmt: skip


def invoice_table(view: wire.InvoiceView) -> Markup:
    """Its lines and total alone (escaped here), for a page that has its own frame."""
    return Markup(_HTML.get_template("invoice_table.html").render(invoice=view))
