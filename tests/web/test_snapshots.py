"""/ui/snapshots: machine snapshots, listed, taken and deleted through the dashboard."""

from typing import Any

import pytest

from tests.api.test_machine_snapshots import _snapshot
from tests.helpers.api import Api
from tests.helpers.webpages import alert, signed_in


async def test_snapshots_listed_deleted_by_members_only_and_per_project(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[str] = []

    async def delete_machine_snapshot(node: Any, snapshot: str) -> None:  # the node's side
        removed.append(snapshot)

    monkeypatch.setattr(api.ctl.link, "delete_machine_snapshot", delete_machine_snapshot)
    warm = await _snapshot(api, "alpha", "sim-1", "warm")
    await _snapshot(api, "beta", "sim-1", "theirs")
    reader = await signed_in(api, "alpha", "reader")
    page = (await reader.get("/ui/snapshots")).text
    assert '<tr id="snap-warm">' in page and "1 vCPU, 256 MiB, microvm" in page
    assert "theirs" not in page and "<form" not in page.split('<main id="main"')[1]
    r = await reader.post("/ui/snapshots/warm/delete")
    assert r.status_code == 403 and "machine.write needs the member role" in alert(r.text)
    r = await reader.post("/ui/snapshots", {"machine": "web"})
    assert r.status_code == 403

    member = await signed_in(api, "alpha", "member")
    assert 'id="snapshot-take"' in (await member.get("/ui/snapshots")).text
    r = await member.post("/ui/snapshots", {"machine": "nosuch"})
    assert r.status_code == 404 and "no machine 'nosuch' in project alpha" in alert(r.text)
    r = await member.post("/ui/snapshots", {"machine": "web", "name": "Not A Name"})
    assert r.status_code == 400 and "snapshot name" in alert(r.text)
    assert (await member.post("/ui/snapshots/theirs/delete")).status_code == 404
    assert removed == []
    r = await member.post("/ui/snapshots/warm/delete")
    assert r.status_code == 303 and removed == [warm.id]
    assert 'id="snap-warm"' not in (await member.get("/ui/snapshots")).text
    await reader.close()
    await member.close()
