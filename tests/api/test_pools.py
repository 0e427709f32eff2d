"""Warm pools through the API, over a simulated node that reports what a real one would
(tests/client/test_pools.py runs real micro-VMs): the leader's template, its snapshot and the
pooled machines; two runs at once never take the same one, and a refill follows; pooled
machines give way to the project's quota and to a full node (never to a machine over its own
project's quota); another project's pool; bad input.
Taking a snapshot needs a real node: the node link's calls are stood in for here."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from hutch.model.machine import Desired, Machine, MachineState
from hutch.model.pool import MAX_POOLS
from hutch.model.snapshot import MachineSnapshot, SnapshotState
from hutch.wire.images import ImageView
from hutch.wire.snapshots import NodeMachineSnapshotTaken
from tests.helpers.api import Api

DIGEST = "sha256:" + "b" * 64
MIB = 256  # each pooled machine's memory


@dataclass
class Node:
    api: Api
    id: str
    credential: str
    snapshots: list[str]  # the snapshots it holds (the ids the controller gave)

    async def report(self, m: Machine, state: str, **more: object) -> None:
        r = await self.api.http.post(
            f"/agent/v1/nodes/{self.id}/machines/{m.id}/report",
            json={"generation": m.generation, "state": state, "time": time.time(), **more},
            headers={"Authorization": f"Bearer {self.credential}"},
        )
        assert r.status_code == 204, r.text

    async def assignments(self) -> list[dict[str, Any]]:
        r = await self.api.http.get(
            f"/agent/v1/nodes/{self.id}/assignments",
            headers={"Authorization": f"Bearer {self.credential}"},
        )
        assert r.status_code == 200, r.text
        return r.json()["machines"]  # type: ignore[no-any-return]


@pytest.fixture
async def node(api: Api, monkeypatch: pytest.MonkeyPatch) -> Node:
    return await sim_node(api, monkeypatch)


async def sim_node(api: Api, monkeypatch: pytest.MonkeyPatch) -> Node:
    """A node of its own (sim-1 cordoned) with room for 3 pooled machines, whose image and
    snapshot calls answer as a real node's would."""
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    joined = await api.join("pn", cpus=3, memory_mib=3 * (MIB + 96), disk_mib=4096)
    taken: list[str] = []

    async def snapshot_machine(node: object, sandbox: str, snapshot: str) -> object:
        taken.append(snapshot)
        return NodeMachineSnapshotTaken(size_bytes=1 << 20)

    async def image(node: object, project: str, ref: str) -> ImageView:
        return ImageView(id=DIGEST, names=[ref], size=1, created=0.0, layers=1, public=True)

    async def delete_machine_snapshot(node: object, snapshot: str) -> None:
        taken.remove(snapshot)

    monkeypatch.setattr(api.ctl.link, "snapshot_machine", snapshot_machine)
    monkeypatch.setattr(api.ctl.link, "image", image)
    monkeypatch.setattr(api.ctl.link, "delete_machine_snapshot", delete_machine_snapshot)
    return Node(api, joined["node_id"], joined["credential"], taken)


async def pooled(api: Api, where: Callable[[Machine], bool] = lambda m: True) -> list[Machine]:
    async with api.ctl.store.read() as tx:
        return [m for m in await tx.machines.pooled() if where(m)]


async def _machine(api: Api, machine_id: str) -> Machine:
    async with api.ctl.store.read() as tx:
        return await tx.machines.by_id(machine_id)


async def events(api: Api, project: str) -> str:
    """The project's events' messages (the API streams them: tests/client reads that)."""
    async with api.ctl.store.read() as tx:
        found = await tx.projects.by_name(project)
        return "\n".join(e.message for e in await tx.events.since(found.id, 0))


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := await check()):
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)
    return got


async def filled(api: Api, node: Node, token: str, n: int, **shape: object) -> dict[str, Any]:
    """A pool of busybox (`shape`) set to keep `n` ready, its template booted and snapshotted
    and its machines made, as the node reports them: its view."""
    body = {"image": "busybox", "memory_mib": MIB, "disk_mib": 64, "min_ready": n, **shape}
    r = await api.call("PUT", "/v1/pools", token, json=body)
    assert r.status_code == 200, r.text
    pool = r.json()
    if not pool["image_digest"]:
        (template,) = await until(
            lambda: pooled(api, lambda m: m.pool == pool["id"] and m.template), "a template"
        )
        assert template.desired is Desired.RUNNING
        (a,) = [a for a in await node.assignments() if a["machine"] == template.id]
        assert a["template"] and not a["pool_snapshot"], a
        await node.report(template, "running", image_digest=DIGEST, image_source="catalogue")
    await ready(api, node, token, pool["id"], n)
    return (await api.call("GET", f"/v1/pools/{pool['id']}", token)).json()  # type: ignore[no-any-return]


async def ready(api: Api, node: Node, token: str, pool: str, n: int) -> None:
    """The node says each machine of `pool` it was given is ready, until `n` are."""

    async def all_ready() -> bool:
        for m in await pooled(api, lambda m: m.pool == pool and not m.template):
            if m.state is MachineState.CREATED:
                assert m.desired is Desired.READY and m.pool_snapshot, m
                await node.report(m, "ready")
        got = (await api.call("GET", f"/v1/pools/{pool}", token)).json()
        return bool(got["ready"] == n and got["starting"] == 0)

    await until(all_ready, f"{n} ready in {pool}")


async def test_two_runs_at_once_take_one_pooled_machine_each_at_most_and_it_refills(
    api_both: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, node = api_both, await sim_node(api_both, monkeypatch)
    token = await api.token("alpha", "member")
    pool = await filled(api, node, token, 1)
    assert (pool["state"], pool["ready"], pool["min_ready"], pool["node"]) == ("ready", 1, 1, "pn")
    assert pool["image_digest"] == DIGEST and pool["error"] == "", pool
    assert len(node.snapshots) == 1
    # The template is gone, and so is its snapshot from the project's list.
    assert not await pooled(api, lambda m: m.template)
    assert (await api.call("GET", "/v1/snapshots", token)).json()["items"] == []
    assert (await api.call("GET", "/v1/machines", token)).json()["items"] == []
    (waiting,) = await pooled(api)

    body = {"image": "busybox", "memory_mib": MIB, "disk_mib": 64, "command": ["echo", "hi"]}
    asked = time.time()
    first, second = await asyncio.gather(
        api.machine(token, runtime="microvm", name="one", **body),
        api.machine(token, runtime="microvm", name="two", **body),
    )
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    runs = {first.json()["id"]: first.json(), second.json()["id"]: second.json()}
    assert waiting.id in runs, runs  # one took it, the other boots
    taken = runs[waiting.id]
    assert taken["state"] == "starting" and taken["command"] == ["echo", "hi"], taken
    assert taken["image_digest"] == DIGEST and taken["name"] in ("one", "two")
    # Created when taken, not when its pool made it (hutch ps lists it as the newest).
    assert taken["created_at"] >= asked > waiting.created_at, (taken, waiting)
    listed = (await api.call("GET", "/v1/machines", token)).json()["items"]
    assert next(m for m in listed if m["id"] == waiting.id)["created_at"] >= asked, listed
    names = {m["name"] for m in (await api.call("GET", "/v1/machines", token)).json()["items"]}
    assert names == {"one", "two"}
    said = await events(api, "alpha")
    assert f"from pool {pool['id']}" in said, said
    # Its node starts it as the new machine: its name, process, and the pool's snapshot.
    (a,) = [a for a in await node.assignments() if a["machine"] == waiting.id]
    assert (a["desired"], a["hostname"], a["command"]) == ("running", taken["name"], ["echo", "hi"])
    assert a["pool_snapshot"] and not a["template"]
    # A refill follows.
    await ready(api, node, token, pool["id"], 1)
    refill = await pooled(api)
    assert len(refill) == 1 and refill[0].id not in runs
    # Removed while the taken machine runs, the pool waits for it (its template snapshot holds
    # the machine's memory); once it has ended (a restart boots afresh), the pool is gone.
    assert (await api.call("DELETE", f"/v1/pools/{pool['id']}", token)).status_code == 204
    await until(lambda: _none_ready(api), "the pooled machine destroyed")
    assert (await api.call("GET", f"/v1/pools/{pool['id']}", token)).json()["state"] == "deleting"
    await node.report(await _machine(api, waiting.id), "running", image_digest=DIGEST)
    await node.report(await _machine(api, waiting.id), "exited", exit_code=0)
    await until(lambda: _gone(api, token, pool["id"]), "the pool removed")
    assert node.snapshots == [] and (await _machine(api, waiting.id)).state is MachineState.EXITED


async def test_pooled_machines_give_way_to_the_projects_quota_and_to_a_full_node(
    api: Api, node: Node
) -> None:
    await api.project("gamma", machines=2)
    token = await api.token("gamma", "member")
    pool = await filled(api, node, token, 2)
    # The project is at its quota with its pool: a machine of its own takes a pooled one's place.
    r = await api.machine(token, name="own")
    assert r.status_code == 201, r.text
    assert len(await pooled(api, lambda m: not m.state.finished)) == 1
    said = await events(api, "gamma")
    assert "given way to machine own: project gamma's quota" in said, said
    got = await until(
        lambda: _error(api, token, pool["id"], "quota"), "the pool says why it is not full"
    )
    assert got["ready"] == 1 and "not full: project gamma is at its quota" in got["error"], got
    # Once it ends, the pool fills the room; started again, it takes it back.
    own = await api.placed(token, "own")
    await node.report(await _machine(api, own["id"]), "exited", exit_code=0)
    await ready(api, node, token, pool["id"], 2)
    r = await api.call("POST", "/v1/machines/own/start", token)
    assert r.status_code == 200, r.text
    assert len(await pooled(api, lambda m: not m.state.finished)) == 1
    assert (await events(api, "gamma")).count("given way to machine own") == 2

    # The node is full (its third place taken by alpha's machine): a machine that fits only
    # once a pooled one is gone makes it go.
    alpha = await api.token("alpha", "member")
    r = await api.machine(alpha, runtime="microvm", memory_mib=MIB, disk_mib=64, command=["x"])
    assert r.status_code == 201, r.text
    await api.placed(alpha, r.json()["id"])
    beta = await api.token("beta", "member")
    r = await api.machine(beta, runtime="microvm", memory_mib=MIB, disk_mib=64, name="big")
    assert r.status_code == 201, r.text
    await api.placed(beta, r.json()["id"])
    assert not await pooled(api, lambda m: not m.state.finished)
    said = await events(api, "gamma")
    assert "given way to machine big: node pn was full" in said, said
    # Nothing is left for the pool, which says so; a machine nothing can make room for is
    # refused as before.
    await until(lambda: _error(api, token, pool["id"], "no room"), "the pool says the node is full")
    r = await api.machine(beta, runtime="microvm", memory_mib=MIB, disk_mib=64)
    assert r.status_code == 503, r.text


async def _error(api: Api, token: str, pool: str, words: str) -> dict[str, Any] | None:
    got: dict[str, Any] = (await api.call("GET", f"/v1/pools/{pool}", token)).json()
    return got if words in got["error"] else None


async def test_another_projects_pool_is_not_found_and_bad_input_says_why(
    api: Api, node: Node
) -> None:
    alpha, beta = await api.token("alpha", "member"), await api.token("beta", "member")
    pool = await filled(api, node, alpha, 1)
    for method in ("GET", "DELETE"):
        for ref in (pool["id"], "busybox"):
            r = await api.call(method, f"/v1/pools/{ref}", beta)
            assert r.status_code == 404 and "no pool" in r.json()["detail"], r.text
    assert (await api.call("GET", "/v1/pools", beta)).json()["items"] == []
    # beta's run of the same image and shape boots its own machine.
    r = await api.machine(beta, runtime="microvm", memory_mib=MIB, disk_mib=64)
    assert r.status_code == 201 and r.json()["state"] == "created", r.text
    assert len(await pooled(api, lambda m: m.state is MachineState.READY)) == 1
    r = await api.call("DELETE", f"/v1/machines/{r.json()['id']}?force=true", beta)
    assert r.status_code == 204, r.text

    # A drained node keeps none (so it can be removed), and its pools wait for it.
    r = await api.call("POST", "/v1/nodes/pn/drain")
    assert r.status_code == 200, r.text
    await until(lambda: _error(api, alpha, pool["id"], "its node pn is cordoned"), "waiting")
    assert not await pooled(api, lambda m: not m.state.finished)
    assert (await api.call("POST", "/v1/nodes/pn/uncordon")).status_code == 200
    await ready(api, node, alpha, pool["id"], 1)

    # Setting it again updates it (by image and shape), it does not make another.
    again = {"image": "busybox", "memory_mib": MIB, "disk_mib": 64, "min_ready": 0}
    r = await api.call("POST", "/v1/pools", alpha, json=again)
    assert r.status_code == 200 and r.json()["id"] == pool["id"], r.text
    await until(lambda: _none_ready(api), "the pool emptied")
    for body, status, words in (
        ({"min_ready": -1}, 422, "min_ready"),
        ({"min_ready": 65}, 422, "min_ready"),
        ({"runtime": "container"}, 422, "runtime"),
        ({"memory_mib": 16}, 400, "memory 16 MiB is too little"),
        ({"image": "Not An Image"}, 400, "Not An Image"),
    ):
        r = await api.call("PUT", "/v1/pools", alpha, json={**again, **body})
        assert r.status_code == status and words in r.text, r.text
    r = await api.call("GET", "/v1/pools/nope", alpha)
    assert r.status_code == 404 and "no pool 'nope' in project alpha" in r.text, r.text
    reader = await api.token("alpha", "reader")
    assert (await api.call("PUT", "/v1/pools", reader, json=again)).status_code == 403

    # Removed, its machines and its template snapshot go, then the pool.
    assert (await api.call("DELETE", "/v1/pools/busybox", alpha)).status_code == 204
    await until(lambda: _gone(api, alpha, pool["id"]), "the pool removed")
    assert node.snapshots == []  # its node was told to delete the template snapshot


async def _none_ready(api: Api) -> bool:
    return not await pooled(api, lambda m: not m.state.finished)


async def _gone(api: Api, token: str, pool: str) -> bool:
    return (await api.call("GET", f"/v1/pools/{pool}", token)).status_code == 404


async def test_a_machine_over_its_projects_quota_makes_no_other_projects_pooled_machine_go(
    api: Api, node: Node
) -> None:
    alpha = await api.token("alpha", "member")
    await filled(api, node, alpha, 3)  # the node is full of alpha's pooled machines
    await api.project("delta", machines=0)
    delta = await api.token("delta", "member")
    r = await api.machine(delta, runtime="microvm", memory_mib=MIB, disk_mib=64)
    assert r.status_code == 403 and "quota" in r.text, r.text
    assert len(await pooled(api, lambda m: not m.state.finished)) == 3
    assert "given way" not in await events(api, "alpha")
    # Within its quota, the same machine makes one go.
    beta = await api.token("beta", "member")
    r = await api.machine(beta, runtime="microvm", memory_mib=MIB, disk_mib=64)
    assert r.status_code == 201, r.text
    assert len(await pooled(api, lambda m: not m.state.finished)) == 2


async def test_a_project_has_few_pools(api: Api, node: Node) -> None:
    token = await api.token("alpha", "member")
    body = {"image": "busybox", "disk_mib": 64, "min_ready": 0}
    for n in range(MAX_POOLS):
        r = await api.call("PUT", "/v1/pools", token, json={**body, "memory_mib": 128 + n})
        assert r.status_code == 200, r.text
    r = await api.call("PUT", "/v1/pools", token, json={**body, "memory_mib": 1024})
    assert r.status_code == 409 and f"{MAX_POOLS} pools" in r.text, r.text
    # One it has is still set; another project has its own.
    r = await api.call("PUT", "/v1/pools", token, json={**body, "memory_mib": 128, "min_ready": 0})
    assert r.status_code == 200, r.text
    beta = await api.token("beta", "member")
    r = await api.call("PUT", "/v1/pools", beta, json={**body, "memory_mib": 1024})
    assert r.status_code == 200, r.text


async def test_a_run_whose_placement_the_pools_node_breaks_takes_no_pooled_machine(
    api: Api, node: Node
) -> None:
    token = await api.token("alpha", "member")
    await filled(api, node, token, 2)
    body = {"runtime": "microvm", "memory_mib": MIB, "disk_mib": 64}
    # A node label pn lacks; a second machine of an anti-affine group (the first is on pn).
    r = await api.machine(token, constraints={"zone": "b"}, **body)
    assert r.status_code == 503 and "zone" in r.text, r.text
    spread = {"group": "g", "group_policy": "anti-affinity", **body}
    r = await api.machine(token, name="first", **spread)
    assert r.status_code == 201, r.text
    assert (await api.placed(token, "first"))["node"] == node.id
    r = await api.machine(token, name="second", **spread)
    assert r.status_code == 503, r.text  # pn is full too
    assert len(await pooled(api, lambda m: m.state is MachineState.READY)) == 2


async def test_a_template_snapshot_a_crashed_leader_left_behind_blocks_no_pool(
    api: Api, node: Node
) -> None:
    """The leader died while its node took the template's snapshot: the snapshot's row (being
    taken) and the node's files are left, and no pool refers to them."""
    token = await api.token("alpha", "member")
    body = {"image": "busybox", "memory_mib": MIB, "disk_mib": 64, "min_ready": 1}
    pool = (await api.call("PUT", "/v1/pools", token, json=body)).json()
    # Its template's name is none a project can give a snapshot of its own (to fail the pool).
    taken = {"machine": "any", "name": f"{pool['id']}.template"}
    r = await api.call("POST", "/v1/snapshots", token, json=taken)
    assert r.status_code == 400 and "name" in r.text, r.text
    (template,) = await until(lambda: pooled(api, lambda m: m.template), "a template")
    left = replace(await _leftover(api, template), id="s-leftover", name=f"{pool['id']}.template")
    async with api.ctl.store.write() as tx:
        await tx.snapshots.create(left)
    node.snapshots.append(left.id)
    await node.report(template, "running", image_digest=DIGEST, image_source="catalogue")
    await ready(api, node, token, pool["id"], 1)
    assert left.id not in node.snapshots and len(node.snapshots) == 1
    # Removed, the pool leaves no snapshot of its own behind either.
    assert (await api.call("DELETE", f"/v1/pools/{pool['id']}", token)).status_code == 204
    await until(lambda: _gone(api, token, pool["id"]), "the pool removed")
    assert node.snapshots == []


async def _leftover(api: Api, template: Machine) -> MachineSnapshot:
    s = template.spec
    return MachineSnapshot(
        id="", project_id=template.project_id, name="", machine_id=template.id,
        node_id=template.node_id or "", image=s.image, image_digest=DIGEST, cpus=s.cpus,
        memory_mib=s.memory_mib, disk_mib=s.disk_mib, runtime=s.runtime, command=None,
        entrypoint=None, env=(), workdir="", user="", networks=(), size_bytes=0,
        state=SnapshotState.CREATING, created_at=time.time() - 3600, pool=template.pool,
    )  # fmt: skip
