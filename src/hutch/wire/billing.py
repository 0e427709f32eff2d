"""Prices, usage, invoices, credits and budgets: the API's shapes. Money and quantities are
decimal strings ("0.02"), never JSON numbers: a float's binary error would be priced."""

from typing import Literal

from pydantic import Field

from hutch.wire.common import Request, View

# A unit's price: per vCPU-hour, CPU-hour, GiB-hour (memory and storage), GiB of egress, start
# (see model/prices.py UNITS); units a book leaves out are free.
Rates = dict[str, str]


class PlanDoc(Request):
    rates: Rates = {}
    included: Rates = Field({}, description="per period, in the prices' units")
    fee: str = "0"


class ProjectPricesDoc(Request):
    plan: str = ""
    rates: Rates = {}


class PriceBookDoc(Request):
    """The whole price book (`PUT /v1/prices` replaces it). A project's effective rates are
    the book's, over them its plan's (its own `plan`, else the default `plan`), over those its
    own; usage of a machine with one of `labels` ("key=value", the first that matches) is
    priced by that label's rates over the project's."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    rates: Rates = {}
    plans: dict[str, PlanDoc] = {}
    plan: str = ""
    projects: dict[str, ProjectPricesDoc] = Field({}, description="by project name")
    labels: dict[str, Rates] = {}


class UnitView(View):
    unit: str  # the ledger's quantity
    priced_per: str  # what one unit of price buys


class PricesView(View):
    """A project's effective prices."""

    project: str
    currency: str
    plan: str
    rates: Rates
    included: Rates
    fee: str
    labels: dict[str, Rates]
    units: list[UnitView]
    rounding: str


class UsageRow(View):
    group: str  # "" (no grouping), a machine/volume id, "key=value", or "YYYY-MM-DD"
    vcpu_seconds: str
    cpu_seconds: str
    memory_gib_seconds: str
    storage_gib_hours: str
    egress_bytes: int
    starts: int
    records: int


class UsageView(View):
    project: str
    since: float | None
    until: float | None
    by: Literal["machine", "label", "day"] | None
    items: list[UsageRow]


class LineView(View):
    kind: str  # usage, fee, credit
    description: str
    unit: str
    label: str
    quantity: str
    unit_price: str
    amount: str


class InvoiceView(View):
    id: str  # "draft" for the current period's, open invoice
    project: str
    state: Literal["open", "closed"]
    period_start: float
    period_end: float
    currency: str
    lines: list[LineView]
    total: str
    closed_at: float | None


class CreditCreate(Request):
    amount: str = Field(description="a decimal, more than 0")
    reason: str = Field(min_length=1, max_length=500)


class CreditView(View):
    id: str
    project: str
    amount: str
    reason: str
    created_at: float


class BudgetSet(Request):
    amount: str = Field(description="per period, a decimal more than 0")
    stop: bool = Field(False, description="stop the project's machines at 100 %")


class BudgetView(View):
    project: str
    amount: str
    stop: bool
    level: int  # the highest threshold (0, 80, 100) announced in the period below
    period_start: float  # 0: none announced yet
