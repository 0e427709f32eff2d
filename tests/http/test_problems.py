"""problem+json for every error: hutch's errors, 404/405, validation, and unexpected failures."""

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from hutch.http.problems import PROBLEMS, install, status_of, ws_error
from hutch.model import errors

SECRET = "password=hunter2 at db.internal:5432"

MAPPING: list[tuple[type[errors.HutchError], int, str]] = [
    (errors.Invalid, 400, "Invalid request"),
    (errors.Unauthenticated, 401, "Unauthenticated"),
    (errors.Forbidden, 403, "Forbidden"),
    (errors.QuotaExceeded, 403, "Quota exceeded"),
    (errors.NotFound, 404, "Not found"),
    (errors.Conflict, 409, "Conflict"),
    (errors.TooManyRequests, 429, "Too many requests"),
    (errors.Unsupported, 501, "Not supported"),
    (errors.InsufficientStorage, 507, "Insufficient storage"),
    (errors.NoCapacity, 503, "No capacity"),
    (errors.Unavailable, 503, "Unavailable"),
]
ERRORS = {cls.__name__: cls for cls, _, _ in MAPPING}


class NoSuchImage(errors.NotFound):
    pass


class Size(BaseModel):
    mib: int


class Thing(BaseModel):
    name: str
    count: int
    size: Size | None = None


def make_app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.get("/errors/{name}")
    async def raise_error(name: str) -> None:
        raise ERRORS[name](f"{name} happened: do something about it")

    @app.get("/image")
    async def image() -> None:
        raise NoSuchImage("no image busybox:9; pull it first")

    @app.get("/bare")
    async def bare() -> None:
        raise errors.HutchError("not mapped to a status")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(429, "slow down", headers={"Retry-After": "7"})

    # The same paths served by separate routes: Starlette's 405 names only the first one's methods.
    @app.get("/things")
    async def list_things(limit: int = Query(10)) -> list[str]:
        return []

    @app.post("/things", responses=PROBLEMS)
    async def make_thing(thing: Thing) -> dict[str, str]:
        return {"name": thing.name}

    @app.get("/things/{id}")
    async def get_thing(id: str) -> dict[str, str]:
        return {"id": id}

    @app.put("/things/{id}")
    async def put_thing(id: str) -> dict[str, str]:
        return {"id": id}

    @app.delete("/things/{id}")
    async def delete_thing(id: str) -> None:
        return None

    @app.post("/other")
    async def other() -> None:
        return None

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # Starlette re-raises an unexpected error after sending its 500: let the response through.
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def problem_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    return body


def test_the_table_covers_every_error_class() -> None:
    mapped = {cls for cls, _, _ in MAPPING}
    assert set(errors.CLASSES) == mapped
    assert all((cls.status, cls.title) == (status, title) for cls, status, title in MAPPING)
    defined = {
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.HutchError) and c is not errors.HutchError
    }
    assert defined == mapped


@pytest.mark.parametrize(("cls", "status", "title"), MAPPING)
async def test_hutch_errors_are_problems(
    client: httpx.AsyncClient, cls: type[errors.HutchError], status: int, title: str
) -> None:
    name = cls.__name__
    body = problem_of(await client.get(f"/errors/{name}"), status)
    assert body["title"] == title
    assert body["detail"] == f"{name} happened: do something about it"


async def test_unauthenticated_asks_for_a_bearer_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/errors/Unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.get("/errors/Forbidden")
    assert "www-authenticate" not in r.headers


async def test_a_subclass_maps_like_its_parent(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.get("/image"), 404)
    assert (body["title"], body["detail"]) == ("Not found", "no image busybox:9; pull it first")


async def test_an_unmapped_hutch_error_is_an_internal_error(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.get("/bare"), 500)
    assert body["title"] == "Internal error"


def test_status_of() -> None:
    assert status_of(errors.QuotaExceeded("x")) == (403, "Quota exceeded")
    assert status_of(NoSuchImage("x")) == (404, "Not found")
    assert status_of(errors.HutchError("x")) == (500, "Internal error")


def test_ws_error_is_the_problem_typed_error() -> None:
    message = json.loads(ws_error(errors.Conflict("machine m1 is stopped; start it first")))
    assert message == {
        "type": "error",
        "status": 409,
        "title": "Conflict",
        "detail": "machine m1 is stopped; start it first",
    }
    assert json.loads(ws_error(errors.HutchError("odd")))["status"] == 500


async def test_unexpected_errors_are_500_without_their_text(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="hutch.http"):
        r = await client.get("/boom")
    body = problem_of(r, 500)
    assert body == {
        "type": "about:blank",
        "title": "Internal error",
        "status": 500,
        "detail": "the server failed; its log says why",
    }
    assert "hunter2" not in r.text
    assert "RuntimeError" not in r.text
    # The operator still gets the whole story.
    [record] = [r for r in caplog.records if r.name == "hutch.http"]
    assert record.getMessage() == "unexpected error serving GET /boom"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == SECRET


async def test_unknown_paths_are_404_problems(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.get("/nowhere"), 404)
    assert body["title"] == "Not Found"


async def test_http_exceptions_keep_their_status_and_headers(client: httpx.AsyncClient) -> None:
    r = await client.get("/teapot")
    body = problem_of(r, 429)
    assert (body["title"], body["detail"]) == ("slow down", "slow down")
    assert r.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/things", "GET, POST"),
        ("DELETE", "/things", "GET, POST"),
        ("POST", "/things/t1", "DELETE, GET, PUT"),
        ("GET", "/other", "POST"),
    ],
)
async def test_405_allows_every_method_served_at_the_path(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await client.request(method, path)
    body = problem_of(r, 405)
    assert body["title"] == "Method Not Allowed"
    assert r.headers["allow"] == allow


async def test_validation_errors_are_422_with_a_readable_detail(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/things", json={"name": 3, "size": {"mib": "lots"}})
    body = problem_of(r, 422)
    assert body["title"] == "Does not match the schema"
    assert body["detail"] == (
        "name: Input should be a valid string; count: Field required; "
        "size.mib: Input should be a valid integer, unable to parse string as an integer"
    )


async def test_a_missing_body_is_named_as_such(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.post("/things"), 422)
    assert body["detail"] == "body: Field required"


async def test_a_body_that_is_not_json_says_where_it_broke(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/things", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert problem_of(r, 422)["detail"] == "body (at character 9): JSON decode error"


async def test_bad_query_parameters_are_named(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.get("/things", params={"limit": "many"}), 422)
    assert body["detail"].startswith("limit: Input should be a valid integer")


def test_the_openapi_description_documents_problems() -> None:
    doc = make_app().openapi()
    responses = doc["paths"]["/things"]["post"]["responses"]
    for code in ("400", "401", "403", "404", "409", "413", "422", "503"):
        content = responses[code]["content"]
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    assert {"title", "status"} <= set(doc["components"]["schemas"]["Problem"]["required"])
