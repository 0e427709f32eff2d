"""/ui/volumes: volumes and their snapshots through the dashboard's forms. The simulated node
has no agent: its side of the volume calls is a small in-memory stand-in (`NodeVolumes`)."""

from typing import Any

import pytest

from hutch.wire.volumes import (
    NodeSnapshotInfo,
    NodeVolumeCapacity,
    NodeVolumeCreate,
    NodeVolumeInfo,
)
from tests.helpers.api import Api
from tests.helpers.webpages import alert, signed_in

GIB = 1 << 30


class NodeVolumes:
    """What a node's volume API answers, in memory."""

    def __init__(self) -> None:
        self.volumes: dict[str, NodeVolumeInfo] = {}
        self.snapshots: dict[str, NodeSnapshotInfo] = {}
        self.restored: list[tuple[str, str]] = []

    async def volume_capacity(self, node: Any) -> NodeVolumeCapacity:
        promised = sum(v.size_bytes for v in self.volumes.values())
        return NodeVolumeCapacity(promised_bytes=promised, total_bytes=1 << 40)

    async def create_volume(self, node: Any, body: NodeVolumeCreate) -> NodeVolumeInfo:
        info = NodeVolumeInfo(id=body.id, size_bytes=body.size_bytes, fs=body.fs, used_bytes=4096)
        self.volumes[body.id] = info
        return info

    async def volumes_now(self, node: Any, ids: list[str], timeout: float) -> list[NodeVolumeInfo]:
        return [self.volumes[i] for i in ids if i in self.volumes]

    async def delete_volume(self, node: Any, volume: str) -> None:
        del self.volumes[volume]

    async def snapshot_volume(self, node: Any, volume: str, snapshot: str, sandbox: str = "",
                              target: str = "") -> NodeSnapshotInfo:  # fmt: skip
        size = self.volumes[volume].size_bytes
        info = NodeSnapshotInfo(id=snapshot, volume_id=volume, size_bytes=size, used_bytes=0)
        self.snapshots[snapshot] = info
        return info

    async def snapshots_now(self, node: Any, volume: str, timeout: float) -> list[NodeSnapshotInfo]:
        return [s for s in self.snapshots.values() if s.volume_id == volume]

    async def delete_snapshot(self, node: Any, volume: str, snapshot: str) -> None:
        del self.snapshots[snapshot]

    async def grow_volume(self, node: Any, volume: str, size_bytes: int) -> NodeVolumeInfo:
        self.volumes[volume] = self.volumes[volume].model_copy(update={"size_bytes": size_bytes})
        return self.volumes[volume]

    async def restore_volume(self, node: Any, volume: str, snapshot: str) -> NodeVolumeInfo:
        self.restored.append((volume, snapshot))
        return self.volumes[volume]


@pytest.fixture
def node(api: Api, monkeypatch: pytest.MonkeyPatch) -> NodeVolumes:
    fake = NodeVolumes()
    for name in (
        "volume_capacity", "create_volume", "volumes_now", "delete_volume", "snapshot_volume",
        "snapshots_now", "delete_snapshot", "restore_volume", "grow_volume",
    ):  # fmt: skip
        monkeypatch.setattr(api.ctl.link, name, getattr(fake, name))
    return fake


async def test_create_snapshot_restore_delete_and_a_reader_only_reads(
    api: Api, node: NodeVolumes
) -> None:
    member = await signed_in(api, "alpha", "member")
    r = await member.post("/ui/volumes", {"name": "db", "size": "2G", "fs": "ext4"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/volumes/db", r.text
    (vol,) = node.volumes.values()
    assert vol.size_bytes == 2 * GIB
    r = await member.post("/ui/volumes/db/snapshots", {"name": "before"})
    assert r.status_code == 303, r.text
    listing = (await member.get("/ui/volumes")).text
    assert '<tr id="vol-db">' in listing and "2.0 GiB" in listing
    assert 'id="volume-create"' in listing
    page = (await member.get("/ui/volumes/db")).text
    assert "<td>before</td>" in page and "/ui/volumes/db/snapshots/before/restore" in page

    reader = await signed_in(api, "alpha", "reader")
    page = (await reader.get("/ui/volumes/db")).text
    assert "<td>before</td>" in page and "<form" not in page.split('<main id="main"')[1]
    assert 'id="volume-create"' not in (await reader.get("/ui/volumes")).text
    for path, data in (
        ("/ui/volumes", {"name": "more", "size": "1G"}),
        ("/ui/volumes/db/snapshots/before/restore", {}),
        ("/ui/volumes/db/delete", {}),
        ("/ui/volumes/db/extend", {"size": "4G"}),
    ):
        r = await reader.post(path, data)
        assert r.status_code == 403, (path, r.text)
        assert "volume.write needs the member role" in alert(r.text)
    assert node.restored == [] and len(node.volumes) == 1

    r = await member.post("/ui/volumes/db/extend", {"size": "3G"})
    assert r.status_code == 303 and node.volumes[vol.id].size_bytes == 3 * GIB
    r = await member.post("/ui/volumes/db/extend", {"size": "1G"})
    assert r.status_code == 400 and "a volume only grows" in alert(r.text)
    (snap_id,) = node.snapshots
    r = await member.post("/ui/volumes/db/snapshots/before/restore")
    assert r.status_code == 303 and node.restored == [(vol.id, snap_id)]
    assert (await member.post("/ui/volumes/db/snapshots/before/delete")).status_code == 303
    assert node.snapshots == {}
    assert (await member.post("/ui/volumes/db/delete")).status_code == 303
    assert node.volumes == {}
    assert 'id="vol-db"' not in (await member.get("/ui/volumes")).text
    await member.close()
    await reader.close()


async def test_bad_input_and_another_projects_volume(api: Api, node: NodeVolumes) -> None:
    beta = await signed_in(api, "beta", "member")
    assert (await beta.post("/ui/volumes", {"name": "theirs", "size": "1G"})).status_code == 303
    alpha = await signed_in(api, "alpha", "member")
    r = await alpha.get("/ui/volumes/theirs")
    assert r.status_code == 404 and "theirs" in alert(r.text)
    r = await alpha.post("/ui/volumes/theirs/delete")
    assert r.status_code == 404
    assert len(node.volumes) == 1  # beta's, untouched
    for data, says in (
        ({"name": "v", "size": "ten"}, "ten"),
        ({"name": "v", "size": "1K"}, "at least 16M"),
        ({"name": "v", "size": "1G", "fs": "xfs"}, "fs"),
        ({"name": "v", "source": "theirs"}, "theirs"),
    ):
        r = await alpha.post("/ui/volumes", data)
        assert 400 <= r.status_code < 500 and says in alert(r.text), (data, r.text)
    await alpha.close()
    await beta.close()
