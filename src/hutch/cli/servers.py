"""The long-running processes themselves: uvicorn servers for the controller's and the node
agent's APIs, and the node agent. Imported by `hutch up`, `controller` and `agent` when they
run, so that every other command starts without loading them."""

import asyncio
import contextlib
import gc
import logging
import re
import socket
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from hutch import config
from hutch.agent.app import create_node_app
from hutch.agent.node import NodeAgent
from hutch.api.app import create_app
from hutch.cli.contexts import save_up_context
from hutch.controller import build_controller, join_secret_of
from hutch.http import tls
from hutch.http.shutdown import ClosedAtShutdown
from hutch.http.slow import guarded_http
from hutch.model.errors import Invalid, Unavailable
from hutch.network.claim import claim
from hutch.web import install as install_web

log = logging.getLogger("hutch")
SHUTDOWN_GRACE = 3  # seconds


def host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise Invalid(f"{listen!r} is not host:port")
    return host, int(port)


def _server(
    app: FastAPI,
    host: str,
    port: int,
    cert: tuple[Path, Path] | None = None,
    settings: config.Settings | None = None,
) -> uvicorn.Server:
    """uvicorn for `app`; with `settings`, the controller's limits on slow and greedy clients
    (header_timeout, connections_per_client; body_timeout is the app's)."""
    http: Any = "h11"
    if settings is not None:
        http = guarded_http(settings.header_timeout, settings.connections_per_client)
    server: uvicorn.Server
    config = uvicorn.Config(
        ClosedAtShutdown(app, lambda: server.should_exit),
        host=host,
        port=port,
        http=http,
        log_level="warning",
        lifespan="on",
        ws="websockets-sansio",
        # Long polls, followed logs and event streams never end by themselves: on SIGTERM,
        # give requests this long, then close them (clients reconnect).
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        ssl_certfile=str(cert[0]) if cert else None,
        ssl_keyfile=str(cert[1]) if cert else None,
    )
    server = uvicorn.Server(config)
    return server


def settled() -> None:
    """Start-up is over: what it made lives as long as the process, so the collector's full
    passes stop scanning it (gc.freeze). Each pass stalls whichever request triggers it: on the
    2-core development VM under load, 0.3-0.7 s before, under 0.1 s after (bench/ui.py).
    And a young pass per 10,000 objects, not 700: a page of 100 machines, alive until written,
    set one off twice a request (a twentieth of its CPU); what dies is freed as it dies, and
    only cycles wait for a pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


async def _serve(server: uvicorn.Server) -> None:
    """Serve until told to exit. A cancel tells it, and waits for its shutdown: cut short, its
    open requests and its lifespan would be cancelled at the loop's end, a traceback each."""
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


async def _start(server: uvicorn.Server) -> tuple[asyncio.Task[None], int]:
    """Serve in the background; the port actually bound (port 0 picks a free one)."""
    task = asyncio.create_task(_serve(server))
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
            raise Unavailable("the server stopped as it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return task, port


def node_name() -> str:
    name = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower()).strip("-")[:63]
    return name or "node"


async def _first_to_end(*tasks: "asyncio.Task[None]") -> None:
    """Wait until one task ends (a server stopped on SIGTERM, or failed); cancel the others."""
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()


async def _run_agent(agent: NodeAgent, host: str, port: int) -> None:
    agent.claim_namespace()  # before anything else: another agent's node is left alone
    server = _server(create_node_app(agent), host, port)
    serving, bound = await _start(server)
    if agent.advertise.endswith(":0"):
        agent.advertise = agent.advertise[: -len(":0")] + f":{bound}"
    try:
        await agent.open()
        await _first_to_end(asyncio.create_task(agent.run()), serving)
    finally:
        server.should_exit = True
        await agent.close()
        with contextlib.suppress(asyncio.CancelledError):
            await serving  # its own shutdown, rather than a cancelled one at the loop's end


async def _up(settings: config.Settings, port: int) -> None:
    # Refused before the controller starts (and before the `local` context is saved) when
    # another agent manages this network namespace.
    namespace = claim(None, settings.state_dir)
    ctl = build_controller(settings)
    host, _ = host_port(settings.listen)
    app = create_app(ctl, settings)
    install_web(app, ctl, settings)
    controller = _server(app, host, port, settings=settings)
    settled()
    task, bound = await _start(controller)
    url = f"http://{host}:{bound}"
    save_up_context(url, settings.state_dir, settings.project)
    (settings.state_dir / "hutch.url").write_text(url + "\n")
    agent = NodeAgent(
        settings,
        controller=url,
        join_secret=join_secret_of(settings),  # the controller's own, whatever set it
        name=node_name(),
        advertise="http://127.0.0.1:0",
        namespace=namespace,
    )
    log.info("hutch is up: API at %s, dashboard at %s/ui", url, url)
    try:
        await _first_to_end(task, asyncio.create_task(_run_agent(agent, "127.0.0.1", 0)))
    finally:
        controller.should_exit = True


def run_controller(settings: config.Settings, host: str, port: int) -> None:
    ctl = build_controller(settings)
    cert = None
    if settings.tls:
        names = settings.tls_names or sorted(
            {socket.gethostname(), "localhost", "127.0.0.1"} | ({host} - {"0.0.0.0", "::"})
        )
        cert = tls.server_cert(settings.state_dir / "tls", names)
        log.info("serving HTTPS for %s; agents pin CA sha256 %s", ", ".join(names),
                 ctl.nodes.ca_pin)  # fmt: skip
    app = create_app(ctl, settings)
    install_web(app, ctl, settings)
    server = _server(app, host, port, cert, settings)
    settled()
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


def run_agent(
    settings: config.Settings,
    *,
    controller: str,
    join_secret: str,
    name: str,
    listen: str,
    advertise: str,
    labels: dict[str, str],
    domain: str = "",
) -> None:
    host, port = host_port(listen)
    node = NodeAgent(
        settings,
        controller=controller,
        join_secret=join_secret,
        name=name or node_name(),
        advertise=advertise or f"http://{host}:{port}",
        labels=labels,
        domain=domain,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_agent(node, host, port))


def run_up(settings: config.Settings, port: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_up(settings, port))
