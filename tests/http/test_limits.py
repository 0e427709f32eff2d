"""Request body limits: 413 by Content-Length before the body is read, or once a stream exceeds."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from hutch.http.limits import MAX_BODY, STREAMED, BodyLimit
from hutch.http.problems import install

LIMIT = 100


class Note(BaseModel):
    text: str


def make_app(seen: list[str]) -> FastAPI:
    app = FastAPI()
    install(app)
    app.add_middleware(BodyLimit, limit=LIMIT)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        seen.append("raw")
        return {"bytes": len(await request.body())}

    @app.post("/notes")
    async def note(body: Note) -> dict[str, int]:
        seen.append("notes")
        return {"chars": len(body.text)}

    @app.post("/v1/images/import")
    async def archive(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return app


@pytest.fixture
def seen() -> list[str]:
    return []


@pytest.fixture
async def client(seen: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def chunks(total: int, size: int = 30) -> AsyncIterator[bytes]:
    """A body without Content-Length, sent in pieces."""
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "about:blank",
        "title": "Body too large",
        "status": 413,
        "detail": f"request bodies are limited to {LIMIT} bytes",
    }


def test_the_default_limit_is_one_mib() -> None:
    assert MAX_BODY == 1 << 20
    assert BodyLimit(make_app([])).limit == MAX_BODY


async def test_a_body_up_to_the_limit_is_served(client: httpx.AsyncClient) -> None:
    r = await client.post("/raw", content=b"x" * LIMIT)
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": LIMIT}


async def test_a_declared_length_over_the_limit_is_refused_unread(
    client: httpx.AsyncClient, seen: list[str]
) -> None:
    assert_too_large(await client.post("/raw", content=b"x" * (LIMIT + 1)))
    assert_too_large(await client.post("/notes", json={"text": "x" * LIMIT}))
    assert seen == []


async def test_a_stream_within_the_limit_is_served(client: httpx.AsyncClient) -> None:
    r = await client.post("/raw", content=chunks(LIMIT))
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": LIMIT}


async def test_a_stream_over_the_limit_is_refused(client: httpx.AsyncClient) -> None:
    assert_too_large(await client.post("/raw", content=chunks(LIMIT + 1)))


async def test_a_json_stream_over_the_limit_is_refused(client: httpx.AsyncClient) -> None:
    body = b'{"text": "' + b"x" * LIMIT + b'"}'

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 30):
            yield body[i : i + 30]

    r = await client.post("/notes", content=stream(), headers={"content-type": "application/json"})
    assert_too_large(r)


async def test_image_imports_stream_past_the_limit(client: httpx.AsyncClient) -> None:
    assert STREAMED == ("/v1/images/import", "/v1/volumes/import", "/ui/images/import")
    r = await client.post("/v1/images/import", content=b"x" * (LIMIT * 10))
    assert r.status_code == 200, r.text
    assert r.json() == {"bytes": LIMIT * 10}
    r = await client.post("/v1/images/import", content=chunks(LIMIT * 10))
    assert r.json() == {"bytes": LIMIT * 10}


async def test_other_scopes_pass_through_untouched() -> None:
    calls: list[tuple[dict[str, Any], Receive]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append((dict(scope), receive))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(_: Message) -> None:
        pass

    await BodyLimit(app, limit=1)({"type": "lifespan"}, receive, send)  # a lifespan has no path
    assert calls == [({"type": "lifespan"}, receive)]
