"""A machine page's live parts (hutch/web/pages/live.py) against a real `hutch up`, with one
container machine: its log as server-sent events and server-side, its shell over the exec
WebSocket (cookie, Origin, CSRF, the API's policy), its metrics and cost, and another
project's machine out of reach. The streams' bound per token needs no node: in-process."""

import asyncio
import json
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from hutch.client import Client
from hutch.wire.machines import MachineView
from tests.controller import Controller, controller, new_project
from tests.helpers.api import Api, close_api, open_api, served
from tests.helpers.web import Visitor as WebVisitor
from tests.helpers.web import csrf_of
from tests.store.at_head import controller_db_at_head

__all__ = ["controller"]  # the session fixture, for the tests here
# Floods its log past the ring (log_max_bytes, 1 MiB) before anyone reads it, then prints a
# line that is HTML, one to stderr, then ticks (its log follows on).
TALKER = (
    "head -c 1500000 /dev/zero | tr '\\0' x; echo; echo '<b>hello & web</b>'; echo oops >&2; "
    "while :; do echo tick; sleep 1; done"
)


@dataclass
class Visitor:
    """A signed-in browser, without the browser: its cookies and the session's CSRF value."""

    url: str
    http: httpx.Client
    csrf: str

    def exec(self, m: str, query: dict[str, str], origin: str = "") -> ClientConnection:
        """The page's shell WebSocket; `origin` "" is this site's, "none" sends none."""
        ws_url = self.url.replace("http", "ws", 1) + f"/ui/machines/{m}/exec"
        cookie = f"hutch_session={self.http.cookies['hutch_session']}"
        return connect(
            ws_url + "?" + str(httpx.QueryParams(query)),
            additional_headers={"Cookie": cookie},
            origin=None if origin == "none" else (origin or self.url),  # type: ignore[arg-type]
            open_timeout=10,
        )


@dataclass
class Site:
    ctl: Controller
    project: str
    machine: MachineView
    member: Visitor
    member_token: str
    reader: Visitor
    reader_token: str
    stranger: Visitor  # a member of another project


def sign_in(ctl: Controller, token: str) -> Visitor:
    http = httpx.Client(base_url=ctl.url, timeout=30)
    form = http.get("/ui/login")
    r = http.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)})
    assert r.status_code == 303, r.text
    return Visitor(ctl.url, http, csrf_of(http.get("/ui/machines").text))


@pytest.fixture(scope="module")
def site(controller: Controller) -> Iterator[Site]:
    project, other = new_project(controller, "web"), new_project(controller, "web")
    with controller.client(None) as admin:
        tokens = {
            role: admin.projects.tokens.create(project, role=role).secret
            for role in ("member", "reader")
        }
        stranger = admin.projects.tokens.create(other, role="member").secret
    with Client(controller.url, tokens["member"], project=project) as client:
        m = client.machines.run(
            "busybox", ["sh", "-c", TALKER], runtime="container", hold_output=False
        )
        visitors = [sign_in(controller, t) for t in (tokens["member"], tokens["reader"], stranger)]
        try:
            yield Site(controller, project, m, visitors[0], tokens["member"], visitors[1],
                       tokens["reader"], visitors[2])  # fmt: skip
        finally:
            for v in visitors:
                v.http.close()
            client.machines.delete(m, force=True)


def test_the_log_streams_what_the_workload_printed_escaped(site: Site) -> None:
    said: list[str] = []
    logs = f"/ui/machines/{site.machine.id}/logs?tail=10000"
    with site.member.http.stream("GET", logs) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            elif line.startswith("data: "):
                said.append(line[6:])
            if "tick" in said[-1:] and any("oops" in d for d in said):
                break
    text = "\n".join(said)
    assert set(events) == {"log"}
    assert 'hx-swap-oob="innerHTML:#logs"' in said[0]  # a (re)connection starts afresh
    assert "&lt;b&gt;hello &amp; web&lt;/b&gt;" in text and "<b>" not in text
    assert '<span class="stderr">oops' in text
    # What the log dropped before anyone read it is said where it was.
    lost = re.search(r"\[(\d+) bytes of stdout were lost here\]", text)
    assert lost and 1_500_000 - (1 << 20) <= int(lost.group(1)) < 1_500_000, text[:300]
    # Without JavaScript: the page holds the tail itself.
    page = site.member.http.get(f"/ui/machines/{site.machine.id}")
    assert page.status_code == 200
    pre = page.text.split('<pre id="logs"', 1)[1].split("</pre>", 1)[0]
    assert "&lt;b&gt;hello &amp; web&lt;/b&gt;" in pre and "tick" in pre
    assert "characters before these are not shown here" in pre and len(pre) < 300_000


def test_the_shell_runs_a_command_for_a_member_and_the_api_refuses_a_reader_alike(
    site: Site,
) -> None:
    m = site.machine.id
    with site.member.exec(m, {"csrf": site.member.csrf}) as ws:
        ws.send(json.dumps({"command": ["sh", "-c", "echo shell-$((40 + 2))"]}))
        out = b""
        while True:
            message = ws.recv(timeout=30)
            if isinstance(message, str):
                assert json.loads(message)["type"] == "exit", message
                break
            out += message[1:]
    assert b"shell-42" in out
    # The reader is refused the shell, as the API refuses its token exec.
    with site.reader.exec(m, {"csrf": site.reader.csrf}) as ws:
        ws.send(json.dumps({"command": ["true"]}))
        refused = json.loads(ws.recv(timeout=30))
    api_url = site.ctl.url.replace("http", "ws", 1) + f"/v1/machines/{m}/exec"
    headers = {"Authorization": f"Bearer {site.reader_token}"}
    with connect(api_url, additional_headers=headers) as ws:
        ws.send(json.dumps({"command": ["true"]}))
        by_api = json.loads(ws.recv(timeout=30))
    assert refused == by_api and refused["status"] == 403, refused
    page = site.reader.http.get(f"/ui/machines/{m}").text
    assert 'id="shell"' not in page and 'id="logs"' in page


def test_signing_out_ends_the_shell_and_the_log(site: Site) -> None:
    v = sign_in(site.ctl, site.member_token)
    m = site.machine.id
    with (
        v.exec(m, {"csrf": v.csrf}) as ws,
        v.http.stream("GET", f"/ui/machines/{m}/logs?tail=1") as log,
    ):
        ws.send(json.dumps({"command": ["sh"], "stdin": True}))
        ws.send(b"\x00echo still-$((6 * 7))\n")
        assert b"still-42" in ws.recv(timeout=30)
        lines = log.iter_lines()
        assert next(lines) == "event: log"  # it streams
        r = v.http.post("/ui/logout", data={"csrf": v.csrf})
        assert r.status_code == 303
        ended = json.loads(ws.recv(timeout=10))  # within SESSION_CHECK, and a tick
        assert ended["type"] == "error" and ended["status"] == 401, ended
        assert "event: end" in list(lines)  # then the stream ends (it ticks every second)
    v.http.close()


@pytest.mark.parametrize(
    ("query", "origin", "why"),
    [
        ({}, "", "security token"),
        ({"csrf": "forged"}, "", "security token"),
        ("csrf", "http://evil.example", "Origin"),
        ("csrf", "none", "Origin"),
    ],
)
def test_the_shell_needs_the_pages_origin_and_csrf_value(
    site: Site, query: object, origin: str, why: str
) -> None:
    params = {"csrf": site.member.csrf} if query == "csrf" else query
    assert isinstance(params, dict)
    with site.member.exec(site.machine.id, params, origin) as ws:
        said = ws.recv(timeout=30)  # refused before its start message is read
    assert isinstance(said, str)
    refusal = json.loads(said)
    assert refusal["type"] == "error" and refusal["status"] == 403, refusal
    assert why in refusal["detail"]


def test_another_projects_machine_is_not_found(site: Site) -> None:
    m = site.machine.id
    for path in (f"/ui/machines/{m}", f"/ui/machines/{m}/logs", f"/ui/machines/{m}/metrics"):
        r = site.stranger.http.get(path)
        assert r.status_code == 404, (path, r.status_code)
    with site.stranger.exec(m, {"csrf": site.stranger.csrf}) as ws:
        ws.send(json.dumps({"command": ["true"]}))
        assert json.loads(ws.recv(timeout=30))["status"] == 404
    assert site.member.http.get(f"/ui/machines/{m}/metrics").status_code == 200


def test_the_sparklines_read_hutchs_telemetry_and_the_page_says_the_cost(site: Site) -> None:
    deadline = time.monotonic() + 30  # the node samples every second here
    while True:
        r = site.member.http.get(f"/ui/machines/{site.machine.id}/metrics")
        assert r.status_code == 200
        series = r.json()
        if any(c is not None for c in series["cpu"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    n = len(series["time"])
    assert n >= 2 and all(len(series[k]) == n for k in ("cpu", "memory", "rx", "tx"))
    assert series["cpu"][-1] is not None and series["cpu"][-1] >= 0
    assert series["memory"][-1] > 0
    page = site.member.http.get(f"/ui/machines/{site.machine.id}").text
    assert 'id="cost"' in page and 'id="sparks"' in page


@pytest.fixture
async def one_stream(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """The in-process controller (simulated node), each token holding one stream at most."""
    tmp = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp"))
    api, _ = await open_api(tmp, controller_db_at_head(request, "sqlite", tmp), streams_per_token=1)
    await api.project("alpha")
    yield api
    await close_api(api)


async def test_a_visitors_log_streams_are_its_tokens_streams(one_stream: Api) -> None:
    """Also: a machine that has not started yet (the run form opens its page at once) has its
    log followed once it starts, not ended before it begins."""
    api = one_stream
    await api.call("POST", "/v1/nodes/sim-1/cordon")
    node = await api.join("sim-2")  # its credential reports the machine running
    token = await api.token("alpha", "member")
    m = (await api.placed(token, (await api.machine(token)).json()["id"]))["id"]
    async with served(api) as url:
        v = WebVisitor(api, url, served=True)
        assert (await v.sign_in(token)).status_code == 303
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as http,
            http.stream("GET", "/v1/events", headers=headers) as held,
        ):  # fmt: skip
            assert held.status_code == 200
            r = await v.get(f"/ui/machines/{m}/logs")
            assert r.status_code == 429 and 'role="alert"' in r.text
            assert "streams open" in r.text
        # Released: the log waits for the machine to start (held: the next stream is 429)...
        for _ in range(100):
            log = asyncio.create_task(v.get(f"/ui/machines/{m}/logs"))
            await asyncio.sleep(0.5)
            if not log.done():
                break
            assert log.result().status_code == 429, log.result().text
        assert not log.done()
        assert (await v.get(f"/ui/machines/{m}/logs")).status_code == 429
        # A page that goes away while it waits gives its stream back.
        log.cancel()
        for _ in range(100):
            log = asyncio.create_task(v.get(f"/ui/machines/{m}/logs"))
            await asyncio.sleep(0.5)
            if not log.done():
                break
            assert log.result().status_code == 429, log.result().text
        assert not log.done()
        # ...then, running, is read from the node (simulated here: it cannot be reached).
        report = {"generation": 1, "state": "running", "time": time.time()}
        r = await api.http.post(
            f"/agent/v1/nodes/{node['node_id']}/machines/{m}/report", json=report,
            headers={"Authorization": f"Bearer {node['credential']}"},
        )  # fmt: skip
        assert r.status_code == 204, r.text
        r = await asyncio.wait_for(log, 10)
        assert r.status_code == 503, r.text
        await v.close()
