"""Who may see and do what: the cross-tenant matrix over every endpoint, the role matrix over every
mutating one, tokens that expire or are revoked, and the agents' credentials."""

import asyncio
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import httpx
import pytest
from fastapi.routing import APIRoute

from hutch.store.base import Store, Tx
from tests.helpers.api import Api, served

ROLES = ("reader", "member", "admin")
RANK = {"reader": 0, "member": 1, "admin": 2, "system": 3}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # with {project}, {machine}, {token}, {image} to fill in
    least: str  # the least role that may call it: reader, member, admin, or system
    body: object = None
    query: str = ""


ENDPOINTS = [
    Endpoint("GET", "/v1/projects", "reader"),
    Endpoint("POST", "/v1/projects", "system", {"name": "gamma"}),
    Endpoint("GET", "/v1/projects/{project}", "reader"),
    Endpoint("DELETE", "/v1/projects/{project}", "system"),
    Endpoint("GET", "/v1/projects/{project}/quota", "reader"),
    Endpoint("PUT", "/v1/projects/{project}/quota", "system", {"machines": 5}),
    Endpoint("PUT", "/v1/projects/{project}/strategy", "system", {"strategy": "pack"}),
    Endpoint("GET", "/v1/projects/{project}/tokens", "admin"),
    Endpoint("POST", "/v1/projects/{project}/tokens", "admin", {"role": "reader"}),
    Endpoint("DELETE", "/v1/projects/{project}/tokens/{token}", "admin"),
    Endpoint("GET", "/v1/machines", "reader"),
    Endpoint("POST", "/v1/machines", "member", {"image": "busybox", "runtime": "container"}),
    Endpoint("GET", "/v1/machines/{machine}", "reader"),
    Endpoint("POST", "/v1/machines/{machine}/start", "member"),
    Endpoint("POST", "/v1/machines/{machine}/stop", "member", {"timeout": 1}),
    Endpoint("POST", "/v1/machines/{machine}/kill", "member", {}),
    Endpoint("POST", "/v1/machines/{machine}/restart", "member"),
    Endpoint("GET", "/v1/machines/{machine}/wait", "reader", query="timeout=0"),
    Endpoint("GET", "/v1/machines/{machine}/logs", "reader"),
    Endpoint("DELETE", "/v1/machines/{machine}", "member", query="force=true"),
    Endpoint("GET", "/v1/events", "reader"),
    Endpoint("GET", "/v1/images", "reader"),
    Endpoint("POST", "/v1/images/pull", "member", {"ref": "busybox"}),
    Endpoint("POST", "/v1/images/import", "member", b"not an archive"),
    Endpoint("GET", "/v1/images/{image}", "reader"),
    Endpoint("DELETE", "/v1/images/{image}", "member"),
    Endpoint("GET", "/v1/nodes", "system"),
    Endpoint("GET", "/v1/nodes/{node}", "system"),
    Endpoint("POST", "/v1/nodes/{node}/cordon", "system"),
    Endpoint("POST", "/v1/nodes/{node}/uncordon", "system"),
    Endpoint("POST", "/v1/nodes/{node}/drain", "system"),
    Endpoint("DELETE", "/v1/nodes/{node}", "system"),
]
AGENTS = ["/agent/v1/nodes", "/agent/v1/nodes/{node_id}/heartbeat",
          "/agent/v1/nodes/{node_id}/assignments",
          "/agent/v1/nodes/{node_id}/machines/{machine_id}/report"]  # fmt: skip
UNAUTHENTICATED = ["/healthz"]
STREAMS = {"/v1/events"}  # never ends: read with a bound


def test_the_matrices_cover_every_route(api: Api) -> None:
    app = api.http._transport.app  # type: ignore[attr-defined]
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    covered = {(e.method, e.path.replace("{token}", "{token_id}")) for e in ENDPOINTS}
    covered = {
        (m, p.replace("{project}", "{name}").replace("{machine}", "{ref}").replace(
            "{image}", "{ref}").replace("{node}", "{ref}"))
        for m, p in covered
    }  # fmt: skip
    agent_routes = {r for r in routes if r[1] in AGENTS}
    health = {r for r in routes if r[1] in UNAUTHENTICATED}
    images = {(m, p.replace("{ref:path}", "{ref}")) for m, p in routes}
    assert images - covered - agent_routes - health == set()


async def fill(api: Api, e: Endpoint, owner_token: str) -> str:
    """The endpoint's path with fresh objects of the owner's project ("alpha")."""
    path = e.path.replace("{project}", "alpha").replace("{image}", "busybox")
    path = path.replace("{node}", "sim-1")
    if "{machine}" in path:
        r = await api.machine(owner_token)
        assert r.status_code == 201, r.text
        path = path.replace("{machine}", r.json()["id"])
    if "{token}" in path:
        r = await api.call(
            "POST", "/v1/projects/alpha/tokens", owner_token, json={"role": "reader"}
        )
        path = path.replace("{token}", r.json()["id"])
    return path + (f"?{e.query}" if e.query else "")


async def send(api: Api, e: Endpoint, path: str, token: str) -> int:
    kwargs: dict[str, object] = {}
    if isinstance(e.body, bytes):
        kwargs["content"] = e.body
    elif e.body is not None:
        kwargs["json"] = e.body
    if e.path in STREAMS:
        async with (
            served(api) as url,
            httpx.AsyncClient() as http,
            http.stream(e.method, url + path, headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            return r.status_code
    return (await api.call(e.method, path, token, **kwargs)).status_code


@pytest.mark.parametrize("e", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
async def test_another_projects_objects_do_not_exist(api: Api, e: Endpoint) -> None:
    alpha = await api.token("alpha", "admin")
    beta = await api.token("beta", "admin")
    path = await fill(api, e, alpha)
    if "{" not in e.path and e.least != "system":
        return  # no object of alpha's in the path: the listing test below covers it
    if e.path.startswith("/v1/images/"):
        return  # images live in nodes' stores: tests/client/test_image_tenancy.py checks them
    if e.least == "system":
        assert await send(api, e, path, beta) in (403, 404)  # a project token: never allowed
        return
    assert await send(api, e, path, beta) == 404, f"{e.method} {path} leaked alpha's object"


async def test_listings_and_events_show_only_the_callers_project(api: Api) -> None:
    alpha, beta = await api.token("alpha", "admin"), await api.token("beta", "admin")
    mine = (await api.machine(alpha, name="secret-work")).json()["id"]
    r = await api.call("GET", "/v1/machines?all=true", beta)
    assert r.status_code == 200 and r.json()["items"] == []
    r = await api.call("GET", "/v1/projects", beta)
    assert [p["name"] for p in r.json()["items"]] == ["beta"]
    await api.machine(beta, name="beta-work")
    seen: list[str] = []

    async def read_events(url: str) -> None:
        async with (
            httpx.AsyncClient() as http,
            http.stream(
                "GET", f"{url}/v1/events", headers={"Authorization": f"Bearer {beta}"}
            ) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["object"])

    async with served(api) as url:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read_events(url), 1.0)
    assert seen and mine not in seen


@pytest.mark.parametrize(
    "e", [e for e in ENDPOINTS if e.method != "GET"], ids=lambda e: f"{e.method} {e.path}"
)
async def test_roles(api: Api, e: Endpoint) -> None:
    """Below the least role: 403. At or above it: anything but 401/403 (the call may still
    fail for other reasons, e.g. a node that is not reachable: 503)."""
    owner = await api.token("alpha", "admin")
    for role in ROLES:
        path = await fill(api, e, owner)
        status = await send(api, e, path, await api.token("alpha", role))
        if RANK[role] < RANK[e.least]:
            assert status == 403, f"{role} got {status} for {e.method} {path}"
        else:
            assert status not in (401, 403), f"{role} got {status} for {e.method} {path}"
    path = await fill(api, e, owner)
    assert await send(api, e, path, api.admin) not in (401, 403)  # system tokens may all


async def test_a_token_cannot_mint_a_stronger_one(api: Api) -> None:
    member = await api.token("alpha", "admin")
    reader = await api.token("alpha", "reader")
    r = await api.call("POST", "/v1/projects/alpha/tokens", reader, json={"role": "admin"})
    assert r.status_code == 403
    r = await api.call("POST", "/v1/projects/alpha/tokens", member, json={"role": "admin"})
    assert r.status_code == 201


class Counted:
    """The tenancy service's store, counting the transactions begun through it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.begun = 0

    def read(self) -> AbstractAsyncContextManager[Tx]:
        self.begun += 1
        return self.store.read()

    def write(self) -> AbstractAsyncContextManager[Tx]:
        self.begun += 1
        return self.store.write()


async def test_a_project_route_finds_its_project_and_acts_in_one_transaction(api: Api) -> None:
    """Beside the caller's authentication, one transaction: the project named in the path is
    found where it is acted on (so it cannot go away in between)."""
    counted = Counted(api.ctl.tenancy.store)
    api.ctl.tenancy.store = counted  # type: ignore[assignment]
    token = (await api.call("POST", "/v1/projects/alpha/tokens", json={"role": "reader"})).json()
    calls = [
        ("GET", "/v1/projects/alpha/quota", None),
        ("PUT", "/v1/projects/alpha/quota", {"machines": 7}),
        ("PUT", "/v1/projects/alpha/strategy", {"strategy": "pack"}),
        ("GET", "/v1/projects/alpha/tokens", None),
        ("POST", "/v1/projects/alpha/tokens", {"role": "reader"}),
        ("DELETE", f"/v1/projects/alpha/tokens/{token['id']}", None),
    ]
    for method, path, body in calls:
        counted.begun = 0
        r = await api.call(method, path, json=body)
        assert r.status_code < 300, r.text
        assert counted.begun == 2, (method, path)  # authentication, then the route's own
    assert (await api.call("GET", "/v1/projects/alpha/quota")).json()["quota"]["machines"] == 7


async def test_expired_and_revoked_tokens_are_refused(api: Api) -> None:
    short = await api.token("alpha", "reader", expires_in=0.5)
    assert (await api.call("GET", "/v1/machines", short)).status_code == 200
    await asyncio.sleep(0.7)
    r = await api.call("GET", "/v1/machines", short)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    revocable = await api.call("POST", "/v1/projects/alpha/tokens", json={"role": "member"})
    token, token_id = revocable.json()["secret"], revocable.json()["id"]
    assert (await api.call("GET", "/v1/machines", token)).status_code == 200
    assert (await api.call("DELETE", f"/v1/projects/alpha/tokens/{token_id}")).status_code == 204
    r = await api.call("GET", "/v1/machines", token)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    for bad in ("", "hutch_not-a-token", "Basic abc"):
        r = await api.http.get("/v1/machines", headers={"Authorization": bad})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_a_node_credential_acts_only_on_its_own_node(api: Api) -> None:
    join = {"Authorization": "Bearer join-secret-for-tests"}
    body = {"name": "sim-2", "address": "http://127.0.0.1:9", "runtimes": ["container"],
            "accel": "none", "cpus": 1, "memory_mib": 1024, "disk_mib": 1024}  # fmt: skip
    second = (await api.http.post("/agent/v1/nodes", json=body, headers=join)).json()
    nodes = (await api.call("GET", "/v1/nodes")).json()["items"]
    first_id = next(n["id"] for n in nodes if n["name"] == "sim-1")
    stolen = {"Authorization": f"Bearer {second['credential']}"}
    r = await api.http.get(f"/agent/v1/nodes/{first_id}/assignments", headers=stolen)
    assert r.status_code == 404
    member = await api.token("alpha", "member")
    machine = await api.placed(member, (await api.machine(member)).json()["id"])
    assert machine["node"] == first_id  # placed on sim-1 (sim-2 is small)
    report = {"generation": 1, "state": "running", "time": 1.0}
    r = await api.http.post(
        f"/agent/v1/nodes/{second['node_id']}/machines/{machine['id']}/report",
        json=report, headers=stolen,
    )  # fmt: skip
    assert r.status_code == 404  # not its machine
    r = await api.http.post("/agent/v1/nodes", json={**body, "name": "sim-3"},
                            headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert r.status_code == 401
    r = await api.http.get(f"/agent/v1/nodes/{first_id}/assignments", headers=join)
    assert r.status_code == 401  # the join secret is not a node credential
