"""Machines through the API: validation, limits, quotas (also under concurrency, on both
databases), the lifecycle rules the control plane enforces by itself, and how often a create
asks a node about its image."""

import asyncio
import tempfile
from pathlib import Path

import pytest

from hutch.model.errors import NotFound, Unavailable
from hutch.wire.images import ImageView
from tests.helpers.api import Api, close_api, open_api
from tests.store.at_head import controller_db_at_head


@pytest.fixture(params=["sqlite", "postgres"])
async def any_db_api(request: pytest.FixtureRequest) -> Api:  # type: ignore[misc]
    tmp = Path(tempfile.mkdtemp(prefix="hq", dir="/tmp"))
    api, _ = await open_api(tmp, controller_db_at_head(request, request.param, tmp))
    yield api
    await close_api(api)


async def test_fifty_concurrent_creates_against_a_quota_of_ten(any_db_api: Api) -> None:
    api = any_db_api
    await api.project("crowd", machines=10)
    token = await api.token("crowd", "member")
    results = await asyncio.gather(*(api.machine(token, name=f"m{i}") for i in range(50)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] * 10 + [403] * 40
    refused = next(r for r in results if r.status_code == 403).json()
    assert refused["title"] == "Quota exceeded" and "machines would be 11" in refused["detail"]
    listing = (await api.call("GET", "/v1/machines?limit=200", token)).json()["items"]
    assert len(listing) == 10
    quota = (await api.call("GET", "/v1/projects/crowd/quota", token)).json()
    assert quota["usage"]["machines"] == 10 and quota["quota"]["machines"] == 10


async def test_quotas_cover_cpus_memory_and_disk(api: Api) -> None:
    await api.project("small", vcpus=2, memory_mib=512, disk_mib=300)
    token = await api.token("small", "member")
    assert (await api.machine(token, cpus=3)).status_code == 403
    assert (await api.machine(token, memory_mib=600)).status_code == 403
    assert (await api.machine(token, memory_mib=256, disk_mib=301)).status_code == 403
    ok = await api.machine(token, memory_mib=256, disk_mib=100)
    assert ok.status_code == 201
    r = await api.call("PUT", "/v1/projects/small/quota", json={"memory_mib": 0})
    assert r.status_code == 200 and r.json()["usage"]["memory_mib"] == 256
    assert (await api.machine(token, memory_mib=96)).status_code == 403


async def test_bodies_are_checked(api: Api) -> None:
    token = await api.token("alpha", "member")
    r = await api.machine(token, project="beta")  # no mass assignment
    assert r.status_code == 422 and "project" in r.json()["detail"]
    for field in ({"state": "running"}, {"node": "n-1"}, {"id": "m-1"}):
        assert (await api.machine(token, **field)).status_code == 422
    r = await api.call("POST", "/v1/machines", token, content=b"{not json")
    assert r.status_code == 422
    huge = {"image": "busybox", "env": {"BIG": "x" * (2 << 20)}}
    r = await api.call("POST", "/v1/machines", token, json=huge)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    for bad in ({"image": "Bad/Ref"}, {"image": "busybox", "name": "Not_A_Name"},
                {"image": "busybox", "labels": {"bad key!": "v"}},
                {"image": "busybox", "cpus": 0}, {"image": "busybox", "memory_mib": -1},
                {"image": "busybox", "runtime": "docker"}):  # fmt: skip
        r = await api.call("POST", "/v1/machines", token, json=bad)
        assert r.status_code in (400, 422), (bad, r.text)
        assert r.json()["detail"]


async def test_pages_are_capped_and_cursors_follow(api_both: Api) -> None:
    api = api_both  # the page's statement and its machines' wiring, on both stores
    token = await api.token("alpha", "member")
    rich = {
        "env": {"A": "1"},
        "command": ["sleep", "9"],
        "ports": [{"host_port": 8080, "port": 80}],
        "timeout_s": 60,
        "idle_s": 30,
    }
    for i in range(5):
        assert (
            await api.machine(
                token,
                name=f"p{i}",
                labels={"batch": "a" if i < 3 else "b"},
                **(rich if i == 1 else {}),
            )
        ).status_code == 201
    for i in range(5):  # placed first: the scheduler must not move a machine between list and get
        await api.placed(token, f"p{i}")
    first = (await api.call("GET", "/v1/machines?limit=2", token)).json()
    assert len(first["items"]) == 2 and first["next"]
    rest = (await api.call("GET", f"/v1/machines?limit=1000&cursor={first['next']}", token)).json()
    assert [m["name"] for m in first["items"] + rest["items"]] == [f"p{i}" for i in range(5)]
    # A list writes its machines straight to bytes: each as the machine's own view has it.
    for m in first["items"]:
        assert m == (await api.call("GET", f"/v1/machines/{m['name']}", token)).json()
    assert (
        first["items"][1]["ports"]
        == [{"host_port": 8080, "port": 80, "protocol": "tcp", "host_ip": ""}]
        and first["items"][1]["addresses"]
        and first["items"][1]["env"] == {"A": "1"}
        and first["items"][1]["time_left_s"] == 60
    )
    labelled = (await api.call("GET", "/v1/machines?label=batch=b", token)).json()["items"]
    assert [m["name"] for m in labelled] == ["p3", "p4"]
    after = (await api.call("GET", "/v1/machines?label=batch=a&limit=1", token)).json()
    more = f"/v1/machines?label=batch=a&state=created&cursor={after['next']}"
    assert [m["name"] for m in (await api.call("GET", more, token)).json()["items"]] == ["p1", "p2"]
    assert (await api.call("GET", "/v1/machines?state=running", token)).json()["items"] == []
    assert (await api.call("GET", "/v1/machines?label=nolabel", token)).status_code == 400
    # Filters no machine's labels can match are refused, as is a query of more than a machine
    # may have (a thousand once took SQLite past its expression depth: a 503).
    for query in ("label=bad%20key=a", "label=k=" + "v" * 64,
                  "&".join(f"label=k{i}=v" for i in range(65))):  # fmt: skip
        r = await api.call("GET", f"/v1/machines?{query}", token)
        assert r.status_code == 400 and "label" in r.json()["detail"], r.text
    r = await api.call("GET", "/v1/machines?" + "&".join(f"label=k{i}=v" for i in range(64)), token)
    assert r.status_code == 200 and r.json()["items"] == []


async def test_lifecycle_rules(api: Api) -> None:
    token = await api.token("alpha", "member")
    m = (await api.machine(token, name="life")).json()
    assert m["state"] == "created" and m["desired"] == "running" and m["node"] is None
    m = await api.placed(token, "life")  # the scheduler gave it a node
    assert m["state"] == "created" and m["node"]
    assert (await api.call("POST", "/v1/machines/life/start", token)).status_code == 409
    r = await api.call("DELETE", "/v1/machines/life", token)
    assert r.status_code == 409 and "force" in r.json()["detail"]
    assert (await api.machine(token, name="life")).status_code == 409  # names are unique
    stopped = (await api.call("POST", "/v1/machines/life/stop", token, json={"timeout": 1})).json()
    assert stopped["desired"] == "stopped" and stopped["state"] == "stopping"
    for odd in ("NOPE", "5\u00b2", "\u0663"):  # a superscript or Arabic-Indic digit is no number
        r = await api.call("POST", "/v1/machines/life/kill", token, json={"signal": odd})
        assert r.status_code == 400, (odd, r.text)
    waited = await api.call("GET", "/v1/machines/life/wait?state=bogus", token)
    assert waited.status_code == 400
    r = await api.call("GET", "/v1/machines/life/wait?state=running&timeout=0.2", token)
    assert r.status_code == 200 and r.json()["reached"] is False
    not_started = (await api.machine(token, name="later", start=False)).json()
    assert not_started["node"] is None and not_started["desired"] == "stopped"
    assert (await api.call("DELETE", "/v1/machines/later", token)).status_code == 204
    gone = await api.call("GET", "/v1/machines/later", token)
    assert gone.status_code == 200 and gone.json()["state"] == "destroyed"
    assert (await api.machine(token, name="later")).status_code == 201  # the name is free again


async def test_no_node_means_no_capacity_with_reasons(api: Api) -> None:
    token = await api.token("alpha", "member")
    r = await api.machine(token, memory_mib=(1 << 22))
    assert r.status_code == 503 and "sim-1" in r.json()["detail"]


async def test_a_burst_of_creates_asks_a_node_about_its_image_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image check (a name without a registry must be the project's or the catalogue's)
    reuses a node's recent answer, and shares one asking among creates at once; what no node
    has is asked again (it may be imported next), and so is all once an image changes."""
    asked: list[str] = []
    known = {"busybox"}

    async def image(node: object, project: str, ref: str) -> ImageView:
        asked.append(ref)
        await asyncio.sleep(0.01)  # the creates below overlap it
        if ref not in known:
            raise NotFound(f"no image {ref!r}")
        return ImageView(id="sha256:" + "a" * 64, names=[ref], size=1, created=0.0, layers=1,
                         public=True)  # fmt: skip

    async def delete_image(node: object, project: str, ref: str, public: bool) -> None:
        known.discard(ref)

    monkeypatch.setattr(api.ctl.link, "image", image)
    monkeypatch.setattr(api.ctl.link, "delete_image", delete_image)
    token = await api.token("alpha", "member")
    created = await asyncio.gather(*(api.machine(token) for _ in range(8)))
    assert [r.status_code for r in created] == [201] * 8 and asked == ["busybox"]
    assert (await api.machine(token)).status_code == 201 and asked == ["busybox"]
    for _ in range(2):
        assert (await api.machine(token, image="typo")).status_code == 404
    assert asked == ["busybox", "typo", "typo"]
    known.add("typo")  # imported meanwhile (by another controller: this one would forget)
    assert (await api.machine(token, image="typo")).status_code == 201
    r = await api.call("DELETE", "/v1/images/busybox?force=true", token)
    assert r.status_code in (200, 204), r.text
    assert (await api.machine(token)).status_code == 404  # asked again: it is gone
    assert asked[-1] == "busybox" and len(asked) == 6


async def test_an_unreachable_node_is_not_asked_again_by_each_create(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    async def image(node: object, project: str, ref: str) -> ImageView:
        asked.append(ref)
        raise Unavailable("node sim-1 cannot be reached")

    monkeypatch.setattr(api.ctl.link, "image", image)
    token = await api.token("alpha", "member")
    for _ in range(3):  # the node decides, as when it is down
        assert (await api.machine(token)).status_code == 201
    assert asked == ["busybox"]
