"""Event streams end with their token (revoked, expired) and their project (deleted), and deliver
nothing written after that; the same stream with a token that stays keeps delivering. Through a
real HTTP server, on one controller and across two sharing a store. (Followed logs and exec
sessions, which need a real node: tests/client/test_streams.py.)"""

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hutch import config
from hutch.api.app import create_app
from hutch.api.routes import machines as machine_routes
from hutch.controller import build_controller
from hutch.services.machines import SESSION_WAITERS
from tests.helpers.api import JOIN, Api, close_api, open_api, served

ENDS_WITHIN = 5.0  # seconds; the promise is one


@dataclass
class Stream:
    """An open GET /v1/events: the ids of the objects it delivered, until it ends."""

    objects: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    task: "asyncio.Task[None] | None" = None

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    async def until_seen(self, object_id: str) -> None:
        async with asyncio.timeout(10):
            while object_id not in self.objects:
                assert not self.ended, f"the stream ended before it delivered {object_id}"
                await asyncio.sleep(0.02)

    async def ends(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), ENDS_WITHIN)


@contextlib.asynccontextmanager
async def events(
    url: str, token: str, project: str | None = None, after: int | None = None
) -> AsyncIterator[Stream]:
    stream = Stream()
    params = {"project": project} if project else {}
    headers = {"Authorization": f"Bearer {token}"}
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    opened = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as http,
            http.stream("GET", f"{url}/v1/events", params=params, headers=headers) as r,
        ):  # fmt: skip
            assert r.status_code == 200
            opened.set()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    stream.objects.append(json.loads(line[6:])["object"])
                elif line.startswith("id: "):
                    stream.ids.append(int(line[4:]))

    stream.task = asyncio.create_task(read())
    async with asyncio.timeout(10):
        await asyncio.wait({stream.task, asyncio.ensure_future(opened.wait())},
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    if stream.task.done():
        stream.task.result()
    try:
        yield stream
    finally:
        stream.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stream.task


async def new_token(api: Api, project: str, **extra: object) -> tuple[str, str]:
    r = await api.call("POST", f"/v1/projects/{project}/tokens", json={"role": "member", **extra})
    assert r.status_code == 201, r.text
    return r.json()["secret"], r.json()["id"]


async def machine_id(api: Api, token: str, name: str) -> str:
    r = await api.machine(token, name=name)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_an_event_stream_goes_on_after_its_keepalives(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine_routes, "KEEPALIVE", 0.1)
    token, _ = await new_token(api, "alpha")
    async with served(api) as url, events(url, token) as stream:
        await asyncio.sleep(0.5)  # quiet: a few keepalives
        after = await machine_id(api, token, "after")
        await stream.until_seen(after)
        assert not stream.ended


async def test_a_revoked_tokens_event_stream_ends(api: Api) -> None:
    revoked, revoked_id = await new_token(api, "alpha")
    kept, _ = await new_token(api, "alpha")
    async with served(api) as url, events(url, revoked) as gone, events(url, kept) as stays:
        before = await machine_id(api, kept, "before")
        await gone.until_seen(before)
        await stays.until_seen(before)
        r = await api.call("DELETE", f"/v1/projects/alpha/tokens/{revoked_id}")
        assert r.status_code == 204
        after = await machine_id(api, kept, "after")
        await gone.ends()
        await stays.until_seen(after)
        assert after not in gone.objects
        assert not stays.ended


async def test_an_expired_tokens_event_stream_ends(api: Api) -> None:
    short, _ = await new_token(api, "alpha", expires_in=2)
    kept, _ = await new_token(api, "alpha")
    async with served(api) as url, events(url, short) as gone, events(url, kept) as stays:
        before = await machine_id(api, kept, "before")
        await gone.until_seen(before)
        expired = (await api.call("GET", "/v1/machines", short)).status_code
        while expired != 401:  # from the moment the token is refused
            await asyncio.sleep(0.05)
            expired = (await api.call("GET", "/v1/machines", short)).status_code
        after = await machine_id(api, kept, "after")
        await gone.ends()
        await stays.until_seen(after)
        assert after not in gone.objects
        assert not stays.ended


async def test_a_deleted_projects_event_streams_end(api: Api) -> None:
    await api.project("gamma")
    member, _ = await new_token(api, "gamma")
    async with (
        served(api) as url,
        events(url, member) as by_member,
        events(url, api.admin, "gamma") as by_system,
        events(url, api.admin, "alpha") as elsewhere,
    ):
        assert (await api.call("DELETE", "/v1/projects/gamma")).status_code == 204
        await by_member.ends()
        await by_system.ends()
        await api.project("gamma")  # a new project of the old name: not the old streams'
        r = await api.call("POST", "/v1/machines?project=alpha", json={
            "image": "busybox", "runtime": "container", "name": "in-alpha"})  # fmt: skip
        await elsewhere.until_seen(r.json()["id"])
        assert not elsewhere.ended


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_token_revoked_through_another_controller_ends_the_stream(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """The revocation reaches this controller only through the store."""
    tmp = Path(tempfile.mkdtemp(prefix="ha", dir="/tmp"))
    url_db = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    url_db = url_db or f"sqlite:///{tmp / 'controller.db'}"
    api, _ = await open_api(tmp, url_db)
    other_dir = tmp / "other"
    other_dir.mkdir()
    settings = config.load(state_dir=other_dir, database_url=url_db, join_secret=JOIN,
                           controller_secret="c" * 32)  # fmt: skip
    other = build_controller(settings)
    await other.store.open()
    try:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(other)), base_url="http://other"
        )
        await api.project("alpha")
        revoked, revoked_id = await new_token(api, "alpha")
        kept, _ = await new_token(api, "alpha")
        async with served(api) as url, events(url, revoked) as gone, events(url, kept) as stays:
            before = await machine_id(api, kept, "before")
            await gone.until_seen(before)
            r = await http.delete(f"/v1/projects/alpha/tokens/{revoked_id}",
                                  headers={"Authorization": f"Bearer {api.admin}"})  # fmt: skip
            assert r.status_code == 204, r.text
            await gone.ends()
            after = await machine_id(api, kept, "after")
            await stays.until_seen(after)
            assert after not in gone.objects
            assert not stays.ended
        await http.aclose()
    finally:
        await other.link.close()
        await other.store.close()
        await close_api(api)


async def test_a_projects_event_ids_say_nothing_about_other_projects(api: Api) -> None:
    """Event ids are numbers within the project: consecutive while another project is busy."""
    alpha, beta = await api.token("alpha", "member"), await api.token("beta", "member")
    mine = []
    for i in range(4):
        mine.append(await machine_id(api, alpha, f"a{i}"))
        for j in range(3):
            await machine_id(api, beta, f"b{i}-{j}")
    async with served(api) as url:
        async with events(url, alpha) as seen:
            await seen.until_seen(mine[-1])
        assert seen.ids == list(range(1, len(seen.ids) + 1))
        assert set(mine) <= set(seen.objects)
        async with events(url, alpha, after=seen.ids[1]) as resumed:  # Last-Event-ID
            await resumed.until_seen(mine[-1])
        first = seen.ids[2]  # and then on, as they come
        assert resumed.ids[: len(seen.ids) - 2] == seen.ids[2:]
        assert resumed.ids == list(range(first, first + len(resumed.ids)))


async def test_a_token_holds_at_most_streams_per_token_streams(api: Api) -> None:
    """The next stream of a token that holds `streams_per_token` (32) is a 429 that says so,
    before anything streams; another token's opens, and so does the first's once one ends."""
    busy, _ = await new_token(api, "alpha")
    other, _ = await new_token(api, "alpha")
    async with served(api) as url, contextlib.AsyncExitStack() as held:
        streams = [await held.enter_async_context(events(url, busy)) for _ in range(32)]
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{url}/v1/events", headers={"Authorization": f"Bearer {busy}"})
            assert r.status_code == 429, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert "streams_per_token" in r.json()["detail"]
            r = await http.get(
                f"{url}/v1/machines/m-1/logs", headers={"Authorization": f"Bearer {busy}"}
            )
            assert r.status_code == 429, r.text
        async with events(url, other) as elsewhere:  # another token: under its own limit
            seen = await machine_id(api, other, "seen")
            await elsewhere.until_seen(seen)
            await streams[0].until_seen(seen)
        assert streams[0].task is not None
        streams[0].task.cancel()  # one of the 32 ends: the token may open one again
        with contextlib.suppress(asyncio.CancelledError):
            await streams[0].task
        async with asyncio.timeout(5):
            while True:
                with contextlib.suppress(AssertionError):
                    async with events(url, busy) as again:
                        assert not again.ended
                        break
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def exec_socket(url: str, token: str, ref: str) -> AsyncIterator[ClientConnection]:
    """An exec WebSocket with its ExecStart sent."""
    async with connect(f"ws{url[4:]}/v1/machines/{ref}/exec",
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:  # fmt: skip
        await ws.send(json.dumps({"command": ["true"]}))
        yield ws


async def refusal(ws: ClientConnection, within: float = 5.0) -> dict[str, object]:
    said: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), within))
    assert said["type"] == "error", said
    return said


async def test_sessions_wait_for_a_booting_machine_a_bounded_few_and_leave_with_their_client(
    api: Api,
) -> None:
    """An exec into a machine that has not booted yet (here never: no agent runs the simulated
    node) waits for it, holding a stream of its token. At most SESSION_WAITERS of a project
    wait at once: the next is a 429 at once, while another project's still waits. A client
    that leaves frees its place at once; a machine destroyed meanwhile ends the wait, refused."""
    token, _ = await new_token(api, "alpha")
    other, _ = await new_token(api, "beta")
    booting = await machine_id(api, token, "booting")
    theirs = await machine_id(api, other, "theirs")
    alpha = (await api.call("GET", "/v1/projects/alpha")).json()["id"]
    async with served(api) as url, contextlib.AsyncExitStack() as held:
        waiting = [await held.enter_async_context(exec_socket(url, token, booting))
                   for _ in range(SESSION_WAITERS)]  # fmt: skip
        async with asyncio.timeout(5):  # each is waiting once the project counts it
            while api.ctl.machines.sessions_waiting(alpha) < SESSION_WAITERS:
                await asyncio.sleep(0.02)
        async with exec_socket(url, token, booting) as one_more:
            said = await refusal(one_more)
            assert said["status"] == 429 and "boot" in str(said["detail"]), said
        async with exec_socket(url, other, theirs) as elsewhere:  # beta's waits: no refusal
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(elsewhere.recv(), 1.0)
        await waiting[0].close()  # it leaves: its place is free at once
        async with asyncio.timeout(5):
            while api.ctl.machines.sessions_waiting(alpha) >= SESSION_WAITERS:
                await asyncio.sleep(0.02)
        async with exec_socket(url, token, booting) as again:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(again.recv(), 1.0)
            r = await api.call("DELETE", f"/v1/machines/{booting}?force=true", token)
            assert r.status_code in (200, 202, 204), r.text
            said = await refusal(again)  # ended by its destruction, not after 120 s
            assert said["status"] == 400 and "not running" in str(said["detail"]), said
