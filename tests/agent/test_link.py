"""The node agent's link to its controller reads the controller's problem+json back as the class
it was rendered from (`model/errors.py`), whatever the call: a controller's 403 is Forbidden
and its 501 Unsupported, not Unavailable."""

import asyncio
import io
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI

from hutch.agent.link import ControllerLink
from hutch.http.problems import install
from hutch.model import errors

CLASSES = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.HutchError) and cls is not errors.HutchError
}


def controller_app() -> FastAPI:
    """A controller whose agent routes refuse with the class the node id names."""
    app = FastAPI()
    install(app)

    @app.post("/agent/v1/nodes/{node_id}/heartbeat")
    async def heartbeat(node_id: str) -> None:
        raise CLASSES[node_id](f"{node_id}: do something about it")

    @app.get("/agent/v1/nodes/{node_id}/images/archive")
    async def archive(node_id: str) -> None:
        raise CLASSES[node_id](f"{node_id}: do something about it")

    return app


@pytest.fixture
async def link() -> AsyncIterator[ControllerLink]:
    server = uvicorn.Server(
        uvicorn.Config(controller_app(), host="127.0.0.1", port=0, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    link = ControllerLink(f"http://127.0.0.1:{port}", credential="node-credential")
    yield link
    await link.close()
    server.should_exit = True
    await task


@pytest.mark.parametrize("name", sorted(CLASSES))
async def test_a_controllers_refusal_is_its_own_class(link: ControllerLink, name: str) -> None:
    with pytest.raises(errors.HutchError) as e:
        await link.heartbeat(name, "http://127.0.0.1:1")
    assert type(e.value) is CLASSES[name]
    assert e.value.message.endswith(f"{name}: do something about it")
    with pytest.raises(errors.HutchError) as e:
        await link.image_archive(name, "p", "busybox", io.BytesIO())
    assert type(e.value) is CLASSES[name]


async def test_403_and_501_are_not_unavailable(link: ControllerLink) -> None:
    for name, cls in (("Forbidden", errors.Forbidden), ("Unsupported", errors.Unsupported)):
        with pytest.raises(cls):
            await link.heartbeat(name, "http://127.0.0.1:1")
    with pytest.raises(errors.Unavailable):  # next to it: a 503 still is
        await link.heartbeat("Unavailable", "http://127.0.0.1:1")
