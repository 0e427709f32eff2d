"""Usage (the project's ledger summed, or by machine, label or day, as `hutch usage` shows it,
with a CSV download) and invoices (the open one and the closed ones; an invoice in the
dashboard, and as the same printable page the API serves)."""

import urllib.parse
from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, Response

from hutch.http.reports import day, invoice_html, invoice_table, invoice_view, usage_csv, usage_row
from hutch.model.prices import ROUNDING, parse_instant
from hutch.model.usage import By
from hutch.web.render import page, pages
from hutch.web.visitor import Visiting, Visitor, controller
from hutch.wire import billing as wire

router = pages()
When = Annotated[str, Query(max_length=64)]
ByQuery = Annotated[Literal["", "machine", "label", "day"], Query()]


async def _usage(
    request: Request, v: Visitor, since: str, until: str, by: str
) -> list[wire.UsageRow]:
    start = parse_instant(since, "since") if since.strip() else None
    end = parse_instant(until, "until") if until.strip() else None
    grouped: By = by or None  # type: ignore[assignment]  # "" or one of By's, by the query type
    totals = await controller(request).billing.usage(v.principal, v.project, start, end, grouped)
    return [usage_row(t) for t in totals]


@router.get("/ui/usage")
async def usage(
    request: Request, v: Visiting, since: When = "", until: When = "", by: ByQuery = ""
) -> HTMLResponse:
    rows = await _usage(request, v, since, until, by)
    query = urllib.parse.urlencode({"since": since, "until": until, "by": by})
    return page(request, v, "usage.html", rows=rows, since=since, until=until, by=by,
                csv=f"/ui/usage.csv?{query}")  # fmt: skip


@router.get("/ui/usage.csv")
async def usage_download(
    request: Request, v: Visiting, since: When = "", until: When = "", by: ByQuery = ""
) -> Response:
    rows = await _usage(request, v, since, until, by)
    name = f"usage-{v.project.name}{'-by-' + by if by else ''}.csv"
    return Response(usage_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip


@router.get("/ui/invoices")
async def invoices(request: Request, v: Visiting) -> HTMLResponse:
    billing = controller(request).billing
    found = [await billing.draft(v.principal, v.project),
             *await billing.invoices(v.principal, v.project)]  # fmt: skip
    views = [invoice_view(i, v.project.name) for i in found]
    budget = await billing.budget(v.principal, v.project)
    return page(request, v, "invoices.html", invoices=views, day=day, budget=budget)


@router.get("/ui/invoices/{ref}")
async def invoice(request: Request, v: Visiting, ref: str) -> HTMLResponse:
    """`ID.html`: the printable page, as `GET /v1/invoices/ID.html` gives it."""
    printable = ref.endswith(".html")
    found = await controller(request).billing.invoice(
        v.principal, v.project, ref.removesuffix(".html")
    )
    view = invoice_view(found, v.project.name)
    if printable:
        return HTMLResponse(invoice_html(view))
    return page(request, v, "invoice_page.html", invoice=view, table=invoice_table(view),
                day=day, rounding=ROUNDING)  # fmt: skip
