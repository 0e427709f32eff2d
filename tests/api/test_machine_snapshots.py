"""Machine snapshots and their clones (`from_snapshot`) through the API, over simulated nodes:
what a clone takes from its snapshot and what it may not be given, where it is placed, and
another project's snapshot. Taking one needs a real node: tests/cli/test_suspend.py."""

import time

from hutch.model.snapshot import MachineSnapshot, SnapshotState
from tests.helpers.api import Api


async def _snapshot(
    api: Api,
    project: str,
    node: str,
    name: str,
    *,
    state: SnapshotState = SnapshotState.READY,
    created_at: float = 0.0,
) -> MachineSnapshot:
    """A snapshot of a micro-VM on `node` (ready: as `POST /v1/snapshots` leaves one)."""
    async with api.ctl.store.write() as tx:
        found = await tx.projects.by_name(project)
        node_id = next(n.id for n in await tx.nodes.list() if n.name == node)
        snap = MachineSnapshot(
            id=f"s-{name:0>12}", project_id=found.id, name=name, machine_id="m-gone",
            node_id=node_id, image="busybox", image_digest="sha256:" + "a" * 64, cpus=1,
            memory_mib=256, disk_mib=64, runtime="microvm", command=("sleep", "600"),
            entrypoint=None, env=("A=1",), workdir="/", user="", networks=(), size_bytes=1 << 20,
            state=state, created_at=created_at or time.time(),
        )  # fmt: skip
        await tx.snapshots.create(snap)
    return snap


async def test_a_clone_has_its_snapshots_image_shape_and_node(api: Api) -> None:
    await api.join("sim-2")
    alpha, beta = await api.token("alpha", "member"), await api.token("beta", "member")
    snap = await _snapshot(api, "alpha", "sim-2", "tmpl")

    r = await api.call("POST", "/v1/machines?dry_run=true", alpha, json={"from_snapshot": "tmpl"})
    assert r.status_code == 200 and r.json()["node"] == "sim-2", r.text
    assert r.json()["because"] == "snapshot tmpl is on node sim-2", r.text
    r = await api.call(
        "POST", "/v1/machines", alpha, json={"from_snapshot": "tmpl", "name": "c1", "cpus": 1}
    )
    assert r.status_code == 201, r.text
    clone = await api.placed(alpha, r.json()["id"])
    assert (clone["image"], clone["cpus"], clone["memory_mib"], clone["disk_mib"]) == (
        "busybox", 1, 256, 64,
    )  # fmt: skip
    assert (clone["command"], clone["env"], clone["from_snapshot"]) == (
        ["sleep", "600"], {"A": "1"}, snap.id,
    )  # fmt: skip
    assert clone["image_digest"] == snap.image_digest and clone["networks"] == []
    nodes = {n["id"]: n["name"] for n in (await api.call("GET", "/v1/nodes")).json()["items"]}
    assert nodes[clone["node"]] == "sim-2"

    for body, words in (
        ({"memory_mib": 512}, "snapshot tmpl has memory_mib 256, not 512"),
        ({"image": "busybox"}, "image cannot be given"),
        ({"command": ["sh"]}, "command cannot be given"),
        ({"networks": ["default"]}, "snapshot tmpl has 0 network(s)"),
    ):
        r = await api.call("POST", "/v1/machines", alpha, json={"from_snapshot": "tmpl", **body})
        assert r.status_code == 400 and words in r.json()["detail"], r.text
    r = await api.call("POST", "/v1/machines", alpha, json={"name": "no-image"})
    assert r.status_code == 400 and "from_snapshot" in r.json()["detail"], r.text

    # Another project's snapshot is not there for it, by name or by id.
    for ref in ("tmpl", snap.id):
        r = await api.call("POST", "/v1/machines", beta, json={"from_snapshot": ref})
        assert r.status_code == 404, r.text
        r = await api.call("GET", f"/v1/snapshots/{ref}", beta)
        assert r.status_code == 404, r.text
        r = await api.call("DELETE", f"/v1/snapshots/{ref}", beta)
        assert r.status_code == 404, r.text
    assert (await api.call("GET", "/v1/snapshots", beta)).json()["items"] == []
    (listed,) = (await api.call("GET", "/v1/snapshots", alpha)).json()["items"]
    assert (listed["name"], listed["node"], listed["clones"]) == ("tmpl", "sim-2", ["c1"])

    # Its clones start from it again at every restart: it stays while one lives.
    r = await api.call("DELETE", "/v1/snapshots/tmpl", alpha)
    assert r.status_code == 409 and "c1" in r.json()["detail"], r.text


async def test_only_a_running_micro_vm_of_ones_own_is_snapshotted(api: Api) -> None:
    alpha, beta = await api.token("alpha", "member"), await api.token("beta", "member")
    box = (await api.machine(alpha, runtime="container", name="box")).json()
    vm = (await api.machine(alpha, runtime="microvm", name="vm", start=False)).json()
    r = await api.call("POST", "/v1/snapshots", alpha, json={"machine": box["id"]})
    assert r.status_code == 400 and "micro-VMs" in r.json()["detail"], r.text
    r = await api.call("POST", "/v1/snapshots", alpha, json={"machine": "vm"})
    assert r.status_code == 409 and "only a running machine" in r.json()["detail"], r.text
    for ref in (vm["id"], "vm"):
        r = await api.call("POST", "/v1/snapshots", beta, json={"machine": ref})
        assert r.status_code == 404, r.text
    assert (await api.call("GET", "/v1/snapshots", alpha)).json()["items"] == []


async def test_a_snapshot_being_taken_is_not_deleted(api: Api) -> None:
    """Its node would finish it after the delete and keep its files, which nothing counts."""
    await api.join("sim-2")
    alpha = await api.token("alpha", "member")
    await _snapshot(api, "alpha", "sim-2", "taking", state=SnapshotState.CREATING)
    r = await api.call("DELETE", "/v1/snapshots/taking", alpha)
    assert r.status_code == 409 and "being taken" in r.json()["detail"], r.text
    assert (await api.call("GET", "/v1/snapshots/taking", alpha)).json()["state"] == "creating"
    # One left `creating` by a controller that died meanwhile: deleted on its node (which the
    # simulated node's address does not answer).
    await _snapshot(
        api, "alpha", "sim-2", "left", state=SnapshotState.CREATING, created_at=time.time() - 7200
    )
    r = await api.call("DELETE", "/v1/snapshots/left", alpha)
    assert r.status_code == 503 and "sim-2 cannot be reached" in r.json()["detail"], r.text
