"""Machines with volumes through the HTTP API, on SQLite and PostgreSQL, with simulated nodes:
volumes on two nodes (their rows as a node's backend would have made them), one machine at a
time under concurrent creates, placement on the volume's node, and a node lost with a machine
whose volume is there. The data path is tested against real nodes in tests/cli."""

import asyncio
import time

import pytest

from hutch.model.volume import Volume, VolumeState
from tests.helpers.api import Api


@pytest.fixture
def api(api_both: Api) -> Api:  # on SQLite and on PostgreSQL
    return api_both


async def _volume(api: Api, name: str, node_id: str) -> None:
    async with api.ctl.store.write() as tx:
        project = await tx.projects.by_name("alpha")
        volume = Volume(
            id=f"v-{name}", project_id=project.id, name=name, size_bytes=64 << 20, fs="ext4",
            state=VolumeState.AVAILABLE, node_id=node_id, created_at=time.time(),
        )  # fmt: skip
        await tx.volumes.create(volume)


async def test_volumes_pin_machines_and_stay_with_a_lost_node(api: Api) -> None:
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    a = await api.join("node-a", labels={"zone": "a"})
    b = await api.join("node-b")
    await _volume(api, "db", a["node_id"])
    await _volume(api, "cache", a["node_id"])
    await _volume(api, "far", b["node_id"])
    token = await api.token("alpha", "member")

    def vols(*names: str) -> list[dict[str, object]]:
        return [{"volume": n, "path": f"/{n}"} for n in names]

    # Volumes on two nodes: which is where; the same volume twice.
    r = await api.machine(token, volumes=vols("db", "far"))
    assert r.status_code == 400, r.text
    assert "db on node-a, far on node-b" in r.json()["detail"]
    r = await api.machine(token, volumes=[*vols("db"), {"volume": "v-db", "path": "/x"}])
    assert r.status_code == 400 and "given twice" in r.json()["detail"], r.text
    # Labels the volume's node lacks: refused at once (it would run nowhere), beside labels
    # the node has.
    await _volume(api, "logs", a["node_id"])
    r = await api.machine(token, volumes=vols("logs"), constraints={"disk": "nvme"})
    assert r.status_code == 400, r.text
    assert "volume logs is on node node-a, which lacks labels disk=nvme" in r.json()["detail"]
    r = await api.machine(token, volumes=vols("logs"), constraints={"zone": "a"}, start=False)
    assert r.status_code == 201, r.text
    # Two creates at once for one volume: one machine gets it.
    racing = await asyncio.gather(
        *(api.machine(token, name=f"m{i}", volumes=vols("cache"), start=False) for i in range(4))
    )
    assert sorted(r.status_code for r in racing) == [201, 409, 409, 409], [r.text for r in racing]
    # The dry run and the scheduler: node-a, the volume's node, though node-b is as good.
    body = {"image": "busybox", "runtime": "container", "volumes": vols("db")}
    r = await api.call("POST", "/v1/machines?dry_run=true", token, json=body)
    plan = r.json()
    assert plan["node"] == "node-a" and plan["because"] == "volume db is on node node-a"
    assert {x["node"]: x["reason"] for x in plan["rejected"]}["node-b"] == plan["because"]
    r = await api.machine(token, name="db-1", volumes=vols("db"), restart="always")
    assert r.status_code == 201, r.text
    assert (await api.placed(token, "db-1"))["node"] == a["node_id"]
    # Node a goes silent: the machine is lost and stays so (its restart policy says always:
    # not without its data); the volume stays on node a and still has it.
    api.ctl.health.grace = 0.3
    deadline = time.monotonic() + 30
    while (m := (await api.call("GET", "/v1/machines/db-1", token)).json())["state"] != "lost":
        assert time.monotonic() < deadline, "the silent node's machine was never lost"
        await asyncio.sleep(0.4)
        await api.ctl.health.check()
    api.ctl.health.grace = 3600.0
    assert "its volumes (db) are on node node-a, so it is not placed elsewhere" in m["error"]
    await asyncio.sleep(0.5)  # a scheduling round or two
    m = (await api.call("GET", "/v1/machines/db-1", token)).json()
    assert (m["state"], m["node"]) == ("lost", None)
    v = (await api.call("GET", "/v1/volumes/db", token)).json()
    assert (v["node"], v["machine"], v["state"]) == ("node-a", "db-1", "attached")
    # Destroyed: the volume is free, on its node.
    assert (await api.call("DELETE", "/v1/machines/db-1", token)).status_code == 204
    v = (await api.call("GET", "/v1/volumes/db", token)).json()
    assert (v["node"], v["machine"], v["state"]) == ("node-a", None, "available")
