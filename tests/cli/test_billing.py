"""`hutch usage`, `hutch invoice`, `hutch price`, `hutch budget` against the real controller app
in-process behind a real HTTP server (no node needed: the ledger rows are written as the meter
writes them), and the SDK's `client.usage` / `client.invoices` / `client.prices`, sync and
async. Bad input: a clear message and a non-zero exit."""

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.client import AsyncClient, Client
from hutch.client.errors import ApiError
from hutch.model.prices import period_of
from tests.api.conftest import api
from tests.api.test_billing import ledger, start_of_period
from tests.helpers.api import Api, served
from tests.helpers.cli import HUTCH, isolated_env

__all__ = ["api"]  # the fixture, for the tests here

PRICES = """\
[prices]
currency = "EUR"
rates = { vcpu_seconds = 0.036, egress_bytes = "0.05" }   # per vCPU-hour, per GiB
[prices.labels."tier=gold"]
vcpu_seconds = 0.072
"""


@pytest.fixture
async def url(api: Api) -> AsyncIterator[str]:
    async with served(api) as u:
        yield u


async def hutch(url: str, token: str, tmp: Path, *args: str) -> tuple[int, str, str]:
    """The CLI, as a process of its own (the server runs in this loop: never block it)."""
    env = isolated_env(tmp, tmp, HUTCH_URL=url, HUTCH_TOKEN=token)
    p = await asyncio.create_subprocess_exec(
        HUTCH, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_the_cli_sets_prices_shows_usage_and_invoices(
    api: Api, url: str, tmp_path: Path
) -> None:
    (tmp_path / "prices.toml").write_text(PRICES)
    t0 = start_of_period()
    await ledger(api, "alpha", "m-a", t0, 2, labels={"tier": "gold"}, vcpu_seconds=3600)
    await ledger(api, "alpha", "m-b", t0 + 86400, 1, vcpu_seconds=3600, egress_bytes=1 << 30)
    member = await api.token("alpha", "member")
    code, _, err = await hutch(
        url, api.admin, tmp_path, "price", "set", str(tmp_path / "prices.toml")
    )
    assert code == 0, err
    # A project's token reads its prices (floats in the TOML were read as exact decimals).
    code, out, err = await hutch(url, member, tmp_path, "price", "show")
    assert code == 0 and json.loads(out)["rates"]["vcpu_seconds"] == "0.036", err
    code, _, err = await hutch(url, member, tmp_path, "price", "set", str(tmp_path / "prices.toml"))
    assert code != 0 and "only system tokens may set prices" in err
    # Usage: a table, JSON and CSV; by machine, label, day.
    code, out, err = await hutch(url, member, tmp_path, "usage", "--by", "machine")
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["GROUP", "VCPU-SECONDS"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["m-a", "m-b"]
    code, out, _ = await hutch(url, member, tmp_path, "usage", "--by", "day", "-o", "csv")
    assert [r["records"] for r in csv.DictReader(io.StringIO(out))] == ["2", "1"]
    code, out, _ = await hutch(url, api.admin, tmp_path, "usage", "-p", "alpha", "-o", "json",
                               "--since", str(t0 + 86400))  # fmt: skip
    assert json.loads(out)["items"][0]["vcpu_seconds"] == "3600.000000"
    # Invoices: the draft, its lines; closed at the period's end; --html writes a page.
    code, out, err = await hutch(url, member, tmp_path, "invoice", "show", "draft")
    assert code == 0, err
    assert "total 0.23 EUR" in out  # 0.036 + 0.144 + 0.05
    # Each line names the unit its quantity is in: the price's, not the ledger's (seconds, bytes).
    assert ["egress", "GiB", "1.000000", "0.05", "0.05"] in [
        line.split() for line in out.splitlines()
    ]
    assert "seconds" not in out and "bytes" not in out
    await api.ctl.billing.close_due(period_of(t0, "month")[1] + 1)
    code, out, err = await hutch(url, member, tmp_path, "invoice", "ls")
    assert code == 0, err
    [closed] = [line.split()[0] for line in out.splitlines() if "closed" in line]
    page = tmp_path / "invoice.html"
    code, out, err = await hutch(
        url, member, tmp_path, "invoice", "show", closed, "--html", str(page)
    )
    assert code == 0 and "total 0.23 EUR" in out, err
    assert "vCPU-hours given, tier=gold" in page.read_text()
    # Credits and budgets are the system's; bad input a clear message, non-zero.
    code, out, err = await hutch(
        url, api.admin, tmp_path, "invoice", "credit", "alpha", "1.5", "outage"
    )
    assert code == 0 and out.startswith("cr"), err
    code, _, err = await hutch(url, api.admin, tmp_path, "budget", "set", "alpha", "5", "--stop")
    assert code == 0, err
    code, out, _ = await hutch(url, member, tmp_path, "budget", "show")  # its token's project
    assert json.loads(out)["stop"] is True
    for args, says in (
        (("usage", "--by", "week"), "--by 'week': use machine, label or day"),
        (("usage", "--since", "2026-12-02", "--until", "2026-12-01"), "since is after until"),
        (("usage", "--since", "soon"), "neither epoch seconds nor an ISO 8601 date"),
        (("invoice", "show", "in_nope"), "no invoice 'in_nope'"),
        (("budget", "set", "alpha", "5"), "only system tokens may set budgets"),
        (("usage", "-p", "beta"), "no project 'beta'"),
    ):
        code, _, err = await hutch(url, member, tmp_path, *args)
        assert code != 0 and says in err, (args, err)
    (tmp_path / "bad.toml").write_text('[prices]\nrates = { gpu_hours = "1" }\n')
    code, _, err = await hutch(url, api.admin, tmp_path, "price", "set", str(tmp_path / "bad.toml"))
    assert code != 0 and "unknown unit 'gpu_hours'" in err


async def test_the_sdk_sync_and_async(api: Api, url: str) -> None:
    t0 = start_of_period()
    await ledger(api, "alpha", "m-a", t0, 2, vcpu_seconds=1800)
    await api.call("PUT", "/v1/prices", json={"rates": {"vcpu_seconds": "1"}})
    reader = await api.token("alpha", "reader")
    async with AsyncClient(url, reader) as client:
        usage = await client.usage.get(since=t0, by="machine")
        assert [(r.group, r.vcpu_seconds) for r in usage.items] == [("m-a", "3600.000000")]
        assert (await client.usage.csv(by="day")).startswith("group,vcpu_seconds")
        draft = await client.invoices.get("draft")
        assert draft.total == "1.00" and await client.invoices.list() == []
        assert '<table class="invoice">' in await client.invoices.html("draft")
        with pytest.raises(ApiError, match="only system tokens may set prices"):
            await client.prices.set({"rates": {}})

    def sync() -> None:
        with Client(url, api.admin, project="alpha") as admin:
            assert admin.prices.get().rates == {"vcpu_seconds": "1"}
            admin.prices.set({"rates": {"vcpu_seconds": "2"}, "currency": "EUR"})
            admin.prices.set_budget("alpha", "10", stop=True)
            assert admin.prices.budget("alpha").amount == "10"
            assert admin.invoices.get("draft").total == "2.00"
            assert admin.usage.get().items[0].records == 2
        # A project with no usage owes 0.00, in cents like every total (it was "0").
        with Client(url, api.admin, project="default") as idle:
            assert idle.invoices.get("draft").total == "0.00"

    await asyncio.to_thread(sync)
