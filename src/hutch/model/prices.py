"""The price book and the arithmetic of an invoice: exact decimals, one stated rounding rule.

Rounding (the whole rule, so a customer can redo every line):
1. The ledger's quantities are summed over the period in the ledger's units (`vcpu_seconds`...),
   converted to the unit a price is given in (`UNITS`: per vCPU-hour, per GiB of egress...) and
   rounded to `QUANTITY_PLACES` decimal places, half to even.
2. What the plan includes of a unit is taken off that unit's quantity (from the project's own
   rates first, then from label-priced usage in the book's order); never below zero.
3. A line's amount is its quantity times its unit price rounded to cents (`CENT`), half to even.
4. The total is the sum of the lines' amounts (fee and credit lines included): exact, no further
   rounding.
"""

import calendar
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from hutch.model.errors import Invalid
from hutch.model.usage import UsageTotal

QUANTITY_PLACES = Decimal("0.000001")
CENT = Decimal("0.01")
PRICE_PLACES = 10  # at most this many decimal places in a unit price
MAX_PRICE = Decimal(10) ** 9


@dataclass(frozen=True, slots=True)
class Unit:
    """A ledger quantity and the unit its price is given in."""

    field: str  # the ledger's column
    priced_per: str  # what one unit of price buys
    scale: Decimal  # ledger quantity / scale = priced quantity
    shown: str  # an invoice line's name: what its quantity counts, in the priced unit


UNITS: dict[str, Unit] = {
    u.field: u
    for u in (
        Unit("vcpu_seconds", "vCPU-hour", Decimal(3600), "vCPU-hours given"),
        Unit("cpu_seconds", "CPU-hour", Decimal(3600), "CPU-hours used"),
        Unit("memory_gib_seconds", "GiB-hour", Decimal(3600), "memory GiB-hours"),
        Unit("storage_gib_hours", "GiB-hour", Decimal(1), "storage GiB-hours"),
        Unit("egress_bytes", "GiB", Decimal(1 << 30), "egress GiB"),
        Unit("starts", "start", Decimal(1), "starts"),
    )
}


def money(value: object, what: str) -> Decimal:
    """A non-negative decimal amount from a string or number (never a float: a float's binary
    error would be priced); Invalid naming `what` otherwise."""
    if isinstance(value, float | bool):
        raise Invalid(f'{what}: give prices as strings ("0.02"), not floating-point numbers')
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise Invalid(f"{what}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise Invalid(f"{what}: {value!r} must be a number of at least 0")
    if d >= MAX_PRICE or -d.as_tuple().exponent > PRICE_PLACES:  # type: ignore[operator]
        raise Invalid(f"{what}: {value!r} must be below 10^9 with at most {PRICE_PLACES} decimals")
    return d


def _rates(raw: object, what: str) -> dict[str, Decimal]:
    if not isinstance(raw, Mapping):
        raise Invalid(f"{what}: expected a table of unit = price")
    out = {}
    for unit, price in raw.items():
        if unit not in UNITS:
            raise Invalid(f"{what}: unknown unit {unit!r} (units: {', '.join(UNITS)})")
        out[unit] = money(price, f"{what}.{unit}")
    return out


def _table(raw: object, what: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise Invalid(f"{what}: expected a table")
    if extra := set(raw) - keys:
        raise Invalid(f"{what}: unknown key(s) {', '.join(sorted(extra))}")
    return raw


def _entries(doc: Mapping[str, Any], key: str) -> list[tuple[str, Any]]:
    """The named entries of the table `doc[key]` (plans, projects, labels)."""
    raw = doc.get(key, {})
    if not isinstance(raw, Mapping):
        raise Invalid(f"prices.{key}: expected a table")
    return [(str(k), v) for k, v in raw.items()]


_LABEL = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}=[A-Za-z0-9_.\-/]{0,63}$")


@dataclass(frozen=True, slots=True)
class Plan:
    rates: Mapping[str, Decimal] = field(default_factory=dict)  # over the book's
    included: Mapping[str, Decimal] = field(default_factory=dict)  # per period, priced units
    fee: Decimal = Decimal(0)  # per period


@dataclass(frozen=True, slots=True)
class ProjectPrices:
    plan: str = ""  # "" : the book's default plan
    rates: Mapping[str, Decimal] = field(default_factory=dict)  # over the plan's


@dataclass(frozen=True, slots=True)
class PriceBook:
    """What the operator sets (`PUT /v1/prices`, or the `prices_file` setting's TOML)."""

    currency: str = "USD"
    rates: Mapping[str, Decimal] = field(default_factory=dict)  # a unit not here is free
    plans: Mapping[str, Plan] = field(default_factory=dict)
    plan: str = ""  # the default plan ("" : none)
    projects: Mapping[str, ProjectPrices] = field(default_factory=dict)  # by project name
    # "key=value" -> rates for usage of machines with that label; the first that matches wins.
    labels: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)

    @staticmethod
    def parse(raw: object) -> "PriceBook":
        """From the JSON or TOML document; Invalid with the path of the first bad value."""
        doc = _table(raw, "prices", {"currency", "rates", "plans", "plan", "projects", "labels"})
        currency = doc.get("currency", "USD")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise Invalid(f"prices.currency: {currency!r} is not a 3-letter currency code")
        plans = {}
        for name, raw_plan in _entries(doc, "plans"):
            where = f"prices.plans.{name}"
            p = _table(raw_plan, where, {"rates", "included", "fee"})
            plans[name] = Plan(
                _rates(p.get("rates", {}), f"{where}.rates"),
                _rates(p.get("included", {}), f"{where}.included"),
                money(p.get("fee", "0"), f"{where}.fee"),
            )
        plan = doc.get("plan", "")
        if plan and plan not in plans:
            raise Invalid(f"prices.plan: no plan {plan!r} in prices.plans")
        projects = {}
        for name, raw_project in _entries(doc, "projects"):
            where = f"prices.projects.{name}"
            p = _table(raw_project, where, {"plan", "rates"})
            if p.get("plan", "") and p["plan"] not in plans:
                raise Invalid(f"{where}.plan: no plan {p['plan']!r} in prices.plans")
            projects[name] = ProjectPrices(p.get("plan", ""), _rates(p.get("rates", {}), where))
        labels = {}
        for label, r in _entries(doc, "labels"):
            if not _LABEL.match(label):
                raise Invalid(f"prices.labels: {label!r} is not key=value")
            labels[label] = _rates(r, f"prices.labels.{label}")
        return PriceBook(currency, _rates(doc.get("rates", {}), "prices.rates"), plans, plan,
                         projects, labels)  # fmt: skip

    def document(self) -> dict[str, Any]:
        """The book as parse() reads it (decimals as strings)."""

        def s(rates: Mapping[str, Decimal]) -> dict[str, str]:
            return {k: str(v) for k, v in rates.items()}

        return {
            "currency": self.currency,
            "rates": s(self.rates),
            "plans": {
                n: {"rates": s(p.rates), "included": s(p.included), "fee": str(p.fee)}
                for n, p in self.plans.items()
            },
            "plan": self.plan,
            "projects": {
                n: {"plan": p.plan, "rates": s(p.rates)} for n, p in self.projects.items()
            },
            "labels": {k: s(v) for k, v in self.labels.items()},
        }

    def effective(self, project: str) -> "Prices":
        """What the project pays: book rates, over them its plan's, over those its own."""
        own = self.projects.get(project, ProjectPrices())
        plan_name = own.plan or self.plan
        plan = self.plans.get(plan_name, Plan())
        rates = {**self.rates, **plan.rates, **own.rates}
        labels = tuple((k, {**rates, **v}) for k, v in self.labels.items())
        return Prices(self.currency, plan_name, rates, dict(plan.included), plan.fee, labels)


@dataclass(frozen=True, slots=True)
class Prices:
    """One project's effective prices."""

    currency: str
    plan: str
    rates: Mapping[str, Decimal]
    included: Mapping[str, Decimal]
    fee: Decimal
    labels: tuple[tuple[str, Mapping[str, Decimal]], ...]  # first match wins

    def label_of(self, labels: Mapping[str, str]) -> str:
        """The label whose prices apply to usage of a machine with `labels` ("" : none)."""
        for label, _ in self.labels:
            key, _, value = label.partition("=")
            if labels.get(key) == value:
                return label
        return ""


@dataclass(frozen=True, slots=True)
class Line:
    kind: str  # "usage" | "fee" | "credit"
    description: str
    unit: str  # the field for usage lines, "" otherwise
    quantity: Decimal  # in `priced_per` units, after what the plan includes
    unit_price: Decimal
    amount: Decimal  # quantity times unit_price, to cents (negative for credits)
    label: str = ""  # usage priced by this label's rates


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def usage_lines(
    prices: Prices, usage: Sequence[tuple[Mapping[str, str], UsageTotal]]
) -> list[Line]:
    """The usage lines of an invoice: `usage` is (labels, the ledger's sums for usage with
    those labels) pairs; grouped by the label whose prices apply, by the rule in this module's
    docstring."""
    groups: dict[str, dict[str, Decimal]] = {}
    for labels, sums in usage:
        group = groups.setdefault(prices.label_of(labels), {})
        for unit in UNITS:
            group[unit] = group.get(unit, Decimal(0)) + Decimal(getattr(sums, unit))
    order = ["", *(label for label, _ in prices.labels)]
    label_rates = dict(prices.labels)
    left = dict(prices.included)
    lines = []
    for label in order:
        if label not in groups:
            continue
        rates = label_rates.get(label, prices.rates)
        for unit, u in UNITS.items():
            raw = groups[label].get(unit, Decimal(0))
            if not raw:
                continue
            q = (raw / u.scale).quantize(QUANTITY_PLACES, rounding=ROUND_HALF_EVEN)
            free = min(q, left.get(unit, Decimal(0)))
            left[unit] = left.get(unit, Decimal(0)) - free
            q -= free
            price = rates.get(unit, Decimal(0))
            desc = u.shown + (f", {label}" if label else "")
            if free:
                desc += f", {free} included"
            lines.append(Line("usage", desc, unit, q, price, cents(q * price), label))
    if prices.fee:
        lines.append(Line("fee", f"plan {prices.plan}", "", Decimal(1), prices.fee, prices.fee))
    return lines


def credit_line(amount: Decimal, reason: str) -> Line:
    return Line("credit", f"credit: {reason}", "", Decimal(1), -amount, -amount)


def total(lines: Sequence[Line]) -> Decimal:
    return sum((line.amount for line in lines), Decimal("0.00"))  # in cents, lines or none


# -- periods ---------------------------------------------------------------------------------

MONTH = "month"


def period_of(t: float, spec: str) -> tuple[float, float]:
    """The [start, end) of the period holding the instant `t` (epoch s, UTC): `spec` is
    `month` (calendar months) or `day`."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    if spec == MONTH:
        start = dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
        days = calendar.monthrange(d.year, d.month)[1]
        end = start + dt.timedelta(days=days)
    else:
        start = dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)
        end = start + dt.timedelta(days=1)
    return start.timestamp(), end.timestamp()


def budget_level(spent: Decimal, budget: Decimal) -> int:
    """How far into its budget a project is: 0, 80 or 100 (percent thresholds passed)."""
    if spent >= budget:
        return 100
    return 80 if spent * 100 >= budget * 80 else 0


@dataclass(frozen=True, slots=True)
class Invoice:
    """A project's bill for one period: open (a draft, computed when asked) until the leader
    closes it at the period's end; a closed invoice is stored and never changes."""

    id: str  # "" for a draft
    project_id: str
    period_start: float
    period_end: float
    currency: str
    lines: tuple[Line, ...]
    total: Decimal
    closed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Credit:
    """A correction the operator grants: a credit line on the project's next closed invoice."""

    id: str
    project_id: str
    amount: Decimal
    reason: str
    created_at: float
    invoice_id: str = ""  # the invoice that carries it ("" : not closed yet)


@dataclass(frozen=True, slots=True)
class Budget:
    project_id: str
    amount: Decimal  # per period
    stop: bool  # stop the project's machines at 100 %
    period_start: float = 0.0  # the period `level` is of
    level: int = 0  # the highest threshold (0, 80, 100) already announced in that period


ROUNDING = (
    "Quantities are summed over the period, converted to the price's unit and rounded to 6 "
    "decimal places (half to even); a line's amount is quantity times unit price rounded to the "
    "cent (half to even); the total is the sum of the lines' amounts."
)


def parse_instant(text: str, what: str) -> float:
    """Epoch seconds from a number of them or an ISO 8601 date or time (UTC unless it says)."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        pass
    else:
        if not number.is_finite() or abs(number) > 10**11:
            raise Invalid(f"{what}: {text!r} is no time", param=what)
        return float(number)
    try:
        d = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            f"{what}: {text!r} is neither epoch seconds nor an ISO 8601 date (2026-12-01)",
            param=what,
        ) from None
    return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()
