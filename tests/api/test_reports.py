"""Node reports through /agent/v1: the first end of a generation is its end."""

import time

from tests.helpers.api import Api


async def test_a_generation_that_ended_does_not_end_again(api: Api) -> None:
    """A node that says a machine's generation ended one way, then another (a report retried,
    a confused or hostile node), changes nothing the second time: a machine `--restart
    on-failure` that exited 0 is not restarted by a later `failed`, and one that failed keeps
    its failure."""
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = await api.join("sim-2")
    token = await api.token("alpha", "member")
    headers = {"Authorization": f"Bearer {node['credential']}"}

    async def report(m: dict[str, object], state: str, **more: object) -> None:
        r = await api.http.post(
            f"/agent/v1/nodes/{node['node_id']}/machines/{m['id']}/report",
            json={"generation": 1, "state": state, "time": time.time(), **more}, headers=headers,
        )  # fmt: skip
        assert r.status_code == 204, r.text

    async def machine(**body: object) -> dict[str, object]:
        r = await api.machine(token, **body)
        assert r.status_code == 201, r.text
        return await api.placed(token, r.json()["id"])

    ok = await machine(restart="on-failure")
    await report(ok, "running")
    await report(ok, "exited", exit_code=0)
    await report(ok, "failed", error="the host stopped watching the sandbox")
    got = (await api.call("GET", f"/v1/machines/{ok['id']}", token)).json()
    assert (got["state"], got["exit_code"], got["restarts"]) == ("exited", 0, 0)

    bad = await machine()
    await report(bad, "running")
    await report(bad, "failed", error="the sandbox died")
    await report(bad, "exited", exit_code=0)
    got = (await api.call("GET", f"/v1/machines/{bad['id']}", token)).json()
    assert (got["state"], got["error"]) == ("failed", "the sandbox died")
