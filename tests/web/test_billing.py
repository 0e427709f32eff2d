"""/ui/usage and /ui/invoices: the same breakdowns, CSV and invoice pages as the API's."""

import re

from hutch.model.prices import period_of
from tests.api.test_billing import BOOK, ledger, start_of_period
from tests.helpers.api import Api
from tests.helpers.webpages import alert, signed_in


def _groups(page: str) -> list[str]:
    body = page.split('<table id="usage-table">')[1].split("</tbody>", maxsplit=1)[0]
    return re.findall(r"<tr>\s*<td>([^<]*)</td>", body)


async def test_usage_by_machine_label_and_day_with_its_csv(api: Api) -> None:
    t0 = start_of_period()
    await ledger(api, "alpha", "m-a", t0, 3, labels={"tier": "gold"}, vcpu_seconds=3600, starts=1)
    await ledger(api, "alpha", "m-b", t0 + 86400, 2, vcpu_seconds=1800)
    await ledger(api, "beta", "m-c", t0, 1, vcpu_seconds=10)
    reader = await signed_in(api, "alpha", "reader")
    page = (await reader.get("/ui/usage")).text
    assert _groups(page) == ["alpha"] and "14400.000000" in page
    assert 'href="/ui/usage.csv?since=&amp;until=&amp;by="' in page
    assert _groups((await reader.get("/ui/usage", params={"by": "machine"})).text) == ["m-a", "m-b"]
    labels = _groups((await reader.get("/ui/usage", params={"by": "label"})).text)
    assert sorted(labels) == ["(none)", "tier=gold"]
    assert len(_groups((await reader.get("/ui/usage", params={"by": "day"})).text)) == 2
    since = {"since": str(t0 + 86400), "by": "machine"}
    assert _groups((await reader.get("/ui/usage", params=since)).text) == ["m-b"]
    # The download is the API's CSV, byte for byte.
    r = await reader.get("/ui/usage.csv", params={"by": "machine"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="usage-alpha-by-machine.csv"'
    token = await api.token("alpha", "reader")
    same = await api.call("GET", "/v1/usage", token, params={"by": "machine", "format": "csv"})
    assert r.text == same.text and r.text.count("\n") == 3
    # Bad input: a 400 page that says why; another project's usage is not there.
    r = await reader.get("/ui/usage", params={"since": "yesterday"})
    assert r.status_code == 400 and "neither epoch seconds nor an ISO 8601 date" in alert(r.text)
    assert (await reader.get("/ui/usage", params={"by": "week"})).status_code == 400
    assert (await reader.get("/ui/usage", params={"project": "beta"})).status_code == 404
    beta = await signed_in(api, "beta", "reader")
    assert "10.000000" in (await beta.get("/ui/usage")).text
    await reader.close()
    await beta.close()


async def test_invoices_listed_and_shown_as_the_api_renders_them(api: Api) -> None:
    assert (await api.call("PUT", "/v1/prices", json=BOOK)).status_code == 200
    t0 = start_of_period()
    await ledger(api, "alpha", "m-a", t0, 3, vcpu_seconds=3600, egress_bytes=1 << 29)
    await api.ctl.billing.close_due(period_of(t0, "month")[1] + 60)
    reader = await signed_in(api, "alpha", "reader")
    page = (await reader.get("/ui/invoices")).text
    ids = re.findall(r'<td><a href="/ui/invoices/([^"]+)">[^<]+</a></td>', page)
    assert ids[0] == "draft" and len(ids) == 2
    closed = ids[1]
    page = (await reader.get(f"/ui/invoices/{closed}")).text
    assert '<table class="invoice">' in page and "0.07" in page and "2.00" in page
    assert "closed" in page and f'href="/ui/invoices/{closed}.html"' in page
    token = await api.token("alpha", "reader")
    printable = await reader.get(f"/ui/invoices/{closed}.html")
    api_html = await api.call("GET", f"/v1/invoices/{closed}.html", token)
    assert printable.text == api_html.text and "<!doctype html>" in printable.text
    assert "open" in (await reader.get("/ui/invoices/draft")).text
    r = await api.call("PUT", "/v1/projects/alpha/budget", json={"amount": "50", "stop": True})
    assert r.status_code == 200, r.text
    page = (await reader.get("/ui/invoices")).text
    assert "Budget: 50 EUR a period; at 100 % the project's machines are stopped" in page
    # Another project's invoice, or none such: 404.
    beta = await signed_in(api, "beta", "reader")
    r = await beta.get(f"/ui/invoices/{closed}")
    assert r.status_code == 404 and closed in alert(r.text)
    assert (await reader.get("/ui/invoices/nosuch")).status_code == 404
    await reader.close()
    await beta.close()
