"""Placement through the API: dry runs, constraints, groups, cordon, drain, removal, and
machines lost with a node that stops heartbeating. Nodes are simulated (registrations only)."""

import asyncio
import time
from typing import Any

import pytest

from tests.helpers.api import SIM_NODE, Api


async def beat(api: Api, node: dict[str, Any]) -> None:
    r = await api.http.post(
        f"/agent/v1/nodes/{node['node_id']}/heartbeat",
        json={"address": "http://127.0.0.1:9"},
        headers={"Authorization": f"Bearer {node['credential']}"},
    )
    assert r.status_code == 204, r.text


async def test_dry_run_names_the_node_and_why_the_others_were_not_chosen(api: Api) -> None:
    await api.join("small", cpus=1, memory_mib=256, labels={"disk": "ssd"})
    await api.join("hdd", labels={"disk": "hdd"}, domain="rack-2")
    token = await api.token("alpha", "member")
    body = {"image": "busybox", "memory_mib": 512, "constraints": {"disk": "hdd"}}
    r = await api.call("POST", "/v1/machines?dry_run=true", token, json=body)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["placed"] is True and plan["node"] == "hdd" and plan["candidates"] == 1
    assert {x["node"]: x["reason"] for x in plan["rejected"]} == {
        "sim-1": "lacks labels disk=hdd",
        "small": "lacks labels disk=hdd",
    }
    assert (await api.call("GET", "/v1/machines", token)).json()["items"] == []  # made nothing
    body["constraints"] = {"disk": "nvme"}
    plan = (await api.call("POST", "/v1/machines?dry_run=true", token, json=body)).json()
    assert plan["placed"] is False and plan["node"] is None
    assert "hdd: lacks labels disk=nvme" in plan["reason"]
    r = await api.call("POST", "/v1/machines", token, json=body)
    assert r.status_code == 503 and "small: lacks labels disk=nvme" in r.json()["detail"]
    nodes = {n["name"]: n for n in (await api.call("GET", "/v1/nodes")).json()["items"]}
    assert nodes["hdd"]["domain"] == "rack-2" and nodes["hdd"]["cordoned"] is False


async def test_placement_fields_are_checked_and_shown(api: Api) -> None:
    token = await api.token("alpha", "member")
    bad: list[dict[str, object]] = [
        {"group_policy": "anti-affinity"},  # without a group
        {"group": "has space"},
        {"strategy": "random"},
        {"group_policy": "sideways", "group": "g"},
        {"constraints": {"bad key!": "x"}},
    ]
    for extra in bad:
        r = await api.machine(token, **extra)
        assert r.status_code in (400, 422), (extra, r.text)
    m = (await api.machine(token, group="db", group_policy="anti-affinity", strategy="pack")).json()
    assert (m["group"], m["group_policy"], m["strategy"]) == ("db", "anti-affinity", "pack")


async def test_anti_affinity_puts_each_member_on_its_own_node(api: Api) -> None:
    await api.join("sim-2")
    token = await api.token("alpha", "member")
    spec = {"group": "db", "group_policy": "anti-affinity"}
    first = (await api.machine(token, name="db-1", **spec)).json()
    placed_first = await api.placed(token, first["id"])
    second = await api.placed(token, (await api.machine(token, name="db-2", **spec)).json()["id"])
    assert {placed_first["node"], second["node"]} == {
        n["id"] for n in (await api.call("GET", "/v1/nodes")).json()["items"]
    }
    r = await api.machine(token, name="db-3", **spec)
    assert r.status_code == 503 and "anti-affinity" in r.json()["detail"]


async def test_cordon_uncordon_drain_and_remove(api: Api) -> None:
    token = await api.token("alpha", "member")
    web = await api.placed(token, (await api.machine(token, name="web")).json()["id"])
    sim1 = web["node"]
    r = await api.call("POST", "/v1/nodes/sim-1/cordon")
    assert r.status_code == 200 and r.json()["cordoned"] is True
    r = await api.call("POST", "/v1/machines?dry_run=true", token, json={"image": "busybox"})
    assert r.json()["rejected"] == [{"node": "sim-1", "reason": "node is cordoned"}]
    assert (await api.call("GET", "/v1/machines/web", token)).json()["node"] == sim1  # stays
    assert (await api.call("POST", "/v1/nodes/sim-1/uncordon")).json()["cordoned"] is False
    # Removal is refused while the node runs something.
    r = await api.call("DELETE", "/v1/nodes/sim-1")
    assert r.status_code == 409 and "drain it first" in r.json()["detail"]
    sim2 = await api.join("sim-2")
    drained = await api.call("POST", "/v1/nodes/sim-1/drain")
    assert drained.status_code == 200 and drained.json()["cordoned"] is True
    moved = await api.placed(token, "web")
    assert moved["node"] == sim2["node_id"] and moved["state"] == "created"
    assert (await api.call("DELETE", "/v1/nodes/sim-1")).status_code == 204
    assert (await api.call("GET", "/v1/nodes/sim-1")).status_code == 404
    assert (await api.call("POST", "/v1/nodes/nope/cordon")).status_code == 404
    # A removed node's credential is dead.
    r = await api.http.post(
        f"/agent/v1/nodes/{sim1}/heartbeat",
        json={"address": "x"},
        headers={"Authorization": "Bearer nope"},
    )
    assert r.status_code == 401


async def test_a_silent_node_loses_its_machines_and_always_ones_run_elsewhere(api: Api) -> None:
    a = await api.join("node-a")
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    token = await api.token("alpha", "member")
    keep = await api.placed(
        token, (await api.machine(token, name="k", restart="always")).json()["id"]
    )
    once = await api.placed(token, (await api.machine(token, name="o")).json()["id"])
    assert keep["node"] == once["node"] == a["node_id"]
    b = await api.join("node-b")
    api.ctl.health.grace = 0.5
    time.sleep(0.6)
    # A controller gives nodes a whole grace from when its health loop saw it lead, which may
    # be later than its first placement (the loop looks once a second): node-a goes then. A
    # check marks the node, then loses its machines in a transaction of their own: the
    # background loop's may be between the two when the node is seen gone.
    for _ in range(30):
        await beat(api, b)
        await api.ctl.health.check()  # (or the background loop, first: either way)
        gone = (await api.call("GET", "/v1/nodes/node-a")).json()["state"] == "unreachable"
        if gone and (await api.call("GET", "/v1/machines/o", token)).json()["state"] == "lost":
            break
        await asyncio.sleep(0.1)
    api.ctl.health.grace = 3600.0  # no more losses while the rest is checked
    nodes = {n["name"]: n for n in (await api.call("GET", "/v1/nodes")).json()["items"]}
    assert nodes["node-a"]["state"] == "unreachable" and nodes["node-b"]["state"] == "ready"
    lost = (await api.call("GET", "/v1/machines/o", token)).json()
    assert lost["state"] == "lost" and lost["node"] is None and "node-a" in lost["error"]
    again = await api.placed(token, "k")
    assert again["node"] == b["node_id"] and again["restarts"] == 1
    assert nodes["node-a"]["allocated"]["memory_mib"] == 0
    # Node a comes back: its lost machines are not its any more (its agent destroys them).
    await beat(api, a)
    headers = {"Authorization": f"Bearer {a['credential']}"}
    r = await api.http.get(f"/agent/v1/nodes/{a['node_id']}/assignments", headers=headers)
    assert r.json()["machines"] == []
    report = {"generation": 1,
              "state": "running", "time": 1.0}  # fmt: skip
    r = await api.http.post(
        f"/agent/v1/nodes/{a['node_id']}/machines/{keep['id']}/report", json=report,
        headers=headers,
    )  # fmt: skip
    assert r.status_code == 404
    assert (await api.call("GET", "/v1/nodes/node-a")).json()["state"] == "ready"
    await api.ctl.health.check()
    assert (await api.call("GET", "/v1/machines/k", token)).json()["node"] == b["node_id"]


async def test_join_tokens_are_signed_short_lived_and_for_operators(api: Api) -> None:
    r = await api.call("POST", "/v1/nodes/join-tokens", json={"ttl": 60})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["token"].startswith("hjt.") and made["ca_pin"] == ""  # plain HTTP: no pin
    assert made["expires_at"] == pytest.approx(time.time() + 60, abs=5)
    member = await api.token("alpha", "admin")
    r = await api.call("POST", "/v1/nodes/join-tokens", member, json={"ttl": 60})
    assert r.status_code == 403
    for ttl in (0, -1, 86401):
        r = await api.call("POST", "/v1/nodes/join-tokens", json={"ttl": ttl})
        assert r.status_code == 422, ttl

    async def join(secret: str, name: str) -> int:
        body = {**SIM_NODE, "name": name}
        headers = {"Authorization": f"Bearer {secret}"}
        return (await api.http.post("/agent/v1/nodes", json=body, headers=headers)).status_code

    assert await join(made["token"], "by-token") == 201
    assert await join(made["token"], "again") == 201  # many nodes may join until it expires
    prefix, expires, nonce, mac = made["token"].split(".")
    assert await join(f"{prefix}.{int(expires) + 3600}.{nonce}.{mac}", "longer") == 401
    assert await join(f"{prefix}.{expires}.{nonce}.{'0' * len(mac)}", "forged") == 401
    old = (await api.call("POST", "/v1/nodes/join-tokens", json={"ttl": 1})).json()["token"]
    time.sleep(1.5)
    r = await api.http.post(
        "/agent/v1/nodes", json={**SIM_NODE, "name": "late"},
        headers={"Authorization": f"Bearer {old}"},
    )  # fmt: skip
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert (await api.http.get("/agent/v1/ca")).status_code == 404  # no HTTPS, no CA


async def test_a_projects_strategy_packs_its_machines_unless_one_asks_to_spread(api: Api) -> None:
    await api.join("sim-2")
    r = await api.call("POST", "/v1/projects", json={"name": "dense", "strategy": "pack"})
    assert r.status_code == 201 and r.json()["strategy"] == "pack"
    token = await api.token("dense", "member")
    first = await api.placed(token, (await api.machine(token)).json()["id"])
    second = await api.placed(token, (await api.machine(token)).json()["id"])
    assert first["node"] == second["node"]  # packed onto the node already in use
    spread = await api.placed(token, (await api.machine(token, strategy="spread")).json()["id"])
    assert spread["node"] != first["node"]
    r = await api.call("PUT", "/v1/projects/dense/strategy", json={"strategy": "spread"})
    assert r.status_code == 200 and r.json()["strategy"] == "spread"
    r = await api.call("PUT", "/v1/projects/dense/strategy", json={"strategy": "random"})
    assert r.status_code == 422
    r = await api.call("PUT", "/v1/projects/dense/strategy", token, json={"strategy": "pack"})
    assert r.status_code == 403
    alpha = (await api.call("GET", "/v1/projects/alpha")).json()
    assert alpha["strategy"] == "spread"  # the default


async def test_a_new_leader_gives_every_node_a_whole_grace(api: Api) -> None:
    token = await api.token("alpha", "member")
    m = await api.placed(token, (await api.machine(token, restart="always")).json()["id"])
    api.ctl.health.grace = 0.5
    time.sleep(0.6)  # sim-1 has been silent for longer than the grace...
    api.ctl.health.leading_since = time.monotonic()  # ...but this controller only now leads
    assert await api.ctl.health.check() == 0
    assert (await api.call("GET", "/v1/nodes/sim-1")).json()["state"] == "ready"
    time.sleep(0.6)
    await api.ctl.health.check()  # (or the background loop, first: either way)
    api.ctl.health.grace = 3600.0
    assert (await api.call("GET", f"/v1/machines/{m['id']}", token)).json()["restarts"] == 1


async def test_a_machine_deleted_while_running_gives_its_share_back_when_it_ends(
    api: Api,
) -> None:
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = await api.join("sim-2")
    token = await api.token("alpha", "member")
    m = await api.placed(token, (await api.machine(token, memory_mib=256)).json()["id"])
    headers = {"Authorization": f"Bearer {node['credential']}"}

    async def report(state: str) -> None:
        r = await api.http.post(
            f"/agent/v1/nodes/{node['node_id']}/machines/{m['id']}/report",
            json={"generation": 1, "state": state, "time": time.time()}, headers=headers,
        )  # fmt: skip
        assert r.status_code == 204, r.text

    async def held() -> int:
        got = (await api.call("GET", "/v1/nodes/sim-2")).json()
        return int(got["allocated"]["memory_mib"])

    await report("running")
    assert await held() == 256
    r = await api.call("DELETE", f"/v1/machines/{m['id']}?force=true", token)
    assert r.status_code == 204, r.text
    assert await held() == 256  # still running there until the node says otherwise
    await report("exited")
    assert await held() == 0
    await report("destroyed")
    assert await held() == 0
    gone = (await api.call("GET", f"/v1/machines/{m['id']}", token)).json()
    assert gone["state"] == "destroyed"
