"""One error map: every class of `hutch.model.errors`, raised on a node, walks through the
controller, the SDK and the CLI, and comes out with the status, title and exit code it should.

The node is a small app with the node agent's real problem rendering (`http/problems.install`)
whose image lookup raises the class it is asked for; the controller is the real app behind a
real HTTP server, reaching the node over HTTP with its real node link; then the real SDK, and
the real `hutch` binary."""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from hutch.client import AsyncClient
from hutch.client import errors as sdk_errors
from hutch.http.problems import install
from hutch.model import errors
from tests.helpers.api import Api, served
from tests.helpers.cli import CLIENT_VARIABLES, Hutch

# What a node says about the controller's own key or its streams is no fault of the user's:
# to the user, that node is unavailable. Every other class comes through as itself.
THROUGH_THE_CONTROLLER: dict[type[errors.HutchError], type[errors.HutchError]] = {
    errors.Unauthenticated: errors.Unavailable,
    errors.TooManyRequests: errors.Unavailable,
}


def every_error_class() -> list[type[errors.HutchError]]:
    found: list[type[errors.HutchError]] = []
    todo = [errors.HutchError]
    while todo:
        for cls in todo.pop().__subclasses__():
            if cls.__module__ == errors.__name__:
                found.append(cls)
                todo.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def node_app() -> FastAPI:
    app = FastAPI()
    install(app)
    classes = {cls.__name__: cls for cls in every_error_class()}

    @app.get("/node/v1/images/{ref:path}")
    async def image(ref: str) -> None:
        raise classes[ref](f"the node refused {ref}: do something about it")

    return app


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def url(api: Api) -> AsyncIterator[str]:
    """The controller's URL; its one ready node is the refusing one."""
    assert (await api.call("DELETE", "/v1/nodes/sim-1")).status_code == 204
    async with serving(node_app()) as node:
        await api.join("refusing", address=node)
        async with served(api) as controller:
            yield controller


def test_every_class_is_in_the_map() -> None:
    assert set(every_error_class()) == set(errors.CLASSES)
    for cls in every_error_class():
        assert errors.error_class(cls.status, cls.title) is cls


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__name__)
async def test_an_error_walks_from_node_to_cli(
    api: Api, url: str, cls: type[errors.HutchError]
) -> None:
    expected = THROUGH_THE_CONTROLLER.get(cls, cls)
    name = cls.__name__

    r = await api.call("GET", f"/v1/images/{name}", params={"project": "alpha"})
    assert (r.status_code, r.json()["title"]) == (expected.status, expected.title), r.text
    assert r.headers["content-type"] == "application/problem+json"

    async with AsyncClient(url, api.admin, project="alpha") as client:
        with pytest.raises(errors.HutchError) as raised:
            await client.images.get(name)
    e = raised.value
    assert isinstance(e, sdk_errors.ApiError) and isinstance(e, expected)
    assert (e.status, e.title, e.detail) == (expected.status, expected.title, r.json()["detail"])

    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env.update(HUTCH_URL=url, HUTCH_TOKEN=api.admin, HUTCH_CLIENT_CONFIG="/nonexistent")
    cli = await asyncio.to_thread(
        Hutch(env, timeout=60), "image", "inspect", name, "--project", "alpha"
    )
    assert (cli.returncode, cli.stdout) == (125, "")
    assert cli.stderr == f"hutch: {r.json()['detail']}\n"
    if cls is not errors.NotFound:  # the node's own words (NotFound: the controller's)
        assert r.json()["detail"].endswith(f"the node refused {name}: do something about it")


@pytest.mark.parametrize(
    ("name", "status", "title"),
    [
        ("Unsupported", 501, "Not supported"),
        ("QuotaExceeded", 403, "Quota exceeded"),
        ("NoCapacity", 503, "No capacity"),  # was "Unavailable": a node's title was lost
        ("Unavailable", 503, "Unavailable"),
    ],
)
async def test_a_nodes_refusal_keeps_its_status_and_title(
    url: str, api: Api, name: str, status: int, title: str
) -> None:
    async with AsyncClient(url, api.admin, project="alpha") as client:
        with pytest.raises(sdk_errors.ApiError) as e:
            await client.images.get(name)
    assert (e.value.status, e.value.title) == (status, title)
    assert type(e.value).__name__ == name
