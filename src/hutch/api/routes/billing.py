"""/v1/prices, /v1/usage, /v1/invoices, and a project's budget and credits."""

from typing import Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import HTMLResponse

from hutch.api.deps import Caller, Ctl, Scoped
from hutch.http.problems import PROBLEMS
from hutch.http.reports import invoice_html, invoice_view, usage_csv, usage_row
from hutch.model.errors import NotFound
from hutch.model.prices import ROUNDING, UNITS, Budget, Credit, PriceBook, Prices
from hutch.model.prices import parse_instant as instant
from hutch.wire import billing as wire
from hutch.wire.common import Page

router = APIRouter(tags=["billing"], responses=PROBLEMS)


# -- prices ---------------------------------------------------------------------------------------


@router.get("/v1/prices")
async def get_prices(
    ctl: Ctl, caller: Caller, project: str | None = None
) -> wire.PricesView | wire.PriceBookDoc:
    """A system token: the whole book (with `?project=`: that project's effective prices). A
    project token: its project's effective prices."""
    if caller.system and project is None:
        return wire.PriceBookDoc.model_validate((await ctl.billing.book(caller)).document())
    p = await ctl.tenancy.project_for(caller, project)
    return _prices_view(p.name, await ctl.billing.prices(caller, p))


@router.put("/v1/prices")
async def set_prices(ctl: Ctl, caller: Caller, body: wire.PriceBookDoc) -> wire.PriceBookDoc:
    """Replace the price book (system tokens only)."""
    book = PriceBook.parse(body.model_dump())
    await ctl.billing.set_book(caller, book)
    return wire.PriceBookDoc.model_validate(book.document())


def _prices_view(project: str, p: Prices) -> wire.PricesView:
    def s(rates: object) -> dict[str, str]:
        return {k: str(v) for k, v in dict(rates).items()}  # type: ignore[call-overload]

    return wire.PricesView(
        project=project, currency=p.currency, plan=p.plan, rates=s(p.rates),
        included=s(p.included), fee=str(p.fee), labels={k: s(v) for k, v in p.labels},
        units=[wire.UnitView(unit=u.field, priced_per=u.priced_per) for u in UNITS.values()],
        rounding=ROUNDING,
    )  # fmt: skip


# -- usage ----------------------------------------------------------------------------------------


def _wants(request: Request, format: str | None, *kinds: str) -> str:
    if format is not None:
        return format
    accept = request.headers.get("accept", "")
    return next((k for k in kinds if f"text/{k}" in accept), "json")


@router.get("/v1/usage", response_model=wire.UsageView,
            responses={200: {"content": {"text/csv": {}}}})  # fmt: skip
async def get_usage(
    ctl: Ctl,
    s: Scoped,
    request: Request,
    since: str | None = Query(None, description="epoch seconds or ISO 8601; from"),
    until: str | None = Query(None, description="epoch seconds or ISO 8601; before"),
    by: Literal["machine", "label", "day"] | None = None,
    format: Literal["json", "csv"] | None = Query(None, description="else by Accept"),
) -> Response | wire.UsageView:
    """The project's usage in [since, until) (records by their start), summed, or per machine
    (or volume), per label (a record counts in each of its labels) or per day (UTC)."""
    start = None if since is None else instant(since, "since")
    end = None if until is None else instant(until, "until")
    totals = await ctl.billing.usage(s.caller, s.project, start, end, by)
    rows = [usage_row(t) for t in totals]
    if _wants(request, format, "csv") == "csv":
        return Response(usage_csv(rows), media_type="text/csv; charset=utf-8")
    return wire.UsageView(project=s.project.name, since=start, until=end, by=by, items=rows)


# -- invoices -------------------------------------------------------------------------------------


@router.get("/v1/invoices")
async def list_invoices(
    ctl: Ctl, s: Scoped, limit: int = Query(100, ge=1, le=200), cursor: str | None = None
) -> Page[wire.InvoiceView]:
    """The project's closed invoices, newest first (`/v1/invoices/draft`: the open one)."""
    before = None if cursor is None else instant(cursor, "cursor")
    found = await ctl.billing.invoices(s.caller, s.project, limit, before)
    more = str(found[-1].period_start) if len(found) == limit else None
    return Page(items=[invoice_view(i, s.project.name) for i in found], next=more)


@router.get("/v1/invoices/{ref}", response_model=wire.InvoiceView,
            responses={200: {"content": {"text/html": {}}}})  # fmt: skip
async def get_invoice(
    ctl: Ctl, s: Scoped, request: Request, ref: str,
    format: Literal["json", "html"] | None = Query(None, description="else by Accept"),
) -> Response | wire.InvoiceView:  # fmt: skip
    """A closed invoice by id, or `draft`: the current period's (open). `ID.html` or
    `?format=html`: a page to print."""
    html = ref.endswith(".html")
    ref = ref.removesuffix(".html")
    view = invoice_view(await ctl.billing.invoice(s.caller, s.project, ref), s.project.name)
    if html or _wants(request, format, "html") == "html":
        return HTMLResponse(invoice_html(view))
    return view


# -- a project's credits and budget ---------------------------------------------------------------


@router.post("/v1/projects/{name}/credits", status_code=status.HTTP_201_CREATED)
async def add_credit(
    ctl: Ctl, caller: Caller, name: str, body: wire.CreditCreate
) -> wire.CreditView:
    """A credit (system tokens only): a credit line on the project's next closed invoice (a
    closed invoice never changes)."""
    project = await ctl.tenancy.project_for(caller, name)
    c: Credit = await ctl.billing.credit(caller, project, body.amount, body.reason)
    return wire.CreditView(id=c.id, project=name, amount=str(c.amount), reason=c.reason,
                           created_at=c.created_at)  # fmt: skip


@router.get("/v1/projects/{name}/budget")
async def get_budget(ctl: Ctl, caller: Caller, name: str) -> wire.BudgetView:
    project = await ctl.tenancy.project_for(caller, name)
    budget = await ctl.billing.budget(caller, project)
    if budget is None:
        raise NotFound(f"project {name} has no budget")
    return _budget_view(budget, name)


@router.put("/v1/projects/{name}/budget")
async def set_budget(ctl: Ctl, caller: Caller, name: str, body: wire.BudgetSet) -> wire.BudgetView:
    """Events `budget.80` and `budget.100` once each a period as the period's invoice reaches
    those shares of `amount`; with `stop`, at 100 % the project's machines are stopped
    (system tokens only)."""
    project = await ctl.tenancy.project_for(caller, name)
    return _budget_view(await ctl.billing.set_budget(caller, project, body.amount, body.stop), name)


@router.delete("/v1/projects/{name}/budget", status_code=status.HTTP_204_NO_CONTENT)
async def delete_budget(ctl: Ctl, caller: Caller, name: str) -> Response:
    project = await ctl.tenancy.project_for(caller, name)
    await ctl.billing.delete_budget(caller, project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _budget_view(b: Budget, project: str) -> wire.BudgetView:
    return wire.BudgetView(project=project, amount=str(b.amount), stop=b.stop, level=b.level,
                           period_start=b.period_start)  # fmt: skip
