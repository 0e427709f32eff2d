"""The real controller app and store, in-process (httpx's ASGI transport), with a simulated node.

The node is only a registration: no agent runs, so machines are placed but never started. That
is what API semantics need (tenancy, roles, quotas, validation); tests/cli and tests/client run
real agents with real micro-VMs. The `api` fixture (tests/api/conftest.py) opens one per test.
"""

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from hutch import config
from hutch.api.app import create_app
from hutch.controller import Controller, bootstrap, build_controller, leading_work
from hutch.web import install as install_web

JOIN = "join-secret-for-tests"
SIM_NODE = {
    "name": "sim-1", "address": "http://127.0.0.1:9", "runtimes": ["microvm", "container"],
    "accel": "tcg", "cpus": 64, "memory_mib": 1 << 20, "disk_mib": 1 << 22,
    "overhead_mib": {"microvm": 96, "container": 0},
}  # fmt: skip


@dataclass
class Api:
    http: httpx.AsyncClient
    ctl: Controller
    admin: str  # a system token
    background: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    state_dir: Path | None = None  # removed by close_api

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: object
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return await self.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    async def project(self, name: str, **quota: int) -> None:
        r = await self.call("POST", "/v1/projects", json={"name": name, "quota": quota})
        assert r.status_code == 201, r.text

    async def token(self, project: str, role: str, **extra: object) -> str:
        r = await self.call("POST", f"/v1/projects/{project}/tokens", json={"role": role, **extra})
        assert r.status_code == 201, r.text
        secret: str = r.json()["secret"]
        return secret

    async def join(self, name: str, **fields: object) -> dict[str, Any]:
        """Register a simulated node; its id and credential."""
        body = {**SIM_NODE, "name": name, **fields}
        r = await self.http.post(
            "/agent/v1/nodes", json=body, headers={"Authorization": f"Bearer {JOIN}"}
        )
        assert r.status_code == 201, r.text
        joined: dict[str, Any] = r.json()
        return joined

    async def placed(self, token: str, ref: str, timeout: float = 10.0) -> dict[str, Any]:
        """The machine once the scheduler has given it a node."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            m: dict[str, Any] = (await self.call("GET", f"/v1/machines/{ref}", token)).json()
            if m["node"] is not None:
                return m
            assert asyncio.get_running_loop().time() < deadline, f"{ref} was never placed: {m}"
            await asyncio.sleep(0.05)

    async def machine(self, token: str, **body: object) -> httpx.Response:
        return await self.call(
            "POST", "/v1/machines", token, json={"image": "busybox", "runtime": "container", **body}
        )


async def open_api(
    tmp: Path, database_url: str = "", **overrides: object
) -> tuple[Api, Controller]:
    """`overrides`: settings beside those every test needs."""
    settings = config.load(
        state_dir=tmp,
        database_url=database_url,
        join_secret=JOIN,
        controller_secret="c" * 32,
        node_grace=3600.0,  # the simulated node never heartbeats
        **overrides,
    )
    ctl = build_controller(settings)
    app = create_app(ctl, settings)
    install_web(app, ctl, settings)  # as hutch/cli/servers.py does
    await ctl.store.open()  # the ASGI transport does not run the lifespan
    await bootstrap(ctl, settings)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hutch")
    api = Api(http, ctl, (tmp / "admin-token").read_text().strip(), state_dir=tmp)
    await api.background.enter_async_context(leading_work(ctl))  # the scheduler, node health
    await api.join("sim-1")
    return api, ctl


@contextlib.asynccontextmanager
async def served(api: Api) -> AsyncIterator[str]:
    """The same app behind a real HTTP server (the ASGI transport buffers whole responses, so
    streams that never end need one); yields its URL."""
    app = api.http._transport.app  # type: ignore[attr-defined]
    # A node's long poll (25 s) still open at the end is cut after a second, not waited for.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=1)  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def close_api(api: Api) -> None:
    """Stop it and remove its state directory (a test that made one per test left thousands)."""
    await api.background.aclose()
    await api.http.aclose()
    await api.ctl.link.close()
    await api.ctl.store.close()
    if api.state_dir is not None:
        shutil.rmtree(api.state_dir, ignore_errors=True)
