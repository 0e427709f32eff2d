"""/ui/networks: networks and security groups, their rules, through the dashboard's forms."""

from tests.helpers.api import Api
from tests.helpers.webpages import alert, signed_in


async def test_a_member_makes_networks_groups_and_rules_a_reader_only_reads(api: Api) -> None:
    member = await signed_in(api, "alpha", "member")
    r = await member.post("/ui/networks", {"name": "back", "subnet": "192.168.40.0/24"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/networks"
    assert (await member.post("/ui/security-groups", {"name": "web"})).status_code == 303
    r = await member.post("/ui/security-groups/web/rules",
                          {"direction": "ingress", "protocol": "tcp", "ports": "80-81",
                           "remote": "10.0.0.0/8"})  # fmt: skip
    assert r.status_code == 303, r.text
    r = await member.post("/ui/security-groups/web/rules",
                          {"direction": "ingress", "remote": "web"})  # fmt: skip
    assert r.status_code == 303, r.text
    page = (await member.get("/ui/networks")).text
    assert '<tr id="net-back">' in page and "192.168.40.0/24" in page
    assert "80-81" in page and "10.0.0.0/8" in page and "group web" in page
    assert 'id="network-create"' in page and 'id="group-create"' in page
    # What the API says is what the page shows.
    (group,) = (await api.call("GET", "/v1/security-groups", params={"project": "alpha"})
                ).json()["items"]  # fmt: skip
    assert len(group["rules"]) == 2
    first = group["rules"][0]["id"]

    reader = await signed_in(api, "alpha", "reader")
    page = (await reader.get("/ui/networks")).text
    assert "192.168.40.0/24" in page and "80-81" in page
    assert "<form" not in page.split('<main id="main"')[1]  # no create, delete or rule forms
    for path, data in (
        ("/ui/networks", {"name": "more"}),
        ("/ui/networks/back/delete", {}),
        (f"/ui/security-groups/web/rules/{first}/delete", {}),
    ):
        r = await reader.post(path, data)
        assert r.status_code == 403, (path, r.text)
        assert "network.write needs the member role" in alert(r.text)
    # The same removal by the member goes through.
    r = await member.post(f"/ui/security-groups/web/rules/{first}/delete")
    assert r.status_code == 303
    assert "80-81" not in (await member.get("/ui/networks")).text
    assert (await member.post("/ui/networks/back/delete")).status_code == 303
    assert 'id="net-back"' not in (await member.get("/ui/networks")).text
    await member.close()
    await reader.close()


async def test_bad_input_and_another_projects_objects(api: Api) -> None:
    beta = await signed_in(api, "beta", "member")
    assert (await beta.post("/ui/networks", {"name": "theirs"})).status_code == 303
    assert (await beta.post("/ui/security-groups", {"name": "theirs"})).status_code == 303
    alpha = await signed_in(api, "alpha", "member")
    for path, data in (
        ("/ui/networks/theirs/delete", {}),
        ("/ui/security-groups/theirs/delete", {}),
        ("/ui/security-groups/theirs/rules", {"direction": "ingress", "remote": "10.0.0.0/8"}),
    ):
        r = await alpha.post(path, data)
        assert r.status_code == 404 and 'role="alert"' in r.text, (path, r.text)
    assert "theirs" not in (await alpha.get("/ui/networks")).text
    # Each bad input: its 4xx as a page that says why.
    assert (await alpha.post("/ui/security-groups", {"name": "mine"})).status_code == 303
    for path, data, status, says in (
        ("/ui/networks", {"name": "n", "subnet": "10.1.2.3/24"}, 400, "10.1.2.0/24"),
        ("/ui/networks", {"name": "Bad Name"}, 400, "network name"),
        ("/ui/networks", {"name": "n", "egress": "sometimes"}, 400, "egress"),
        ("/ui/security-groups/mine/rules",
         {"direction": "ingress", "protocol": "icmp", "ports": "80", "remote": "10.0.0.0/8"},
         400, "ports need protocol tcp or udp"),
        ("/ui/security-groups/mine/rules",
         {"direction": "ingress", "protocol": "tcp", "ports": "http", "remote": "10.0.0.0/8"},
         400, "are not PORT or LOW-HIGH"),
        ("/ui/security-groups/mine/rules", {"direction": "ingress", "remote": "nosuch"},
         404, "nosuch"),
    ):  # fmt: skip
        r = await alpha.post(path, data)
        assert r.status_code == status, (data, r.text)
        assert says in alert(r.text), (data, r.text)
    await alpha.close()
    await beta.close()
