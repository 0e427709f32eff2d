"""Retention: a destroyed machine stays listed for `machine_retention`, then the leader purges
it (and its events); machines that are not destroyed stay however old they are."""

import asyncio
import tempfile
import time
from pathlib import Path

from tests.api.test_streams import events
from tests.helpers.api import close_api, open_api, served

KEEP = 6.0  # seconds: the leader purges every KEEP / 4


async def test_destroyed_machines_are_purged_after_the_retention() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    api, _ = await open_api(tmp, machine_retention=f"{KEEP:.0f}s")
    try:
        await api.call("POST", "/v1/nodes/sim-1/cordon")
        node = await api.join("sim-2")  # a node whose reports this test sends
        await api.project("keep")
        token = await api.token("keep", "member")

        async def report(m: dict[str, object], state: str) -> None:
            r = await api.http.post(
                f"/agent/v1/nodes/{node['node_id']}/machines/{m['id']}/report",
                json={"generation": 1, "state": state, "time": time.time()},
                headers={"Authorization": f"Bearer {node['credential']}"},
            )
            assert r.status_code == 204, r.text

        async def running(name: str) -> dict[str, object]:
            assert (await api.machine(token, name=name)).status_code == 201
            m = await api.placed(token, name)
            await report(m, "running")
            return m

        async def listed() -> dict[str, str]:
            r = await api.call("GET", "/v1/machines?all=true", token)
            return {m["name"]: m["state"] for m in r.json()["items"]}

        old, ran = await running("old"), await running("ran")
        await report(ran, "exited")  # ended, not destroyed: it stays however old
        await running("up")
        assert (await api.call("DELETE", "/v1/machines/old?force=true", token)).status_code == 204
        await report(old, "destroyed")
        destroyed_at = time.monotonic()
        await asyncio.sleep(KEEP / 2)
        r = await api.machine(token, name="recent", start=False)
        assert r.status_code == 201
        recent_id = r.json()["id"]
        assert (await api.call("DELETE", "/v1/machines/recent", token)).status_code == 204
        assert await listed() == {
            "old": "destroyed", "ran": "exited", "up": "running", "recent": "destroyed"
        }  # fmt: skip
        while "old" in await listed():
            assert time.monotonic() - destroyed_at < 4 * KEEP, "never purged"
            await asyncio.sleep(0.1)
        assert await listed() == {"ran": "exited", "up": "running", "recent": "destroyed"}
        assert (await api.call("GET", f"/v1/machines/{old['id']}", token)).status_code == 404
        async with served(api) as url, events(url, token) as seen:  # from the first event
            await seen.until_seen(recent_id)  # the newest: all before it have come too
        assert old["id"] not in seen.objects and {ran["id"], recent_id} <= set(seen.objects)
    finally:
        await close_api(api)
