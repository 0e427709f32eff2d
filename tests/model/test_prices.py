"""The arithmetic of an invoice (hutch.model.prices): exact decimals, the stated rounding, plans'
included amounts, project and label overrides, and the refusals of a bad price book."""

from decimal import Decimal

import pytest

from hutch.model.errors import Invalid
from hutch.model.prices import PriceBook, budget_level, period_of, total, usage_lines
from hutch.model.usage import UsageTotal

BOOK = {
    "currency": "EUR",
    "rates": {"vcpu_seconds": "0.036", "egress_bytes": "0.05", "starts": "0.001"},
    "plans": {"small": {"included": {"vcpu_seconds": "1"}, "fee": "5.00"}},
    "projects": {"acme": {"plan": "small", "rates": {"egress_bytes": "0.04"}}},
    "labels": {"tier=gold": {"vcpu_seconds": "0.072"}},
}


def sums(**q: object) -> UsageTotal:
    return UsageTotal("p", "", **q)  # type: ignore[arg-type]


def test_lines_are_quantity_times_price_to_the_cent_and_add_up() -> None:
    prices = PriceBook.parse(BOOK).effective("acme")
    assert prices.plan == "small" and prices.rates["egress_bytes"] == Decimal("0.04")
    usage = [
        ({}, sums(vcpu_seconds=Decimal(7200), egress_bytes=3 << 30, starts=5)),
        ({"tier": "gold", "app": "x"}, sums(vcpu_seconds=Decimal(3600))),
        ({"tier": "silver"}, sums(vcpu_seconds=Decimal(1800))),  # no override: the project's
    ]
    lines = usage_lines(prices, usage)
    by = {(line.unit, line.label): line for line in lines if line.kind == "usage"}
    # 2.5 vCPU-hours at the project's price, less the plan's 1 included: 1.5 x 0.036 = 0.054
    # -> 0.05 (half to even); gold's hour at 0.072 -> 0.07; 3 GiB at 0.04; 5 starts at 0.001.
    assert by["vcpu_seconds", ""].quantity == Decimal("1.5")
    assert by["vcpu_seconds", ""].amount == Decimal("0.05")
    assert by["vcpu_seconds", "tier=gold"].amount == Decimal("0.07")
    assert by["egress_bytes", ""].amount == Decimal("0.12")
    assert by["starts", ""].amount == Decimal("0.00")  # 0.005 -> 0.00: half to even
    fee = next(line for line in lines if line.kind == "fee")
    assert fee.amount == Decimal("5.00")
    for line in lines:
        assert line.amount == (line.quantity * line.unit_price).quantize(Decimal("0.01"))
    assert total(lines) == Decimal("5.24") == sum(line.amount for line in lines)


def test_a_project_without_overrides_pays_the_book() -> None:
    prices = PriceBook.parse(BOOK).effective("other")
    assert prices.plan == "" and not prices.included and prices.fee == 0
    [line] = usage_lines(prices, [({}, sums(vcpu_seconds=Decimal("0.5")))])
    # 0.5 s is 0.000139 vCPU-hours (6 places, half to even): 0.000005 EUR, 0.00 to the cent.
    assert line.quantity == Decimal("0.000139") and line.amount == 0


def test_the_book_reads_back_as_it_was_written() -> None:
    book = PriceBook.parse(BOOK)
    assert PriceBook.parse(book.document()) == book


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"rates": {"gpu_seconds": "1"}}, "unknown unit 'gpu_seconds'"),
        ({"rates": {"cpu_seconds": "-1"}}, "must be a number of at least 0"),
        ({"rates": {"cpu_seconds": 0.1}}, "not floating-point"),
        ({"rates": {"cpu_seconds": "abc"}}, "not a decimal number"),
        ({"rates": {"cpu_seconds": "0.00000000001"}}, "at most 10 decimals"),
        ({"currency": "euro"}, "3-letter currency"),
        ({"plan": "gold"}, "no plan 'gold'"),
        ({"projects": {"a": {"plan": "nope"}}}, "no plan 'nope'"),
        ({"labels": {"tier": {}}}, "is not key=value"),
        ({"color": "red"}, "unknown key(s) color"),
    ],
)
def test_a_bad_book_is_refused_naming_where(doc: dict[str, object], says: str) -> None:
    with pytest.raises(Invalid, match=says.replace("(", r"\(").replace(")", r"\)")):
        PriceBook.parse(doc)


def test_periods_and_budget_levels() -> None:
    assert period_of(1_764_547_200.0 + 5, "month") == (1_764_547_200.0, 1_767_225_600.0)  # Dec 2025
    assert period_of(1_764_547_200.0 + 5, "day") == (1_764_547_200.0, 1_764_633_600.0)
    assert [budget_level(Decimal(s), Decimal(10)) for s in ("7.99", "8", "9.99", "10", "12")] == [
        0, 80, 80, 100, 100,
    ]  # fmt: skip
