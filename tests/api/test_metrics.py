"""Telemetry through the API: a node's samples become its machines' history
(`GET /v1/machines/{id}/metrics`) and Prometheus series (`/metrics`), within bounds."""

import asyncio
import re
import time
from typing import Any

from hutch.model.metrics import Tier
from tests.helpers.api import Api

STEP = 10.0  # the finest tier's default


def sample(machine: str, seq: int, at: float, cpu_s: float, **more: Any) -> dict[str, Any]:
    return {
        "machine": machine, "generation": 1, "seq": seq, "time": at, "state": "running",
        "vcpus": 1, "memory_mib": 128, "running_s": seq * STEP, "cpu_s": cpu_s,
        "memory_bytes": 50 << 20, "memory_limit_bytes": 128 << 20,
        "disks": {"root": {"read_bytes": seq * 4096, "read_ops": seq}},
        "public": {"tx_bytes": seq * 1000, "rx_bytes": seq * 2000},
        **more,
    }  # fmt: skip


def node_sample(at: float) -> dict[str, Any]:
    return {"time": at, "cpu_s": 100.0, "memory_bytes": 1 << 30, "hutch_cpu_s": 1.5,
            "hutch_memory_bytes": 80 << 20}  # fmt: skip


class Node:
    def __init__(self, api: Api, joined: dict[str, Any]) -> None:
        self.api, self.id = api, joined["node_id"]
        self.headers = {"Authorization": f"Bearer {joined['credential']}"}

    async def post(self, *machines: dict[str, Any], node: str | None = None) -> int:
        r = await self.api.http.post(
            f"/agent/v1/nodes/{node or self.id}/samples", headers=self.headers,
            json={"node": node_sample(time.time()), "machines": list(machines)},
        )  # fmt: skip
        return r.status_code


async def placed_on_node(api: Api, token: str, name: str) -> dict[str, Any]:
    r = await api.machine(token, name=name)
    assert r.status_code == 201, r.text
    return await api.placed(token, r.json()["id"])


async def test_a_nodes_samples_are_the_machines_history_in_its_project_only(api_both: Api) -> None:
    api = api_both
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = Node(api, await api.join("sim-2"))
    other = Node(api, await api.join("sim-3"))
    alpha, beta = await api.token("alpha", "reader"), await api.token("beta", "admin")
    m = await placed_on_node(api, await api.token("alpha", "member"), "web")
    t0 = (time.time() // 300) * 300 + 1  # three samples in one bucket of the coarse tier
    if t0 + 25 > time.time():
        t0 -= 300
    samples = [sample(m["id"], i + 1, t0 + i * STEP, cpu) for i, cpu in enumerate([1, 2, 4])]
    assert await node.post(*samples) == 204
    # Sent again (the node did not see the acknowledgement), and out of order: nothing changes.
    assert await node.post(samples[1], samples[0]) == 204
    # Machines not on the node are not its to report: left out (another node's, none at all).
    assert await other.post(sample(m["id"], 4, t0 + 3 * STEP, 99.0)) == 204
    assert await node.post(sample("m-nothere", 1, t0, 1.0)) == 204
    # Nor is a reading from a clock far ahead kept: it would never be pruned.
    assert await node.post(sample(m["id"], 5, time.time() + 86400, 9.0)) == 204

    path = f"/v1/machines/{m['id']}/metrics"
    got = (await api.call("GET", path, alpha, params={"since": t0 - 1})).json()
    assert len(got["points"]) == 3, got
    assert (got["machine"], got["name"], got["step"]) == (m["id"], "web", STEP)
    assert [p["cpu_s"] for p in got["points"]] == [1, 2, 4]
    last = got["points"][-1]
    assert (last["disk_read_bytes"], last["tx_bytes"], last["egress_bytes"]) == (12288, 3000, 3000)
    coarse = (await api.call("GET", path, alpha, params={"since": t0 - 1, "step": 300})).json()
    assert coarse["step"] == 300 and [p["cpu_s"] for p in coarse["points"]] == [4]
    # Another project's token: no such machine (as for every other probe of it).
    r = await api.call("GET", path, beta)
    assert r.status_code == 404 and "no machine" in r.json()["detail"]

    # Bad input is refused, saying what is wrong.
    assert await node.post(sample(m["id"], 0, t0, 1.0)) == 422
    assert await node.post(sample(m["id"], 5, t0, -1.0)) == 422
    assert await node.post(sample(m["id"], 1, t0, 1.0), node=other.id) == 404
    r = await api.call("GET", path, alpha, params={"step": 0})
    assert r.status_code == 422 and "step" in r.text

    # The history keeps no reading older than a tier keeps them: two days ago, coarse only.
    old = t0 - 2 * 86400
    assert await node.post(sample(m["id"], 9, old, 0.5)) == 204
    got = (await api.call("GET", path, alpha, params={"since": old - 1})).json()
    assert got["step"] == 300 and old in [p["time"] for p in got["points"]]
    # And the leader prunes what a tier no longer keeps (a fine tier of 1 s, here).
    telemetry = api.ctl.telemetry
    telemetry.tiers = (Tier(10.0, 1.0), *telemetry.tiers[1:])
    assert await node.post(sample(m["id"], 10, time.time(), 5.0)) == 204
    await asyncio.sleep(1.1)
    assert await telemetry.prune() == 4  # every fine point (three of t0, the one just sent)
    got = (await api.call("GET", path, alpha, params={"since": time.time() - 60})).json()
    assert got["step"] == 300 and [p["cpu_s"] for p in got["points"]][-1:] == [5.0]


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("hutch_machine_")]


async def test_prometheus_series_need_a_system_token_and_go_with_their_machines(
    api_both: Api,
) -> None:
    api = api_both
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = Node(api, await api.join("sim-2"))
    member = await api.token("alpha", "admin")

    async def round_of(names: list[str]) -> list[dict[str, Any]]:
        machines = [await placed_on_node(api, member, n) for n in names]
        assert await node.post(*(sample(m["id"], 1, time.time(), 1.5) for m in machines)) == 204
        return machines

    first = await round_of(["a1", "a2", "a3"])
    r = await api.call("GET", "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'hutch_machine_cpu_seconds_total{machine="a1",project="alpha"} 1.5' in r.text
    assert re.search(r'hutch_node_agent_cpu_seconds_total\{node="sim-2"\} 1\.5', r.text)
    per_round = len(series(r.text))
    # A project's token, even its admin's, gets no /metrics (they span every project).
    r = await api.call("GET", "/metrics", member)
    assert r.status_code == 403 and "system tokens" in r.json()["detail"]

    # Machines come and go: the series of those destroyed go with them.
    for m in first:
        r = await api.call("DELETE", f"/v1/machines/{m['id']}?force=true", member)
        assert r.status_code == 204, r.text
    await round_of(["b1", "b2", "b3"])
    text = (await api.call("GET", "/metrics")).text
    assert len(series(text)) == per_round and 'machine="a1"' not in text
    assert 'machine="b1"' in text


async def test_a_nodes_absurd_counters_are_refused_and_a_sawtooth_counts_once(api: Api) -> None:
    """A hostile node reporting on a machine placed on it: counters past any real machine's are
    refused (they overflowed the ledger and failed the batch, every node's post in it), and a
    counter that drops and climbs again bills only past its highest reading, and seconds
    running that grew faster than the clock only as fast as the clock."""
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = Node(api, await api.join("sim-2"))
    m = await placed_on_node(api, await api.token("alpha", "member"), "web")
    reader = await api.token("alpha", "reader")
    now = time.time()
    assert await node.post(sample(m["id"], 1, now - 30, 1.0)) == 204  # tx 1000, 10 s running
    dropped = sample(m["id"], 2, now - 20, 0.0, running_s=0.0, public={"tx_bytes": 0})
    assert await node.post(dropped) == 204  # counters back to 0
    assert await node.post(sample(m["id"], 3, now - 10, 2.0)) == 204  # 30 s: 10 of it count
    assert await node.post(sample(m["id"], 4, now, 1e30)) == 422
    for absurd in ({"running_s": 1e30}, {"vcpus": 1 << 40}, {"memory_mib": 1 << 40}):
        assert await node.post(sample(m["id"], 4, now, 3.0, **absurd)) == 422, absurd
    assert await node.post(sample(m["id"], 4, now, 3.0)) == 204
    # Within bounds, but running more than the 10 s since the last reading: those 10 s count,
    # what is past them never.
    jump = sample(m["id"], 5, now + 10, 13.0, running_s=1e6)
    assert await node.post(jump, sample(m["id"], 6, now + 20, 23.0, running_s=1e6 + 10)) == 204
    [total] = (await api.call("GET", "/v1/usage", reader)).json()["items"]
    assert (total["egress_bytes"], total["vcpu_seconds"], total["cpu_seconds"]) == (
        6000, "50.000000", "23.000000"), total  # fmt: skip


async def test_a_sample_from_a_clock_far_off_is_not_metered(api: Api) -> None:
    """A node's reading dated 1970 (a clock not yet set at boot, or a hostile node) put the
    generation's usage from then on in 1970's period, never invoiced; one a day ahead, in
    tomorrow's: passed over (as the history passes them over), the next reading's delta counts
    what they had."""
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = Node(api, await api.join("sim-2"))
    m = await placed_on_node(api, await api.token("alpha", "member"), "web")
    reader = await api.token("alpha", "reader")
    now = time.time()
    for seq, at in ((1, now - 40), (2, 1.0), (3, now - 20), (4, now + 86400), (5, now)):
        assert await node.post(sample(m["id"], seq, at, float(seq))) == 204
    r = await api.call("GET", "/v1/usage", reader, params={"since": now - 3600})
    [total] = r.json()["items"]
    assert (total["vcpu_seconds"], total["cpu_seconds"]) == ("50.000000", "5.000000"), total
