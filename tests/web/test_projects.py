"""/ui/projects: a project's quota, its tokens (admins), every project (system tokens)."""

import re

from tests.helpers.api import Api
from tests.helpers.web import Visitor
from tests.helpers.webpages import alert, signed_in


async def test_an_admin_creates_a_token_seen_once_and_revokes_it(api: Api) -> None:
    admin = await signed_in(api, "alpha", "admin")
    page = (await admin.get("/ui/projects")).text
    assert "<h1>Project alpha</h1>" in page and '<table id="tokens">' in page
    assert page.count("(signed in with it)") == 1  # revoking it would end this session
    made = {"role": "member", "label": "ci", "days": "7"}
    r = await admin.post("/ui/projects/alpha/tokens", made)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
    secret = re.search(r'<pre id="secret"[^>]*>([^<]+)</pre>', r.text)
    assert secret
    # The secret works, once shown; the list shows the token, never its secret.
    r = await api.call("GET", "/v1/machines", secret.group(1))
    assert r.status_code == 200
    page = (await admin.get("/ui/projects")).text
    assert "<td>ci</td>" in page and secret.group(1) not in page
    (token_id,) = re.findall(r'<tr id="t-(t-[^"]+)">\s*<td>ci</td>', page)

    # A reader sees the quota (the header leads there), not the tokens, and cannot make or
    # revoke one.
    reader = await signed_in(api, "alpha", "reader")
    assert '<a href="/ui/projects">Projects</a>' in (await reader.get("/ui/machines")).text
    page = (await reader.get("/ui/projects")).text
    assert '<table id="quota-table">' in page and 'id="tokens"' not in page
    assert "<form" not in page.split('<main id="main"')[1]
    for path, data in (
        ("/ui/projects/alpha/tokens", {"role": "reader"}),
        (f"/ui/projects/alpha/tokens/{token_id}/revoke", {}),
    ):
        r = await reader.post(path, data)
        assert r.status_code == 403 and "token.manage needs the admin role" in alert(r.text)
    assert (await api.call("GET", "/v1/machines", secret.group(1))).status_code == 200

    r = await admin.post(f"/ui/projects/alpha/tokens/{token_id}/revoke")
    assert r.status_code == 303
    assert (await api.call("GET", "/v1/machines", secret.group(1))).status_code == 401
    assert "revoked" in (await admin.get("/ui/projects")).text
    # What a tenant wrote is shown as text, never as markup.
    r = await admin.post("/ui/projects/alpha/tokens", {"role": "reader", "label": "<i>x</i>"})
    assert r.status_code == 200 and "<i>x</i>" not in r.text
    assert "<td>&lt;i&gt;x&lt;/i&gt;</td>" in (await admin.get("/ui/projects")).text
    # Another project's tokens do not exist for alpha's admin; bad input is a 400 saying why.
    r = await admin.post("/ui/projects/beta/tokens", {"role": "member"})
    assert r.status_code == 404 and "beta" in alert(r.text)
    assert (await admin.get("/ui/projects", params={"project": "beta"})).status_code == 404
    for data, says in (({"role": "member", "days": "0"}, "whole number from 1"),
                       ({"role": "member", "days": "²"}, "whole number from 1"),  # not a 500
                       ({"role": "owner"}, "role")):  # fmt: skip
        r = await admin.post("/ui/projects/alpha/tokens", data)
        assert r.status_code == 400 and says in alert(r.text), r.text
    r = await admin.post("/ui/projects", {"name": "mine"})
    assert r.status_code == 403 and "only system tokens may create projects" in alert(r.text)
    await admin.close()
    await reader.close()


async def test_a_system_token_makes_projects_and_sets_their_quota(api: Api) -> None:
    system: Visitor = await signed_in(api, None)
    page = (await system.get("/ui/projects")).text
    assert '<table id="projects">' in page and ">alpha</a>" in page and ">beta</a>" in page
    r = await system.post("/ui/projects", {"name": "gamma"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/projects?project=gamma"
    page = (await system.get(r.headers["location"])).text
    assert "<h1>Project gamma</h1>" in page and 'id="quota"' in page
    r = await system.post("/ui/projects/gamma/quota", {"machines": "3", "vcpus": ""})
    assert r.status_code == 303
    quota = (await api.call("GET", "/v1/projects/gamma/quota")).json()["quota"]
    assert quota["machines"] == 3 and quota["vcpus"] is None
    r = await system.post("/ui/projects/gamma/quota", {"machines": "lots"})
    assert r.status_code == 400 and "machines" in alert(r.text)
    # A project's admin sees its quota but may not change it.
    admin = await signed_in(api, "gamma", "admin")
    page = (await admin.get("/ui/projects")).text
    assert 'id="quota"' not in page and 'id="projects"' not in page
    r = await admin.post("/ui/projects/gamma/quota", {"machines": "30"})
    assert r.status_code == 403 and "only system tokens may change quotas" in alert(r.text)
    assert (await system.post("/ui/projects/gamma/delete")).status_code == 303
    assert (await api.call("GET", "/v1/projects/gamma")).status_code == 404
    await admin.close()
    await system.close()
