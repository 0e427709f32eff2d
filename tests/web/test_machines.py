"""The machines pages (hutch/web/pages/machines.py): list, filter, sort, run, bulk and single
actions, a machine's page, the live stream; roles and tenancy as the API has them. The node is
simulated (tests/helpers/api.py): machines are placed, never started."""

import asyncio
import contextlib
import re

import httpx

from tests.helpers.api import Api, served
from tests.helpers.web import Visitor

ROW = re.compile(r'<tr id="m-([a-z0-9-]+)" data-state="([a-z]+)"')


def rows(page: str) -> list[tuple[str, str]]:
    return ROW.findall(page)


async def signed_in(api: Api, project: str, role: str, **kw: object) -> Visitor:
    v = Visitor(api, **kw)  # type: ignore[arg-type]
    assert (await v.sign_in(await api.token(project, role))).status_code == 303
    return v


async def test_list_filter_and_sort(api: Api) -> None:
    member = await api.token("alpha", "member")
    made = {}
    for name, image in [("web", "busybox"), ("db", "alpine"), ("cache", "busybox")]:
        r = await api.machine(member, name=name, image=image)
        made[name] = r.json()["id"]
    await api.machine(await api.token("beta", "member"), name="theirs")
    v = await signed_in(api, "alpha", "reader")
    page = (await v.get("/ui/machines")).text
    assert {i for i, _ in rows(page)} == set(made.values())  # beta's is not here
    assert all(state == "created" for _, state in rows(page))
    assert '<td class="state">' in page and '<table id="machines">' in page
    by_name = rows((await v.get("/ui/machines", params={"sort": "name", "dir": "asc"})).text)
    assert [i for i, _ in by_name] == [made["cache"], made["db"], made["web"]]
    by_name = rows((await v.get("/ui/machines", params={"sort": "name", "dir": "desc"})).text)
    assert [i for i, _ in by_name] == [made["web"], made["db"], made["cache"]]
    found = rows((await v.get("/ui/machines", params={"q": "BUSY"})).text)
    assert {i for i, _ in found} == {made["web"], made["cache"]}
    assert rows((await v.get("/ui/machines", params={"state": "running"})).text) == []
    for bad in ({"sort": "size"}, {"dir": "up"}, {"state": "asleep"}, {"q": "x" * 201}):
        r = await v.get("/ui/machines", params=bad)
        assert r.status_code == 400 and 'role="alert"' in r.text, bad
        assert "<html" in r.text  # a page, not problem+json
    await v.close()


async def test_run_from_the_form_and_bad_input(api: Api) -> None:
    v = await signed_in(api, "alpha", "member")
    r = await v.post(
        "/ui/machines",
        {"image": "busybox", "name": "hello", "command": "sh -c 'echo hi'", "cpus": "2"},
    )
    assert r.status_code == 303, r.text
    page = await v.get(r.headers["location"])
    assert page.status_code == 200
    assert re.search(r'<span id="state" class="badge s-created">created</span>', page.text)
    # The command as it was typed: shell words, quoted where they need it.
    assert "sh -c &#39;echo hi&#39;" in page.text and "machine.created" in page.text
    offered = re.findall(r'<button name="action" value="(\w+)"', page.text)
    assert offered == ["stop", "remove"]  # wanted running, not yet: no start, no suspend
    assert (
        '<button name="action" value="remove" class="danger" data-confirm="Remove ' in page.text
    )  # it asks first
    for form, said in [
        ({"image": "busybox", "cpus": "0"}, "cpus"),
        ({"image": "busybox", "memory": "lots"}, "memory"),
        ({"image": "busybox", "command": "echo 'open"}, "not valid shell words"),
        ({"image": "Not An Image"}, "Not An Image"),
        ({"image": "busybox", "name": "hello"}, "hello"),  # taken
        ({"name": "x"}, "image"),
    ]:
        r = await v.post("/ui/machines", form)
        assert 400 <= r.status_code < 500 and 'role="alert"' in r.text, (form, r.text)
        assert said in r.text, (form, r.text)
    await v.close()


async def test_a_reader_sees_no_actions_and_a_forged_post_is_refused(api: Api) -> None:
    token = await api.token("alpha", "member")
    m = (await api.machine(token, name="web")).json()
    reader = await signed_in(api, "alpha", "reader")
    for path in ("/ui/machines", f"/ui/machines/{m['id']}"):
        page = (await reader.get(path)).text
        assert 'id="run"' not in page and 'id="bulk"' not in page, path
        assert 'name="action"' not in page and 'name="id"' not in page, path
    # The reader's own session and CSRF value: the services' policy refuses it all the same.
    r = await reader.post(f"/ui/machines/{m['id']}/remove")
    assert r.status_code == 403 and "machine.write needs the member role" in r.text
    r = await reader.post("/ui/machines/bulk", {"action": "remove", "id": m["id"]})
    assert r.status_code == 403 and "machine.write needs the member role" in r.text
    r = await reader.post("/ui/machines", {"image": "busybox"})
    assert r.status_code == 403
    member = await signed_in(api, "alpha", "member")
    page = (await member.get(f"/ui/machines/{m['id']}")).text
    assert '<button name="action" value="remove" class="danger" data-confirm="Remove ' in page
    r = await member.post(f"/ui/machines/{m['id']}/remove")
    assert r.status_code == 303 and r.headers["location"] == "/ui/machines"
    r = await api.call("GET", f"/v1/machines/{m['id']}", token)
    assert r.json()["desired"] == "destroyed", r.text  # its (simulated) node would end it
    for each in (reader, member):
        await each.close()


async def test_another_projects_machine_is_not_found(api: Api) -> None:
    m = (await api.machine(await api.token("alpha", "member"), name="web")).json()
    beta = await signed_in(api, "beta", "admin")
    for r in [
        await beta.get(f"/ui/machines/{m['id']}"),
        await beta.get("/ui/machines/web"),
        await beta.post(f"/ui/machines/{m['id']}/stop"),
        await beta.get("/ui/events", params={"machine": m["id"]}),
    ]:
        assert r.status_code == 404 and "no machine" in r.text and "<html" in r.text
    r = await beta.post("/ui/machines/bulk", {"action": "stop", "id": m["id"]})
    assert r.status_code == 404 and "no machine" in r.text
    alpha = await signed_in(api, "alpha", "reader")
    assert (await alpha.get(f"/ui/machines/{m['id']}")).status_code == 200  # its own see it
    for each in (beta, alpha):
        await each.close()


async def test_bulk_actions(api: Api) -> None:
    member = await api.token("alpha", "member")
    a = (await api.machine(member, name="a")).json()["id"]
    b = (await api.machine(member, name="b")).json()["id"]
    v = await signed_in(api, "alpha", "member")
    r = await v.post("/ui/machines/bulk", {"action": "stop", "id": [a, b]})
    assert r.status_code == 303
    states = dict(rows((await v.get("/ui/machines")).text))
    assert states[a] in ("stopping", "exited") and states[b] in ("stopping", "exited")
    r = await v.post("/ui/machines/bulk", {"action": "remove", "id": [a, "m-nope"]})
    assert r.status_code == 404 and "m-nope" in r.text and "remove: " + a in r.text
    r = await api.call("GET", f"/v1/machines/{a}", member)
    assert r.json()["desired"] == "destroyed"  # what could be done was done
    for bad in ({"action": "explode", "id": b}, {"action": "stop"}):
        r = await v.post("/ui/machines/bulk", bad)
        assert r.status_code == 400 and 'role="alert"' in r.text, bad
    r = await v.post(f"/ui/machines/{b}/explode")
    assert r.status_code == 400 and 'role="alert"' in r.text
    r = await v.post(f"/ui/machines/{b}/stop", {"csrf": ""})
    assert r.status_code == 403 and "security token" in r.text
    await v.close()


async def _next_message(lines: "asyncio.Queue[str]", kind: str) -> str:
    """The data of the next SSE message of `kind`."""
    event, data = "", []
    while True:
        line = await asyncio.wait_for(lines.get(), 10)
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "":
            if event == kind:
                return "\n".join(data)
            event, data = "", []


async def _read(r: httpx.Response, lines: "asyncio.Queue[str]") -> None:
    with contextlib.suppress(httpx.ReadError):  # the stream closed at the test's end
        async for line in r.aiter_lines():
            await lines.put(line)


async def test_the_stream_keeps_the_pages_live(api: Api) -> None:
    member = await api.token("alpha", "member")
    async with served(api) as url:
        v = await signed_in(api, "alpha", "member", base_url=url, served=True)
        listed = re.search(
            r'sse-connect="/ui/events\?after=(\d+)&amp;q=&amp;state="',
            (await v.get("/ui/machines")).text,
        )
        assert listed
        rows_: asyncio.Queue[str] = asyncio.Queue()
        state: asyncio.Queue[str] = asyncio.Queue()
        async with contextlib.AsyncExitStack() as streams:
            r = await streams.enter_async_context(
                v.http.stream("GET", f"/ui/events?after={listed[1]}", timeout=None)
            )
            assert r.headers["content-type"].startswith("text/event-stream")
            reading = [asyncio.create_task(_read(r, rows_))]
            m = (await api.machine(member, name="live")).json()
            new = await _next_message(rows_, "machine")  # a new row, put first
            assert new.startswith('<tbody hx-swap-oob="afterbegin:#machines tbody">')
            assert f'<tr id="m-{m["id"]}" data-state="created"' in new
            page = (await v.get(f"/ui/machines/{m['id']}")).text
            after = re.search(r'after=(\d+)"', page)
            assert after
            r = await streams.enter_async_context(
                v.http.stream("GET", f"/ui/events?machine={m['id']}&after={after[1]}", timeout=None)
            )
            reading.append(asyncio.create_task(_read(r, state)))
            await api.call("POST", f"/v1/machines/{m['id']}/stop", member)
            # The row is swapped in place as it is placed and stops; the machine's page gets
            # its state, its actions and its new events.
            stopped = rf'<tr id="m-{m["id"]}" data-state="(stopping|exited)" hx-swap-oob="true">'
            while not re.match(stopped, await _next_message(rows_, "machine")):
                pass
            live = await _next_message(state, "state")
            while "s-created" in live:  # placed, before it stopped
                live = await _next_message(state, "state")
            assert re.match(
                r'<span id="state" class="badge s-(stopping|exited)" hx-swap-oob="true">', live
            )
            assert '<div id="actions" class="actions" hx-swap-oob="true">' in live
            # Its spec too (node, start, end), not only as the page first read it.
            spec = live.split('<dl id="spec" class="spec" hx-swap-oob="true">', 1)[1]
            node = (await api.call("GET", f"/v1/machines/{m['id']}", member)).json()["node"]
            assert f'<dd class="mono">{node}</dd>' in spec.split("</dl>", 1)[0]
            assert '<template><tbody hx-swap-oob="afterbegin:#events tbody">' in live
            assert "stop requested" in live
            for task in reading:
                task.cancel()
        await v.close()


async def test_signing_out_ends_the_stream(api: Api) -> None:
    member = await api.token("alpha", "member")
    async with served(api) as url:
        v = await signed_in(api, "alpha", "member", base_url=url, served=True)
        lines: asyncio.Queue[str] = asyncio.Queue()
        async with v.http.stream("GET", "/ui/events", timeout=None) as r:
            reading = asyncio.create_task(_read(r, lines))
            await api.machine(member, name="seen")
            assert 'data-state="created"' in await _next_message(lines, "machine")
            assert (await v.post("/ui/logout")).status_code == 303
            await api.machine(member, name="unseen")
            await asyncio.wait_for(reading, 10)  # the server closed it
        said = []
        while not lines.empty():
            said.append(lines.get_nowait())
        assert any("your session has ended" in line for line in said), said
        assert not any("unseen" in line for line in said), said
        await v.close()


async def test_a_filtered_list_gains_only_what_it_shows(api: Api) -> None:
    member = await api.token("alpha", "member")
    async with served(api) as url:
        v = await signed_in(api, "alpha", "member", base_url=url, served=True)
        lines: asyncio.Queue[str] = asyncio.Queue()
        async with v.http.stream("GET", "/ui/events?q=web", timeout=None) as r:
            reading = asyncio.create_task(_read(r, lines))
            await api.machine(member, name="db-1")
            web = (await api.machine(member, name="web-1")).json()
            new = await _next_message(lines, "machine")
            assert f'<tr id="m-{web["id"]}"' in new and "db-1" not in new
            reading.cancel()
        r = await v.get("/ui/events", params={"state": "asleep"})
        assert r.status_code == 400
        await v.close()
