"""Input the store cannot hold, or that means nothing, is a 422 that says which field and why:
integers beyond 64 bits, NUL in strings, JSON's non-standard NaN and Infinity, environment
entries no process can have. Each refusal stands next to the same request with a value that
fits, which passes. On both databases: PostgreSQL refuses NUL in text, SQLite does not."""

import base64
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.api import Api, close_api, open_api, served
from tests.store.at_head import controller_db_at_head

INT32_MAX = 2**31 - 1  # what INTEGER columns hold: quotas, capacities
INT64_MAX = 2**63 - 1  # what BIGINT columns hold: event ids


@pytest.fixture(params=["sqlite", "postgres"])
async def db_api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    tmp = Path(tempfile.mkdtemp(prefix="hi", dir="/tmp"))
    api, _ = await open_api(tmp, controller_db_at_head(request, request.param, tmp))
    await api.project("alpha")
    yield api
    await close_api(api)


def refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


async def test_integers_beyond_64_bits_are_refused(db_api: Api) -> None:
    api = db_api
    r = await api.call("PUT", "/v1/projects/alpha/quota", json={"machines": 2**63})
    refused(r, "machines", str(INT32_MAX))
    r = await api.call("PUT", "/v1/projects/alpha/quota", json={"machines": INT32_MAX + 1})
    refused(r, "machines", str(INT32_MAX))
    r = await api.call("PUT", "/v1/projects/alpha/quota", json={"machines": INT32_MAX})
    assert r.status_code == 200 and r.json()["quota"]["machines"] == INT32_MAX
    r = await api.call("POST", "/v1/projects", json={"name": "big", "quota": {"vcpus": 2**64}})
    refused(r, "quota.vcpus")
    assert (await api.call("GET", "/v1/projects/big")).status_code == 404
    r = await api.call("GET", "/v1/machines", params={"project": "alpha", "limit": 2**63})
    refused(r, "limit")
    r = await api.call("GET", "/v1/machines", params={"project": "alpha", "limit": INT32_MAX})
    assert r.status_code == 200


async def _open_events(url: str, api: Api, **kwargs: object) -> tuple[int, str]:
    """The status of an event stream's answer, and its body when it is a refusal."""
    async with (
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api.admin}"}) as c,
        c.stream("GET", "/v1/events", timeout=10, **kwargs) as r,  # type: ignore[arg-type]
    ):
        return r.status_code, "" if r.status_code == 200 else (await r.aread()).decode()


async def test_event_positions_beyond_64_bits_are_refused(db_api: Api) -> None:
    api = db_api
    async with served(api) as url:
        for too_big in (
            {"params": {"project": "alpha", "after": str(2**63)}},
            {"params": {"project": "alpha"}, "headers": {"Last-Event-ID": str(10**30)}},
        ):
            status, body = await _open_events(url, api, **too_big)
            assert status == 422, (too_big, body)
            assert str(INT64_MAX) in body
        for fits in (
            {"params": {"project": "alpha", "after": str(INT64_MAX)}},
            {"params": {"project": "alpha"}, "headers": {"Last-Event-ID": "5"}},
        ):
            assert (await _open_events(url, api, **fits))[0] == 200, fits


async def test_nan_and_infinity_are_no_json(db_api: Api) -> None:
    api = db_api
    headers = {"Authorization": f"Bearer {api.admin}", "Content-Type": "application/json"}
    for constant in (b"Infinity", b"-Infinity", b"NaN"):
        r = await api.http.post(
            "/v1/projects/alpha/tokens", headers=headers, content=b'{"expires_in": %s}' % constant
        )
        refused(r, "expires_in")
    r = await api.call("POST", "/v1/projects/alpha/tokens", json={"expires_in": 1e300})
    refused(r, "expires_in")
    r = await api.call("POST", "/v1/projects/alpha/tokens", json={"expires_in": 3600})
    assert r.status_code == 201 and r.json()["expires_at"] > r.json()["created_at"]


async def test_nul_in_strings_is_refused(db_api: Api) -> None:
    api = db_api
    calls: list[tuple[str, str, dict[str, object], str]] = [
        ("GET", "/v1/machines", {"params": {"project": "alpha", "label": "a=\x00"}}, "label"),
        ("GET", "/v1/machines", {"params": {"project": "al\x00pha"}}, "project"),
        ("GET", "/v1/machines/m%00x", {"params": {"project": "alpha"}}, "NUL"),
        ("GET", "/v1/projects/al%00pha", {}, "NUL"),
        ("POST", "/v1/projects/alpha/tokens", {"json": {"name": "ci\x00"}}, "name"),
        ("POST", "/v1/projects", {"json": {"name": "a\x00"}}, "name"),
    ]
    for method, path, kwargs, word in calls:
        r = await api.call(method, path, None, **kwargs)
        refused(r, word, "NUL")
    r = await api.call("GET", "/v1/machines", params={"project": "alpha", "label": "a=b"})
    assert r.status_code == 200
    r = await api.call("POST", "/v1/projects/alpha/tokens", json={"name": "ci"})
    assert r.status_code == 201


async def test_bad_environment_entries_are_refused_at_create(db_api: Api) -> None:
    api = db_api
    token = await api.token("alpha", "member")
    for env, words in [
        ({"A=B": "v"}, ("env", "'='")),
        ({"": "v"}, ("env", "empty")),
        ({"A\x00": "v"}, ("env", "NUL")),
        ({"A": "v\x00"}, ("env", "NUL")),
    ]:
        refused(await api.machine(token, env=env), *words)
    assert (await api.call("GET", "/v1/machines", token)).json()["items"] == []
    r = await api.machine(token, env={"A": "b=c", "lower_and.dots": ""})
    assert r.status_code == 201, r.text
    assert r.json()["env"] == {"A": "b=c", "lower_and.dots": ""}


async def test_unpaired_surrogates_are_refused_and_a_stored_machine_stays_readable(
    db_api: Api,
) -> None:
    """JSON's "\\ud800" escape parses to half a surrogate pair: no UTF-8, so no database stores
    it and no reader could decode it. A create holding one was stored, answered 500, and then
    every list, get and delete of its project answered 500. Now a 422 naming the field; the
    same text as a whole pair (an emoji) is stored and reads back."""
    api = db_api
    token = await api.token("alpha", "member")
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    for field, value in [("command", '["\\ud800"]'), ("entrypoint", '["a\\udfff"]'),
                         ("workdir", '"/\\ud800"'), ("user", '"\\udc00"'),
                         ("labels", '{"a": "\\ud800"}'), ("env", '{"A": "\\ud800"}')]:  # fmt: skip
        body = '{"image": "busybox", "runtime": "container", "start": false, "%s": %s}'
        r = await api.http.post("/v1/machines", headers=headers,
                                content=(body % (field, value)).encode())  # fmt: skip
        refused(r, field, "surrogate")
    listed = await api.call("GET", "/v1/machines", token)
    assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
    whole = b'{"image": "busybox", "runtime": "container", "start": false, "name": "e",'
    whole += b' "command": ["\\ud83d\\ude00"]}'
    r = await api.http.post("/v1/machines", headers=headers, content=whole)
    assert r.status_code == 201, r.text
    [m] = (await api.call("GET", "/v1/machines", token)).json()["items"]
    assert (
        m["command"]
        == ["\U0001f600"]
        == (await api.call("GET", "/v1/machines/e", token)).json()["command"]
    )


async def test_a_cursor_not_handed_out_is_a_400_whatever_it_holds(db_api: Api) -> None:
    """A cursor is the base64 of [created_at, id]: one holding an integer too large for a float,
    NaN, half a surrogate pair or NUL was a 500 (or an empty page), not a 400."""
    api = db_api
    token = await api.token("alpha", "member")
    for name in ("a", "b"):
        assert (await api.machine(token, name=name, start=False)).status_code == 201
    first = (await api.call("GET", "/v1/machines?limit=1", token)).json()
    r = await api.call("GET", "/v1/machines", token, params={"cursor": first["next"]})
    assert [m["name"] for m in r.json()["items"]] == ["b"]
    huge = b"[" + b"9" * 400 + b', "m-1"]'
    for inner in (huge, b'[1, "\\ud800"]', b'[1, "\\u0000"]', b'[NaN, "m-1"]',
                  b'[Infinity, "m-1"]', b'[1, ""]', b"[1, 2]", b'"x"'):  # fmt: skip
        cursor = base64.urlsafe_b64encode(inner).decode()
        r = await api.call("GET", "/v1/machines", token, params={"cursor": cursor})
        assert r.status_code == 400 and "cursor" in r.json()["detail"], (inner, r.text)
