"""Prices, usage, invoices and budgets through the API, over ledger rows written as the meter
writes them (`store.usage.add`): the price book is the system's to set and a project's to read;
usage by machine, label and day in JSON and CSV; an invoice closed once (two leaders at once),
never changed after, a correction a credit line on the next; HTML that escapes; budgets' events
once a period and the stop at 100 %; another project's usage and invoices are not found.
(The arithmetic itself: tests/model/test_prices.py.)"""

import asyncio
import csv
import io
import json
import re
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch.model.errors import Invalid
from hutch.model.prices import period_of
from hutch.model.usage import UsageRecord
from hutch.services.billing import load_book
from tests.helpers.api import Api, close_api, open_api, served

BOOK = {
    "currency": "EUR",
    "rates": {"vcpu_seconds": "0.036", "egress_bytes": "0.05", "starts": "0.01"},
    "plans": {"small": {"included": {"vcpu_seconds": "1"}, "fee": "2.00"}},
    "projects": {"alpha": {"plan": "small"}},
    "labels": {"tier=gold": {"vcpu_seconds": "0.072"}},
}


async def project_id(api: Api, name: str) -> str:
    r = await api.call("GET", f"/v1/projects/{name}")
    return str(r.json()["id"])


async def ledger(
    api: Api, project: str, machine: str, start: float, hours: int, *,
    labels: dict[str, str] | None = None, **per_hour: Any,
) -> None:  # fmt: skip
    """`hours` hourly rows of a machine, as the meter writes them."""
    pid = await project_id(api, project)
    rows = [
        UsageRecord(f"t:{machine}:{h}", pid, machine, start + h * 3600, start + (h + 1) * 3600,
                    machine_id=machine, labels=labels or {}, **per_hour)
        for h in range(hours)
    ]  # fmt: skip
    async with api.ctl.store.write() as tx:
        assert await tx.usage.add(rows) == hours


def start_of_period() -> float:
    return period_of(time.time(), "month")[0]


async def test_the_price_book_is_the_systems_to_set_and_a_projects_to_read(api: Api) -> None:
    reader = await api.token("alpha", "reader")
    admin = await api.token("alpha", "admin")
    r = await api.call("PUT", "/v1/prices", json=BOOK)
    assert r.status_code == 200, r.text
    assert (await api.call("GET", "/v1/prices")).json()["labels"] == BOOK["labels"]
    # A project's token reads its effective prices: the book's, its plan's over them.
    mine = (await api.call("GET", "/v1/prices", reader)).json()
    assert mine["plan"] == "small" and mine["included"] == {"vcpu_seconds": "1"}
    assert mine["rates"]["vcpu_seconds"] == "0.036" and mine["fee"] == "2.00"
    assert {"unit": "egress_bytes", "priced_per": "GiB"} in mine["units"]
    # ...but not set them, even as its admin; nor read the whole book or another's prices.
    r = await api.call("PUT", "/v1/prices", admin, json={"rates": {}})
    assert r.status_code == 403 and "system tokens" in r.json()["detail"]
    r = await api.call("GET", "/v1/prices", reader, params={"project": "beta"})
    assert r.status_code == 404
    assert (await api.call("GET", "/v1/prices", params={"project": "beta"})).json()["plan"] == ""
    # Bad prices: a clear 4xx naming the value, and the book as it was.
    for bad, says in (
        ({"rates": {"gpu_seconds": "1"}}, "unknown unit 'gpu_seconds'"),
        ({"rates": {"vcpu_seconds": "-0.5"}}, "at least 0"),
        ({"plans": {"p": {"fee": "ten"}}}, "not a decimal number"),
        ({"plan": "gold"}, "no plan 'gold'"),
    ):
        r = await api.call("PUT", "/v1/prices", json=bad)
        assert r.status_code == 400 and says in r.json()["detail"], r.text
    r = await api.call("PUT", "/v1/prices", json={"rates": {"vcpu_seconds": 0.1}})
    assert r.status_code == 422  # a JSON number: floats are refused
    assert (await api.call("GET", "/v1/prices", reader)).json()["plan"] == "small"


async def test_the_prices_file_is_the_book_at_start(tmp_path: Path) -> None:
    """docs/billing.md's example file, as the `prices_file` setting: its numbers exact."""
    doc = (Path(__file__).parents[2] / "docs" / "billing.md").read_text()
    found = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert found
    path = tmp_path / "prices.toml"
    path.write_text(found.group(1).replace('"0.003"', "0.003"))  # a TOML float: still exact
    state = Path(tempfile.mkdtemp(prefix="hp", dir="/tmp"))
    api, _ = await open_api(state, prices_file=path)
    try:
        await api.project("acme")
        r = await api.call("GET", "/v1/prices", params={"project": "acme"})
        assert r.status_code == 200, r.text
        prices = r.json()
        assert (prices["currency"], prices["plan"], prices["fee"]) == ("EUR", "pro", "50")
        assert prices["rates"]["vcpu_seconds"] == "0.015"
        assert prices["rates"]["memory_gib_seconds"] == "0.003"
        assert prices["labels"]["tier=batch"]["vcpu_seconds"] == "0.01"
    finally:
        await close_api(api)
    path.write_text('[prices]\nrates = { vcpu_seconds = "-1" }\n')
    with pytest.raises(Invalid, match=r"prices file .*prices.rates.vcpu_seconds: '-1' must be"):
        load_book(path)  # what the controller's start raises


async def test_usage_by_machine_label_and_day_as_json_and_csv(api: Api) -> None:
    t0 = start_of_period()
    await ledger(api, "alpha", "m-a", t0, 3, labels={"tier": "gold"}, vcpu_seconds=3600, starts=1)
    await ledger(api, "alpha", "m-b", t0 + 86400, 2, vcpu_seconds=1800, egress_bytes=1 << 20)
    await ledger(api, "beta", "m-c", t0, 1, vcpu_seconds=10)
    token = await api.token("alpha", "reader")
    r = await api.call("GET", "/v1/usage", token)
    assert r.status_code == 200, r.text
    [whole] = r.json()["items"]
    assert whole["vcpu_seconds"] == "14400.000000" and whole["records"] == 5
    assert whole["starts"] == 3 and whole["egress_bytes"] == 2 << 20
    r = await api.call("GET", "/v1/usage", token, params={"by": "machine"})
    by = {i["group"]: i for i in r.json()["items"]}
    assert by.keys() == {"m-a", "m-b"} and Decimal(by["m-b"]["vcpu_seconds"]) == 3600
    labels = (await api.call("GET", "/v1/usage", token, params={"by": "label"})).json()["items"]
    assert {i["group"] for i in labels} == {"", "tier=gold"}
    days = (await api.call("GET", "/v1/usage", token, params={"by": "day"})).json()["items"]
    assert len(days) == 2
    # since/until as ISO dates or epoch seconds; [since, until) by each row's start.
    r = await api.call("GET", "/v1/usage", token, params={"since": t0 + 86400, "until": t0 + 2e5})
    assert r.json()["items"][0]["records"] == 2
    # CSV by ?format=csv or by Accept.
    for params, headers in (({"format": "csv"}, {}), ({}, {"Accept": "text/csv"})):
        r = await api.http.get("/v1/usage", params={"by": "machine", **params},
                               headers={"Authorization": f"Bearer {token}", **headers})  # fmt: skip
        assert r.headers["content-type"].startswith("text/csv"), r.text
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["group"] for row in rows] == ["m-a", "m-b"]
    # Another project's usage: not found, as everywhere; beta's own it sees.
    beta = await api.token("beta", "reader")
    assert (
        await api.call("GET", "/v1/usage", beta, params={"project": "alpha"})
    ).status_code == 404
    assert (await api.call("GET", "/v1/usage", beta)).json()["items"][0]["records"] == 1
    # Bad input: a clear 4xx.
    for params, says in (
        ({"since": "2026-12-02", "until": "2026-12-01"}, "since is after until"),
        ({"since": "yesterday"}, "neither epoch seconds nor an ISO 8601 date"),
    ):
        r = await api.call("GET", "/v1/usage", token, params=params)
        assert r.status_code == 400 and says in r.json()["detail"], r.text
    assert (await api.call("GET", "/v1/usage", token, params={"by": "week"})).status_code == 422


async def test_an_invoice_is_closed_once_never_changed_and_corrected_by_credit(
    api_both: Api,
) -> None:
    api = api_both
    assert (await api.call("PUT", "/v1/prices", json=BOOK)).status_code == 200
    t0 = start_of_period()
    # 3 h of one vCPU at 0.036 less the plan's 1 included: 0.072; 2 gold hours at 0.072: 0.144;
    # 1.5 GiB out at 0.05: 0.075 -> 0.08 (half to even); one start: 0.01; the plan's fee 2.00.
    await ledger(api, "alpha", "m-a", t0, 3, vcpu_seconds=3600, egress_bytes=1 << 29)
    await ledger(api, "alpha", "m-g", t0, 2, labels={"tier": "gold"}, vcpu_seconds=3600)
    await ledger(api, "alpha", "m-s", t0, 1, starts=1)
    token = await api.token("alpha", "reader")
    draft = (await api.call("GET", "/v1/invoices/draft", token)).json()
    assert draft["state"] == "open" and draft["total"] == "2.30", draft
    # The period ends: two leaders close it at once; one invoice a project (default, alpha and
    # beta), and no other for the period.
    later = period_of(t0, "month")[1] + 60
    closed = await asyncio.gather(api.ctl.billing.close_due(later),
                                  api.ctl.billing.close_due(later))  # fmt: skip
    assert sum(closed) == 3
    assert await api.ctl.billing.close_due(later) == 0
    page = (await api.call("GET", "/v1/invoices", token)).json()
    [invoice] = page["items"]
    assert invoice["state"] == "closed" and invoice["total"] == "2.30"
    assert [line["amount"] for line in invoice["lines"]] == ["0.07", "0.08", "0.01", "0.14", "2.00"]
    assert sum(Decimal(line["amount"]) for line in invoice["lines"]) == Decimal(invoice["total"])
    # A correction: a credit (system tokens only) lands on the next invoice; this one stays.
    reason = "<script>alert(1)</script> outage"
    r = await api.call(
        "POST", "/v1/projects/alpha/credits", token, json={"amount": "1", "reason": "x"}
    )
    assert r.status_code == 403
    r = await api.call("POST", "/v1/projects/alpha/credits", json={"amount": "-1", "reason": "x"})
    assert r.status_code == 400 and "at least 0" in r.json()["detail"]
    r = await api.call(
        "POST", "/v1/projects/alpha/credits", json={"amount": "0.50", "reason": reason}
    )
    assert r.status_code == 201, r.text
    # Usage recorded late, in the closed period, does not change it either.
    await ledger(api, "alpha", "m-late", t0 + 10, 1, vcpu_seconds=3600)
    r = await api.call("GET", f"/v1/invoices/{invoice['id']}", token)
    assert r.json() == invoice
    await api.ctl.billing.close_due(period_of(later, "month")[1] + 60)
    newest = (await api.call("GET", "/v1/invoices", token)).json()["items"][0]
    assert newest["id"] != invoice["id"]
    assert [(x["kind"], x["amount"]) for x in newest["lines"]] == [
        ("fee", "2.00"),
        ("credit", "-0.50"),
    ]
    assert newest["total"] == "1.50"
    # HTML that prints, everything escaped: `?format=html`, `.html` and Accept alike.
    for path, params, headers in (
        (newest["id"], {"format": "html"}, {}),
        (newest["id"] + ".html", {}, {}),
        (newest["id"], {}, {"Accept": "text/html"}),
    ):
        r = await api.http.get(f"/v1/invoices/{path}", params=params,
                               headers={"Authorization": f"Bearer {token}", **headers})  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "&lt;script&gt;" in r.text and "<script>" not in r.text
        assert "@media print" in r.text and "1.50" in r.text
    # Tenancy: beta's token never sees alpha's invoices (not found), its own list is empty.
    beta = await api.token("beta", "reader")
    assert (await api.call("GET", f"/v1/invoices/{invoice['id']}", beta)).status_code == 404
    assert (await api.call("GET", "/v1/invoices", beta, params={"project": "alpha"})
            ).status_code == 404  # fmt: skip
    assert all(
        i["project"] == "beta"
        for i in (await api.call("GET", "/v1/invoices", beta)).json()["items"]
    )


async def events_of(url: str, token: str, last: str) -> list[dict[str, Any]]:
    """The project's events from the first, until one whose message has `last` (10 s at most)."""
    seen: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "0"}
    async with asyncio.timeout(10), httpx.AsyncClient(timeout=None) as http, http.stream(
        "GET", f"{url}/v1/events", headers=headers
    ) as r:  # fmt: skip
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if last in seen[-1]["message"]:
                    return seen
    return seen


async def test_budgets_announce_80_and_100_once_and_stop_the_machines(api: Api) -> None:
    assert (await api.call("PUT", "/v1/prices", json={"rates": {"vcpu_seconds": "1"}})).is_success
    member = await api.token("alpha", "member")
    r = await api.call("PUT", "/v1/projects/alpha/budget", member, json={"amount": "10"})
    assert r.status_code == 403  # the provider's to set
    for bad in ("0", "-3", "lots"):
        r = await api.call("PUT", "/v1/projects/alpha/budget", json={"amount": bad})
        assert r.status_code == 400, r.text
    r = await api.call("PUT", "/v1/projects/alpha/budget", json={"amount": "10", "stop": True})
    assert r.status_code == 200 and r.json()["level"] == 0
    r = await api.call("PUT", "/v1/projects/beta/budget", json={"amount": "10"})
    assert r.status_code == 200  # beta's, without stop
    for project in ("alpha", "beta"):
        token = member if project == "alpha" else await api.token("beta", "member")
        assert (await api.machine(token, name="web")).status_code == 201
        await api.placed(token, "web")
    t0, now = start_of_period(), time.time()
    billing = api.ctl.billing
    await ledger(api, "alpha", "m-1", t0, 8, vcpu_seconds=3600)  # 8 of 10
    await ledger(api, "beta", "m-2", t0, 12, vcpu_seconds=3600)  # 12 of 10, no stop
    assert await billing.check_budgets(now) == 2
    assert await billing.check_budgets(now) == 0  # once a period
    budget = (await api.call("GET", "/v1/projects/alpha/budget", member)).json()
    assert budget["level"] == 80 and budget["period_start"] == t0
    m = (await api.call("GET", "/v1/machines/web", member)).json()
    assert m["desired"] != "stopped"  # 80 %: an event, nothing stopped
    await ledger(api, "alpha", "m-3", t0, 2, vcpu_seconds=3600)  # 10 of 10
    assert await billing.check_budgets(now) == 1
    assert await billing.check_budgets(now) == 0
    m = (await api.call("GET", "/v1/machines/web", member)).json()
    assert m["desired"] == "stopped", m
    beta = await api.token("beta", "reader")
    assert (await api.call("GET", "/v1/machines/web", beta)).json()["desired"] == "running"
    # Started again by the project, with the budget still spent: stopped again at the next
    # check (no second event), until the budget is raised, removed or the period ends.
    assert (await api.call("POST", "/v1/machines/web/start", member)).is_success
    assert await billing.check_budgets(now) == 0
    m = (await api.call("GET", "/v1/machines/web", member)).json()
    assert m["desired"] == "stopped", m
    async with served(api) as url:
        seen = await events_of(url, member, "budget spent")
        budget_events = [e for e in seen if e["kind"].startswith("budget")]
        assert [e["kind"] for e in budget_events] == ["budget.80", "budget.100"]
        assert "10.00 USD spent of a budget of 10 this period (100 %)" in seen[-1]["message"]
        assert seen[-1]["kind"] == "machine.state" and seen[-1]["object"] == m["id"]
        beta_kinds = [e["kind"] for e in await events_of(url, beta, "(100 %)")]
        assert "budget.80" not in beta_kinds and beta_kinds.count("budget.100") == 1
    # Another project's budget: not found.
    assert (await api.call("GET", "/v1/projects/alpha/budget", beta)).status_code == 404
