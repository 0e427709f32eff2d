"""Networks, addresses, published ports and security groups through the HTTP API, on SQLite and
PostgreSQL: what a machine gets, what is refused (each a clear 4xx), what the node is told."""

import asyncio
import ipaddress
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from hutch.agent.node import group_rules
from hutch.network.nft import Allow
from hutch.services import networks as nets
from hutch.services import nodes as nodes_service
from hutch.wire.nodes import Assignments
from tests.helpers.api import Api, close_api, open_api


@pytest.fixture
def api(api_both: Api) -> Api:  # on SQLite and on PostgreSQL
    return api_both


async def test_machines_join_the_default_network_made_on_first_use(api: Api) -> None:
    token = await api.token("alpha", "member")
    assert (await api.call("GET", "/v1/networks", token)).json()["items"] == []
    web = (await api.machine(token, name="web")).json()
    db = (await api.machine(token, name="db")).json()
    assert web["networks"] == db["networks"] == ["default"]
    assert web["dns"] == "web.alpha.internal"
    (net,) = (await api.call("GET", "/v1/networks", token)).json()["items"]
    assert net["name"] == "default" and net["machines"] == 2
    subnet = ipaddress.IPv4Network(net["subnet4"])
    assert subnet.prefixlen == 24 and subnet.subnet_of(ipaddress.IPv4Network("10.96.0.0/11"))
    assert ipaddress.ip_network(net["subnet6"]).prefixlen == 64
    assert net["gateway4"] == str(subnet[1])
    a, b = web["addresses"][0], db["addresses"][0]
    assert a["ip4"] == str(subnet[2]) and b["ip4"] == str(subnet[3])
    assert a["mac"] != b["mac"] and a["mac"].startswith("02:")
    assert ipaddress.ip_address(a["ip6"]) in ipaddress.ip_network(net["subnet6"])
    # The same on reading it back, in listings, and `none`: no network at all.
    got = (await api.call("GET", "/v1/machines/web", token)).json()
    assert got["addresses"] == web["addresses"]
    listed = {m["name"]: m for m in (await api.call("GET", "/v1/machines", token)).json()["items"]}
    assert listed["db"]["addresses"] == db["addresses"]
    lone = (await api.machine(token, name="lone", networks=["none"])).json()
    assert lone["networks"] == [] and lone["addresses"] == [] and lone["dns"] == ""
    # Another project's default network is another subnet, and another VNI.
    other = await api.token("beta", "member")
    await api.machine(other, name="web")
    (theirs,) = (await api.call("GET", "/v1/networks", other)).json()["items"]
    assert theirs["subnet4"] != net["subnet4"] and theirs["vni"] != net["vni"]
    assert theirs["subnet6"] != net["subnet6"]


async def test_a_creates_answer_shows_its_wiring_as_reading_it_back_does(api: Api) -> None:
    """The create answers with what it joined (no read of its own): networks in the order
    named, ports in the store's order, groups as named."""
    token = await api.token("alpha", "member")
    r = await api.call("POST", "/v1/networks", token, json={"name": "back"})
    assert r.status_code == 201, r.text
    for group in ("web", "db"):
        r = await api.call("POST", "/v1/security-groups", token, json={"name": group})
        assert r.status_code == 201, r.text
    ports = [{"host_port": 9090, "port": 90, "protocol": "udp"}, {"host_port": 8080, "port": 80}]
    created = await api.machine(token, name="m", networks=["back", "default"], ports=ports,
                                security_groups=["db", "web"])  # fmt: skip
    assert created.status_code == 201, created.text
    got = (await api.call("GET", "/v1/machines/m", token)).json()
    wiring = ("networks", "addresses", "ports", "security_groups", "dns")
    assert {k: created.json()[k] for k in wiring} == {k: got[k] for k in wiring}
    assert got["networks"] == ["back", "default"] and got["security_groups"] == ["db", "web"]
    assert [p["host_port"] for p in got["ports"]] == [8080, 9090]
    # The list reads the wiring with the rows, in one statement: the same, in the same order.
    [listed] = (await api.call("GET", "/v1/machines", token)).json()["items"]
    assert {k: listed[k] for k in wiring} == {k: got[k] for k in wiring}


async def test_a_network_may_have_an_ipv6_64_of_its_own(api: Api) -> None:
    """`subnet6`: a unique-local /64 of the project's choice, outside the controller's /48 and
    overlapping none of its networks; machines' IPv6 addresses come from it, each once."""
    token = await api.token("alpha", "member")

    async def create(**body: object) -> Any:
        return await api.call("POST", "/v1/networks", token, json=body)

    r = await create(name="back", subnet="192.168.10.0/24", subnet6="fd12:3456:789a:1::/64")
    assert r.status_code == 201, r.text
    back = r.json()
    assert (back["subnet4"], back["subnet6"]) == ("192.168.10.0/24", "fd12:3456:789a:1::/64")
    assert back["gateway6"] == "fd12:3456:789a:1::1"
    r = await create(name="six", subnet6="FD12:3456:789A:2:0::/64")  # v4 from the pool
    assert r.status_code == 201, r.text
    assert r.json()["subnet6"] == "fd12:3456:789a:2::/64"  # as IPv6 is written
    assert ipaddress.IPv4Network(r.json()["subnet4"]).subnet_of(
        ipaddress.IPv4Network("10.96.0.0/11")
    )
    default = (await api.machine(token, name="first")).json()["addresses"][0]
    ula48 = ipaddress.IPv6Network(default["ip6"] + "/48", strict=False)
    a = (await api.machine(token, name="a", networks=["back"], start=False)).json()
    b = (await api.machine(token, name="b", networks=["back"], start=False)).json()
    assert [m["addresses"][0]["ip6"] for m in (a, b)] == [
        "fd12:3456:789a:1::2", "fd12:3456:789a:1::3",
    ]  # fmt: skip
    for body, words in (
        ({"name": "b2", "subnet6": "fd12:3456:789a:1::/64"}, "overlaps network back"),
        (
            {"name": "b2", "subnet6": "fd12:3456:789a::/48"},
            "a /48: a network's IPv6 subnet is one /64",
        ),
        ({"name": "b2", "subnet6": "fd12:3456:789a:3::/80"}, "is one /64"),
        ({"name": "b2", "subnet6": "2001:db8:0:1::/64"}, "not unique-local (fd00::/8)"),
        ({"name": "b2", "subnet6": "fc00:0:0:1::/64"}, "not unique-local"),
        ({"name": "b2", "subnet6": f"{ula48[0] + (9 << 64)}/64"}, "in the controller's"),
        ({"name": "b2", "subnet6": "fd12:3456:789a:3::1/64"}, "host bits set"),
        ({"name": "b2", "subnet6": "fd12::zz/64"}, "is not a CIDR"),
        ({"name": "b2", "subnet6": "192.168.30.0/24"}, "not IPv6"),
        ({"name": "b2", "subnet": "fd00::/64"}, "an IPv6 /64 goes in subnet6"),
    ):
        r = await create(**body)
        assert r.status_code == 400 and words in r.json()["detail"], (body, r.text)
    # Once the network is gone, its /64 is free again.
    for m in ("a", "b"):
        assert (await api.call("DELETE", f"/v1/machines/{m}", token)).status_code == 204
    assert (await api.call("DELETE", "/v1/networks/back", token)).status_code == 204
    assert (await create(name="again", subnet6="fd12:3456:789a:1::/64")).status_code == 201


async def test_networks_of_a_project_and_what_is_refused(api: Api) -> None:
    token = await api.token("alpha", "member")

    async def create(**body: object) -> Any:
        return await api.call("POST", "/v1/networks", token, json=body)

    r = await create(name="back", subnet="192.168.10.0/24", egress="deny")
    assert r.status_code == 201, r.text
    back = r.json()
    assert back["subnet4"] == "192.168.10.0/24" and back["egress"] == "deny"
    for body, words in (
        ({"name": "b2", "subnet": "192.168.10.128/25"}, "overlaps network back"),
        ({"name": "b2", "subnet": "10.100.0.0/24"}, "overlaps the controller's pool"),
        ({"name": "b2", "subnet": "192.168.20.0/30"}, "too small"),
        ({"name": "b2", "subnet": "8.8.8.0/24"}, "not a private range"),
        ({"name": "b2", "subnet": "fd00::/64"}, "not IPv4"),
        ({"name": "b2", "subnet": "192.168.20.1/24"}, "host bits"),
        ({"name": "none"}, "no network"),
        ({"name": "b2", "egress": "nat", "egress_allow": ["1.2.3.0/24"]}, "allow-list"),
    ):
        r = await create(**body)
        assert r.status_code == 400 and words in r.json()["detail"], (body, r.text)
    assert (await create(name="back")).status_code == 409
    # A machine on two networks: eth0 first; another project's network does not exist here.
    m = (await api.machine(token, name="two", networks=["back", "default"], start=False)).json()
    assert m["networks"] == ["back", "default"]
    assert m["addresses"][0]["ip4"] == "192.168.10.2"
    r = await api.machine(token, name="x", networks=["x"])
    assert r.status_code == 404 and "no network 'x' in project alpha" in r.json()["detail"]
    r = await api.machine(token, name="x", networks=["none", "back"])
    assert r.status_code == 400
    # Delete: refused while machines are on it, naming the first five; done once they are gone.
    r = await api.call("DELETE", "/v1/networks/back", token)
    assert r.status_code == 409 and "1 machine(s) are on this network (two)" in r.json()["detail"]
    for i in range(6):
        await api.machine(token, name=f"on-{i}", networks=["back"], start=False)
    r = await api.call("DELETE", "/v1/networks/back", token)
    assert (
        "7 machine(s) are on this network (on-0, on-1, on-2, on-3, on-4 and 2 more)"
        in (r.json()["detail"])
    ), r.text
    for name in ("two", *(f"on-{i}" for i in range(6))):
        assert (await api.call("DELETE", f"/v1/machines/{name}", token)).status_code == 204
    assert (await api.call("DELETE", "/v1/networks/back", token)).status_code == 204
    assert (await api.call("GET", "/v1/networks/back", token)).status_code == 404
    reader = await api.token("alpha", "reader")
    assert (await api.call("GET", "/v1/networks", reader)).status_code == 200
    r = await api.call("POST", "/v1/networks", reader, json={"name": "r"})
    assert r.status_code == 403


async def test_a_chosen_subnet_is_the_controllers_not_only_the_projects(api: Api) -> None:
    """Two networks with one subnet on one node would share a gateway address and a connected
    route, and the node would send one's replies to the other's bridge: a subnet (IPv4 or
    IPv6) another project's network overlaps is refused, without naming that project; one that
    overlaps nothing is taken, and a subnet is free again once its network is gone."""
    alpha, beta = await api.token("alpha", "member"), await api.token("beta", "member")

    async def create(token: str, **body: object) -> Any:
        return await api.call("POST", "/v1/networks", token, json=body)

    r = await create(alpha, name="back", subnet="192.168.77.0/24", subnet6="fd77::/64")
    assert r.status_code == 201, r.text
    for body, words in (
        ({"subnet": "192.168.77.0/24"}, "subnet 192.168.77.0/24 overlaps a network in use"),
        ({"subnet": "192.168.77.128/25"}, "subnet 192.168.77.128/25 overlaps a network in use"),
        ({"subnet": "192.168.0.0/16"}, "overlaps a network in use on this controller"),
        ({"subnet6": "fd77::/64"}, "subnet6 fd77::/64 overlaps a network in use"),
        ({"subnet": "192.168.78.0/24", "subnet6": "fd77::/64"}, "subnet6 fd77::/64 overlaps"),
    ):
        r = await create(beta, name="x", **body)
        detail = r.json()["detail"]
        assert r.status_code == 409 and words in detail, (body, r.text)
        assert "alpha" not in detail and "back" not in detail  # another project's business
    assert (await api.call("GET", "/v1/networks", beta)).json()["items"] == []
    # What overlaps nothing is beta's; alpha's own overlap still names alpha's network.
    r = await create(beta, name="x", subnet="192.168.78.0/24", subnet6="fd78::/64")
    assert r.status_code == 201, r.text
    r = await create(alpha, name="b2", subnet="192.168.77.0/25")
    assert r.status_code == 400 and "overlaps network back" in r.json()["detail"]
    r = await create(alpha, name="b2", subnet="192.168.78.0/24")
    assert r.status_code == 409 and "in use on this controller" in r.json()["detail"]
    # Once alpha's network is gone, its subnets are anyone's.
    assert (await api.call("DELETE", "/v1/networks/back", alpha)).status_code == 204
    r = await create(beta, name="y", subnet="192.168.77.0/24", subnet6="fd77::/64")
    assert r.status_code == 201, r.text


async def test_concurrent_creates_of_one_subnet_in_many_projects_give_it_once(api: Api) -> None:
    """The check and the insert are one step controller-wide (a lock every create with a
    chosen subnet takes): of projects choosing one subnet at once, exactly one gets it."""
    names = [f"p{i}" for i in range(8)]
    for name in names:
        await api.project(name)
    tokens = [await api.token(name, "member") for name in names]
    made = await asyncio.gather(*(
        api.call("POST", "/v1/networks", token,
                 json={"name": "n", "subnet": "172.20.0.0/16", "subnet6": f"fd20:0:0:{i}::/64"})
        for i, token in enumerate(tokens)
    ))  # fmt: skip
    assert sorted(r.status_code for r in made) == [201] + [409] * 7, [r.text for r in made]
    made = await asyncio.gather(*(
        api.call("POST", "/v1/networks", token,
                 json={"name": "six", "subnet6": "fd21::/64"})
        for token in tokens
    ))  # fmt: skip
    assert sorted(r.status_code for r in made) == [201] + [409] * 7, [r.text for r in made]


async def test_destroyed_machines_give_their_addresses_back(api: Api) -> None:
    token = await api.token("alpha", "member")
    first = (await api.machine(token, name="a", start=False)).json()["addresses"][0]
    await api.machine(token, name="b", start=False)
    assert (await api.call("DELETE", "/v1/machines/a", token)).status_code == 204
    again = (await api.machine(token, name="c", start=False)).json()["addresses"][0]
    assert again["ip4"] == first["ip4"] and again["mac"] == first["mac"]


async def test_concurrent_creates_get_distinct_addresses(api: Api) -> None:
    token = await api.token("alpha", "member")
    made = await asyncio.gather(*(api.machine(token, name=f"m{i}", start=False) for i in range(20)))
    assert all(r.status_code == 201 for r in made), [r.text for r in made]
    ips = {r.json()["addresses"][0]["ip4"] for r in made}
    macs = {r.json()["addresses"][0]["mac"] for r in made}
    assert len(ips) == len(macs) == 20
    (net,) = (await api.call("GET", "/v1/networks", token)).json()["items"]
    assert net["machines"] == 20


async def test_published_ports_are_a_resource_of_the_node(api: Api) -> None:
    token = await api.token("alpha", "member")
    port = {"host_port": 8080, "port": 80}
    web = await api.machine(token, name="web", ports=[port])
    assert web.status_code == 201, web.text
    assert web.json()["ports"] == [
        {"host_port": 8080, "port": 80, "protocol": "tcp", "host_ip": ""}
    ]
    await api.placed(token, "web")
    # The only node publishes 8080/tcp already: the dry run says so, and create refuses.
    body = {"image": "busybox", "runtime": "container", "ports": [port]}
    r = await api.call("POST", "/v1/machines", token, params={"dry_run": "true"}, json=body)
    assert r.status_code == 200 and not r.json()["placed"]
    assert "host port 8080/tcp published already" in r.json()["reason"]
    r = await api.machine(token, name="web2", ports=[port])
    assert r.status_code == 503 and "8080/tcp" in r.json()["detail"]
    # The same port over UDP, or another port, is free; a second node takes the same one.
    udp = await api.machine(
        token, name="dns", ports=[{"host_port": 8080, "port": 53, "protocol": "udp"}]
    )
    assert udp.status_code == 201
    other = await api.join("sim-2")
    r = await api.machine(token, name="web2", ports=[port])
    assert r.status_code == 201
    assert (await api.placed(token, "web2"))["node"] == other["node_id"]
    # Bad ports: each a 4xx naming the field.
    for bad in ({"host_port": 0, "port": 80}, {"host_port": 70000, "port": 80},
                {"host_port": 80, "port": 80, "protocol": "sctp"}):  # fmt: skip
        r = await api.machine(token, name="bad", ports=[bad])
        assert r.status_code == 422, r.text
    r = await api.machine(token, name="bad", ports=[port, port])
    assert r.status_code == 400 and "published twice" in r.json()["detail"]
    r = await api.machine(token, name="bad", ports=[port], networks=["none"])
    assert r.status_code == 400 and "need a network" in r.json()["detail"]
    r = await api.machine(token, name="bad", ports=[{**port, "host_ip": "::1"}])
    assert r.status_code == 400


async def test_security_groups_and_their_rules(api: Api) -> None:
    token = await api.token("alpha", "member")
    r = await api.call("POST", "/v1/security-groups", token, json={
        "name": "web",
        "rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 80,
                   "remote_cidr": "0.0.0.0/0"}],
    })  # fmt: skip
    assert r.status_code == 201, r.text
    web = r.json()
    assert [x["port_min"] for x in web["rules"]] == [80]
    r = await api.call("POST", "/v1/security-groups", token, json={"name": "db"})
    assert r.status_code == 201
    # A rule naming the same project's group, by name; another project's is not found.
    r = await api.call("POST", "/v1/security-groups/db/rules", token,
                       json={"direction": "ingress", "protocol": "tcp", "port_min": 5432,
                             "port_max": 5432, "remote_group": "web"})  # fmt: skip
    assert r.status_code == 201, r.text
    rule = r.json()["rules"][-1]
    assert rule["remote_group"] == web["id"]
    other = await api.token("beta", "member")
    r = await api.call("POST", "/v1/security-groups", other, json={"name": "theirs"})
    theirs = r.json()
    r = await api.call("POST", "/v1/security-groups/db/rules", token,
                       json={"direction": "ingress", "remote_group": theirs["id"]})  # fmt: skip
    assert r.status_code == 404 and "project alpha" in r.json()["detail"]
    for bad in (
        {"direction": "ingress"},  # neither remote
        {"direction": "ingress", "remote_cidr": "10.0.0.0/8", "remote_group": "web"},
        {"direction": "ingress", "protocol": "icmp", "port_min": 1, "port_max": 2,
         "remote_cidr": "10.0.0.0/8"},
        {"direction": "ingress", "protocol": "tcp", "port_min": 90, "port_max": 80,
         "remote_cidr": "10.0.0.0/8"},
        {"direction": "ingress", "remote_cidr": "10.0.0.1/8"},
    ):  # fmt: skip
        r = await api.call("POST", "/v1/security-groups/db/rules", token, json=bad)
        assert r.status_code == 400, (bad, r.text)
    # Machines name groups; another project's group does not exist for them.
    m = (await api.machine(token, name="m", security_groups=["web", "db"], start=False)).json()
    assert m["security_groups"] == ["web", "db"]
    r = await api.machine(token, name="x", security_groups=["theirs"])
    assert r.status_code == 404 and "no security group 'theirs'" in r.json()["detail"]
    r = await api.call("DELETE", "/v1/security-groups/db", token)
    assert r.status_code == 409
    r = await api.call("DELETE", f"/v1/security-groups/db/rules/{rule['id']}", token)
    assert r.status_code == 200 and r.json()["rules"] == []
    assert (await api.call("DELETE", "/v1/machines/m", token)).status_code == 204
    assert (await api.call("DELETE", "/v1/security-groups/db", token)).status_code == 204
    names = [
        g["name"] for g in (await api.call("GET", "/v1/security-groups", token)).json()["items"]
    ]
    assert names == ["web"]
    assert (await api.call("GET", "/v1/security-groups/theirs", token)).status_code == 404


async def node_assignments(api: Api, node: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {node['credential']}"}
    r = await api.http.get(f"/agent/v1/nodes/{node['node_id']}/assignments", headers=headers)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def test_the_node_is_told_nics_ports_rules_and_peers(api: Api) -> None:
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = await api.join("node-x", address="http://192.0.2.7:7443")
    token = await api.token("alpha", "member")
    await api.call("POST", "/v1/security-groups", token, json={
        "name": "web", "rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 80,
                                  "port_max": 80, "remote_group": "web"}]})  # fmt: skip
    await api.machine(token, name="web", ports=[{"host_port": 8080, "port": 80}],
                      security_groups=["web"])  # fmt: skip
    await api.machine(token, name="db")
    web = await api.placed(token, "web")
    await api.placed(token, "db")
    told = await node_assignments(api, node)
    by_name = {a["hostname"]: a for a in told["machines"]}
    (nic,) = by_name["web"]["networks"]
    assert nic["ip4"] == web["addresses"][0]["ip4"] and nic["mac"] == web["addresses"][0]["mac"]
    assert nic["prefix4"] == 24 and nic["prefix6"] == 64 and nic["dns"] == [nic["gateway4"]]
    assert nic["search"] == ["alpha.internal"] and nic["egress"] == "nat"
    assert by_name["web"]["ports"] == [
        {"host_port": 8080, "port": 80, "protocol": "tcp", "host_ip": ""}
    ]
    (group,) = told["groups"]
    assert group["id"] == by_name["web"]["security_groups"][0]
    assert nic["ip4"] in group["members"]
    peers = {p["name"]: p for p in told["peers"]}
    assert set(peers) == {"web", "db"}
    assert peers["db"]["underlay"] == "192.0.2.7" and peers["db"]["project"] == "alpha"


async def _long_poll(api: Api, node: dict[str, Any], after: int) -> asyncio.Task[Any]:
    """The node's long poll for a revision past `after`, hanging (the most it may: 60 s)."""
    headers = {"Authorization": f"Bearer {node['credential']}"}
    url = f"/agent/v1/nodes/{node['node_id']}/assignments?after={after}&wait=60"
    poll = asyncio.create_task(api.http.get(url, headers=headers))
    await asyncio.sleep(0.3)  # it is waiting now
    assert not poll.done()
    return poll


async def test_what_a_node_must_see_ends_its_long_poll_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule change reaches the nodes running the group's machines, and a machine placed on a
    network reaches the other nodes hosting it (their peers), as soon as it is committed: the
    poll is woken, not left to notice on its timer. Here the timer (re-reading the store for
    other controllers' changes) is longer than the poll, so only a wake-up ends it early."""
    monkeypatch.setattr(nodes_service, "POLL", 3600.0)
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node_a = await api.join("node-a", address="http://192.0.2.7:7443")
    node_b = await api.join("node-b", address="http://192.0.2.8:7443")
    token = await api.token("alpha", "member")
    r = await api.call("POST", "/v1/security-groups", token, json={
        "name": "web", "rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 80,
                                  "port_max": 80, "remote_cidr": "0.0.0.0/0"}]})  # fmt: skip
    rule = r.json()["rules"][0]["id"]
    spread = {"group": "g", "group_policy": "anti-affinity"}  # one on each node
    await api.machine(token, name="web", security_groups=["web"], **spread)
    web = await api.placed(token, "web")
    here, there = (node_a, node_b) if web["node"] == node_a["node_id"] else (node_b, node_a)
    told = await node_assignments(api, here)
    assert told["groups"][0]["rules"]
    # The rule goes: the poll of web's node ends with the rule gone.
    poll = await _long_poll(api, here, told["revision"])
    r = await api.call("DELETE", f"/v1/security-groups/web/rules/{rule}", token)
    assert r.status_code == 200, r.text
    answer = (await asyncio.wait_for(poll, 30)).json()
    assert answer["revision"] > told["revision"] and answer["groups"][0]["rules"] == []
    # Another machine of the network is placed on the other node: web's node learns its peer.
    poll = await _long_poll(api, here, answer["revision"])
    await api.machine(token, name="db", **spread)
    assert (await api.placed(token, "db"))["node"] == there["node_id"]
    answer = (await asyncio.wait_for(poll, 30)).json()
    assert "db" in {p["name"] for p in answer["peers"]}


async def test_a_remote_group_allows_its_members_on_other_nodes_too(api: Api) -> None:
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    x = await api.join("node-x", address="http://192.0.2.7:7443")
    token = await api.token("alpha", "member")
    await api.call("POST", "/v1/security-groups", token, json={"name": "web"})
    await api.call("POST", "/v1/security-groups", token, json={
        "name": "db", "rules": [
            {"direction": "ingress", "protocol": "tcp", "port_min": 5432, "port_max": 5432,
             "remote_group": "web"},
            {"direction": "egress", "protocol": "udp", "port_min": 123, "port_max": 123,
             "remote_cidr": "192.0.2.0/24"}]})  # fmt: skip
    await api.machine(token, name="db", security_groups=["db"])
    await api.machine(token, name="near", security_groups=["web"])
    db, near = await api.placed(token, "db"), await api.placed(token, "near")
    await api.call("POST", "/v1/nodes/node-x/cordon")
    y = await api.join("node-y", address="http://192.0.2.8:7443")
    await api.machine(token, name="far", security_groups=["web"])
    far = await api.placed(token, "far")
    nodes = (db["node"], near["node"], far["node"])
    assert nodes == (x["node_id"], x["node_id"], y["node_id"])
    # What node x's agent enforces for db: web's machines on x and on y, by both families.
    told = Assignments.model_validate(await node_assignments(api, x))
    (sandbox,) = [a.sandbox for a in told.machines if a.hostname == "db"]
    rules = group_rules(told.machines, told.groups)[sandbox]
    (ingress,) = rules.ingress
    for m in (near, far):
        nic = m["addresses"][0]
        assert {f"{nic['ip4']}/32", f"{nic['ip6']}/128"} <= set(ingress.remotes), m["name"]
    assert rules.egress == (Allow("udp", 123, 123, ("192.0.2.0/24",)),)
    # near is in a group without egress rules: it sends as its network lets it.
    (near_sandbox,) = [a.sandbox for a in told.machines if a.hostname == "near"]
    assert group_rules(told.machines, told.groups)[near_sandbox].egress is None


async def test_a_lost_machines_address_waits_for_its_node_to_come_back(api: Api) -> None:
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = await api.join("node-a")
    token = await api.token("alpha", "member")
    lost = (await api.machine(token, name="lost")).json()
    await api.placed(token, "lost")
    held = lost["addresses"][0]["ip4"]
    api.ctl.health.grace = 0.3
    deadline = time.monotonic() + 30
    while (await api.call("GET", "/v1/machines/lost", token)).json()["state"] != "lost":
        assert time.monotonic() < deadline, "the silent node's machine was never lost"
        await asyncio.sleep(0.4)  # (a check within a grace of leading again does nothing)
        await api.ctl.health.check()
    api.ctl.health.grace = 3600.0
    assert (await api.call("DELETE", "/v1/machines/lost", token)).status_code == 204
    assert (await api.call("GET", "/v1/machines/lost", token)).json()["state"] == "destroyed"
    # Node a may still run it, with its address: nobody else gets that address yet.
    other = (await api.machine(token, name="other", start=False)).json()
    assert other["addresses"][0]["ip4"] != held
    # Back (its agent drops what is not its own): the address is free again.
    r = await api.http.post(
        f"/agent/v1/nodes/{node['node_id']}/heartbeat",
        json={"address": "http://127.0.0.1:9"},
        headers={"Authorization": f"Bearer {node['credential']}"},
    )
    assert r.status_code == 204
    third = (await api.machine(token, name="third", start=False)).json()
    assert third["addresses"][0]["ip4"] == held


async def test_a_full_pool_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_NETWORK_POOL4", "10.200.0.0/23")  # two /24s
    a, _ = await open_api(Path(tempfile.mkdtemp(prefix="hn", dir="/tmp")))
    try:
        for project in ("p1", "p2", "p3"):
            await a.project(project)
        t1, t2, t3 = [await a.token(p, "member") for p in ("p1", "p2", "p3")]
        assert (await a.machine(t1, start=False)).json()["addresses"][0]["ip4"] == "10.200.0.2"
        assert (await a.machine(t2, start=False)).json()["addresses"][0]["ip4"] == "10.200.1.2"
        r = await a.machine(t3, start=False)
        assert r.status_code == 503 and "no free /24 left" in r.json()["detail"]
        # A network of its own still works; so does no network.
        r = await a.call("POST", "/v1/networks", t3, json={"name": "own", "subnet": "10.9.0.0/24"})
        assert r.status_code == 201
        assert (await a.machine(t3, networks=["own"], start=False)).status_code == 201
        assert (await a.machine(t3, networks=["none"], start=False)).status_code == 201
    finally:
        await close_api(a)


async def test_every_node_is_told_the_clusters_addresses_to_block(tmp_path: Path) -> None:
    """Every node's advertised address and the controller's (where it listens, what its
    certificate names, where the agent reached it) are in every node's answer, so that no
    machine reaches another node's agent, ssh or the controller by NAT. A node joining,
    moving or leaving ends the others' long polls."""
    api, _ = await open_api(
        tmp_path, listen="0.0.0.0:7878", tls_names=["198.51.100.5", "ctl.example"]
    )
    try:
        x = await api.join("node-x", address="http://192.0.2.7:7443")
        await api.join("node-n", address="http://agent.example:7443")  # a name: no address
        headers = {"Authorization": f"Bearer {x['credential']}"}
        path = f"/agent/v1/nodes/{x['node_id']}/assignments"

        async def told(after: int = -1, wait: float = 0.0) -> Assignments:
            # at an address of the controller's: what the agent connected to
            r = await api.http.get(f"http://203.0.113.9{path}", headers=headers,
                                   params={"after": after, "wait": wait})  # fmt: skip
            assert r.status_code == 200, r.text
            return Assignments.model_validate(r.json())

        first = await told()
        # sim-1 (127.0.0.1), 0.0.0.0 and names are not in it: loopback is always blocked
        assert first.infrastructure == ["192.0.2.7", "198.51.100.5", "203.0.113.9"]
        # A node joining later ends node-x's long poll, with its address in the answer.
        waiting = asyncio.create_task(told(first.revision, 30))
        await asyncio.sleep(0.2)
        y = await api.join("node-y", address="http://[2001:db8::8]:7443")
        joined = await asyncio.wait_for(waiting, 10)
        assert "2001:db8::8" in joined.infrastructure and joined.revision > first.revision
        # It moves (its heartbeat says where it is now): the old address goes.
        r = await api.http.post(f"/agent/v1/nodes/{y['node_id']}/heartbeat",
                                json={"address": "http://192.0.2.8:7443"},
                                headers={"Authorization": f"Bearer {y['credential']}"})  # fmt: skip
        assert r.status_code == 204, r.text
        moved = await told(joined.revision, 10)
        assert moved.revision > joined.revision
        assert "192.0.2.8" in moved.infrastructure and "2001:db8::8" not in moved.infrastructure
        # It leaves: no longer the cluster's.
        assert (await api.call("DELETE", "/v1/nodes/node-y")).status_code in (200, 204)
        left = await told(moved.revision, 10)
        assert left.infrastructure == ["192.0.2.7", "198.51.100.5", "203.0.113.9"]
    finally:
        await close_api(api)


async def test_one_project_cannot_take_every_network_or_group(api: Api) -> None:
    """Networks take slots every project shares (VNIs, the pool's subnets, /64s): one project
    making networks without end would leave the others none (their default network refused).
    A project has at most MAX_NETWORKS_PER_PROJECT networks and MAX_GROUPS_PER_PROJECT groups
    (409, saying so); another project still makes its own, and removing one makes room."""
    mine, other = await api.token("alpha", "member"), await api.token("beta", "member")
    limits = (
        ("/v1/networks", nets.MAX_NETWORKS_PER_PROJECT, "networks already"),
        ("/v1/security-groups", nets.MAX_GROUPS_PER_PROJECT, "security groups already"),
    )
    for path, limit, words in limits:
        made = await asyncio.gather(
            *(api.call("POST", path, mine, json={"name": f"x{i}"}) for i in range(limit + 8))
        )  # at once: the count holds under concurrency
        assert sorted(r.status_code for r in made) == [201] * limit + [409] * 8, path
        refused = next(r for r in made if r.status_code == 409)
        assert words in refused.json()["detail"] and "remove one first" in refused.json()["detail"]
        assert (await api.call("POST", path, other, json={"name": "theirs"})).status_code == 201
        gone = next(r.json()["id"] for r in made if r.status_code == 201)
        assert (await api.call("DELETE", f"{path}/{gone}", mine)).status_code == 204
        assert (await api.call("POST", path, mine, json={"name": "again"})).status_code == 201
    # The default network is still made for a machine of a project at its limit.
    assert (await api.machine(mine, name="web")).json()["networks"] == ["default"]
