"""Volumes' operation marks through the HTTP API, on SQLite and PostgreSQL: a volume taken by an
operation refuses another (409, saying which), and a mark left by a controller that died
mid-operation lapses (the simulated node holds no bytes: the probes are refused before any
node call)."""

import time

import pytest

from hutch.model.volume import Volume, VolumeState
from hutch.services import volumes as service
from tests.helpers.api import Api

MIB = 1 << 20


@pytest.fixture
def api(api_both: Api) -> Api:  # on SQLite and on PostgreSQL
    return api_both


async def _volume(api: Api, operation: str, until: float) -> None:
    """A volume on the simulated node, as a controller left it (taken by `operation`)."""
    async with api.ctl.store.write() as tx:
        project = await tx.projects.by_name("alpha")
        node = (await tx.nodes.list())[0]
        await tx.volumes.create(
            Volume(
                id="v-taken", project_id=project.id, name="db", size_bytes=64 * MIB, fs="ext4",
                state=VolumeState.AVAILABLE, node_id=node.id, created_at=time.time(),
                operation=operation, operation_until=until,
            )
        )  # fmt: skip


async def test_a_volume_taken_by_an_operation_refuses_another_until_its_mark_lapses(
    api: Api,
) -> None:
    token = await api.token("alpha", "member")
    await _volume(api, "snapshotted", time.time() + service.OPERATION_SECONDS)
    shown = (await api.call("GET", "/v1/volumes/db", token)).json()
    assert shown["operation"] == "snapshotted"
    for method, path, body in (
        ("POST", "/v1/volumes/db/extend", {"size_bytes": 32 * MIB}),
        ("POST", "/v1/volumes/db/snapshots", {"name": "s"}),
        ("POST", "/v1/volumes", {"name": "fork", "source": "db"}),
        ("DELETE", "/v1/volumes/db", None),
        ("GET", "/v1/volumes/db/export", None),
    ):
        r = await api.call(method, path, token, json=body)
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith("volume db is being snapshotted"), r.text
    # The controller that took it died: once its mark lapses, the volume is free again (the
    # same extend now goes as far as its own checks).
    async with api.ctl.store.write() as tx:
        v = await tx.volumes.get((await tx.projects.by_name("alpha")).id, "db")
        await tx.volumes.update(
            Volume(**{**{f: getattr(v, f) for f in v.__slots__}, "operation_until": time.time()})
        )
    r = await api.call("POST", "/v1/volumes/db/extend", token, json={"size_bytes": 32 * MIB})
    assert r.status_code == 400 and "only grows" in r.json()["detail"], r.text
    assert (await api.call("GET", "/v1/volumes/db", token)).json()["operation"] == ""
