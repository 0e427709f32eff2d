"""Suspend and resume through the API, over a simulated node that reports what a real one
would (tests/cli/test_suspend.py runs real micro-VMs): what a suspended machine holds of its
node and of its project's quota, a resume refused on a full node (saying why) and allowed once
there is room, the refusals of what cannot be suspended, and another project's token."""

import time
from dataclasses import replace
from typing import Any

from hutch.model.machine import VolumeAttach
from tests.helpers.api import Api

MIB = 400  # each machine's memory; the node has room for two (with the 96 MiB overhead)


async def test_a_suspended_machine_gives_back_its_cpu_and_memory_and_resumes_when_room(
    api: Api,
) -> None:
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = await api.join("small", cpus=1, memory_mib=2 * (MIB + 96), disk_mib=4096)
    token = await api.token("alpha", "member")
    headers = {"Authorization": f"Bearer {node['credential']}"}

    async def report(m: dict[str, Any], state: str, **more: object) -> None:
        r = await api.http.post(
            f"/agent/v1/nodes/{node['node_id']}/machines/{m['id']}/report",
            json={"generation": 1, "state": state, "time": time.time(), **more},
            headers=headers,
        )  # fmt: skip
        assert r.status_code == 204, r.text

    async def running() -> dict[str, Any]:
        r = await api.machine(token, runtime="microvm", memory_mib=MIB, disk_mib=100)
        assert r.status_code == 201, r.text
        m = await api.placed(token, r.json()["id"])
        await report(m, "running")
        return await get(m)

    async def allocated() -> dict[str, int]:
        nodes = (await api.call("GET", "/v1/nodes")).json()["items"]
        return next(n["allocated"] for n in nodes if n["name"] == "small")

    async def get(m: dict[str, Any]) -> dict[str, Any]:
        return (await api.call("GET", f"/v1/machines/{m['id']}", token)).json()  # type: ignore[no-any-return]

    first, second = await running(), await running()
    full = {"cpus": 2, "memory_mib": 2 * (MIB + 96), "disk_mib": 200}
    assert await allocated() == full

    r = await api.call("POST", f"/v1/machines/{first['id']}/suspend", token)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["desired"]) == ("running", "suspended")
    assert await allocated() == full  # until its node says it is suspended
    await report(first, "suspended")
    assert (await get(first))["state"] == "suspended"
    # Its disk stays taken (its memory is saved there); its CPU and memory are free.
    assert await allocated() == {"cpus": 1, "memory_mib": MIB + 96, "disk_mib": 200}
    usage = (await api.call("GET", "/v1/projects/alpha/quota", token)).json()["usage"]
    held = {k: usage[k] for k in ("machines", "vcpus", "memory_mib", "disk_mib")}
    # The project's disk holds the suspended machine's saved memory too.
    assert held == {"machines": 2, "vcpus": 1, "memory_mib": MIB, "disk_mib": 200 + MIB}

    third = await running()  # takes the room the suspended machine gave back
    r = await api.call("POST", f"/v1/machines/{first['id']}/resume", token)
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert "node small is full" in detail and f"{MIB + 96} MiB" in detail, detail
    assert (await get(first))["state"] == "suspended"

    r = await api.call("DELETE", f"/v1/machines/{third['id']}?force=true", token)
    assert r.status_code == 204, r.text
    await report(third, "destroyed")
    r = await api.call("POST", f"/v1/machines/{first['id']}/start", token)  # start resumes
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["desired"]) == ("starting", "running")
    assert await allocated() == {**full, "disk_mib": 200}
    await report(first, "running", resumed=True)
    resumed = await get(first)
    assert resumed["state"] == "running" and resumed["started_at"] == first["started_at"]
    events = [e for e in await _events(api, "alpha") if e["object"] == first["id"]]
    assert [e["message"] for e in events][-4:] == [
        "suspend requested",
        "suspended",
        "resuming",
        "resumed",
    ]

    # Suspended, then stopped: it ends at once, and its node's share goes with it.
    await api.call("POST", f"/v1/machines/{second['id']}/suspend", token)
    await report(second, "suspended")
    r = await api.call("POST", f"/v1/machines/{second['id']}/stop", token)
    assert r.json()["state"] == "exited", r.text
    assert await allocated() == {"cpus": 1, "memory_mib": MIB + 96, "disk_mib": 100}


async def test_what_cannot_be_suspended_is_refused_saying_why(api: Api) -> None:
    """A container (400: micro-VMs can), a machine not running (409), another project's
    machine (404), each next to the same call allowed."""
    alpha, beta = await api.token("alpha", "member"), await api.token("beta", "member")
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    sim = await api.join("sim-2")
    vm = (await api.machine(alpha, runtime="microvm")).json()
    box = (await api.machine(alpha, runtime="container")).json()
    stopped = (await api.machine(alpha, runtime="microvm", start=False)).json()
    vm = await api.placed(alpha, vm["id"])
    r = await api.http.post(
        f"/agent/v1/nodes/{sim['node_id']}/machines/{vm['id']}/report",
        json={"generation": 1, "state": "running", "time": time.time()},
        headers={"Authorization": f"Bearer {sim['credential']}"},
    )
    assert r.status_code == 204, r.text

    r = await api.call("POST", f"/v1/machines/{box['id']}/suspend", alpha)
    assert r.status_code == 400 and "micro-VMs" in r.json()["detail"], r.text
    async with api.ctl.store.write() as tx:  # as a machine made with `-v data:/data` is
        held = await tx.machines.by_id(vm["id"])
        disk = replace(held, id="m-withvolume", name="db", spec=replace(
            held.spec, volumes=(VolumeAttach("v-data", "/data", name="data"),)))  # fmt: skip
        await tx.machines.create(disk)
    r = await api.call("POST", "/v1/machines/db/suspend", alpha)
    assert r.status_code == 400 and "read-write volumes (data)" in r.json()["detail"], r.text
    r = await api.call("POST", f"/v1/machines/{stopped['id']}/suspend", alpha)
    assert r.status_code == 409 and "only a running machine" in r.json()["detail"], r.text
    r = await api.call("POST", f"/v1/machines/{vm['id']}/resume", alpha)
    assert r.status_code == 409 and "not suspended" in r.json()["detail"], r.text
    for verb in ("suspend", "resume"):
        for ref in (vm["id"], vm["name"]):
            r = await api.call("POST", f"/v1/machines/{ref}/{verb}", beta)
            assert r.status_code == 404, r.text
    r = await api.call("POST", f"/v1/machines/{vm['id']}/suspend", alpha)
    assert r.status_code == 200 and r.json()["desired"] == "suspended", r.text
    # Its node could not: the machine runs on, wanted running, and the event says why.
    r = await api.http.post(
        f"/agent/v1/nodes/{sim['node_id']}/machines/{vm['id']}/report",
        json={"generation": 1, "state": "running", "time": time.time(),
              "error": "not suspended: the disk is full"},
        headers={"Authorization": f"Bearer {sim['credential']}"},
    )  # fmt: skip
    assert r.status_code == 204, r.text
    got = (await api.call("GET", f"/v1/machines/{vm['id']}", alpha)).json()
    assert (got["state"], got["desired"]) == ("running", "running")
    messages = [e["message"] for e in await _events(api, "alpha") if e["object"] == vm["id"]]
    assert messages[-1] == "not suspended: the disk is full"


async def _events(api: Api, project: str) -> list[dict[str, Any]]:
    """The project's events so far, from the store (the API streams them for ever)."""
    async with api.ctl.store.read() as tx:
        found = await tx.projects.by_name(project)
        events = await tx.events.since(found.id, 0)
    return [{"object": e.object_id, "message": e.message} for e in events]
