"""`hutch up` / `hutch down`, `hutch controller`, `hutch agent`: the long-running processes."""

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
import uvicorn
from fastapi import FastAPI

from hutch import config
from hutch.agent.node import NodeAgent
from hutch.agent.nodeapi import create_node_app
from hutch.api.app import build_controller, create_app, secret_file
from hutch.client.config import Context, save_context
from hutch.model.errors import Invalid, Unavailable

log = logging.getLogger("hutch")
STOP_TIMEOUT = 20.0  # seconds `hutch down` waits for a graceful stop


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise Invalid(f"{listen!r} is not host:port")
    return host, int(port)


def _server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", ws="websockets"
    )
    return uvicorn.Server(config)


async def _start(server: uvicorn.Server) -> tuple[asyncio.Task[None], int]:
    """Serve in the background; the port actually bound (port 0 picks a free one)."""
    task = asyncio.create_task(server.serve())
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


async def _up(settings: config.Settings, port: int) -> None:
    ctl = build_controller(settings)
    host, _ = _host_port(settings.listen)
    controller = _server(create_app(ctl, settings), host, port)
    task, bound = await _start(controller)
    url = f"http://{host}:{bound}"
    token_file = settings.state_dir / "admin-token"
    save_context("local", Context(url, token_file.read_text().strip(), settings.project))
    (settings.state_dir / "hutch.url").write_text(url + "\n")
    agent = NodeAgent(
        settings,
        controller=url,
        join_secret=secret_file(settings.state_dir / "join.secret"),
        name=node_name(),
        advertise="http://127.0.0.1:0",
    )
    log.info("hutch is up: API at %s", url)
    try:
        await _first_to_end(task, asyncio.create_task(_run_agent(agent, "127.0.0.1", 0)))
    finally:
        controller.should_exit = True


def up(
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory (default: state_dir).")
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the API on 127.0.0.1.")] = 7878,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
) -> None:
    """Run a controller and a node agent on this machine (SQLite under the data dir).

    Writes a system admin token to DATA_DIR/admin-token (mode 0600) and makes `local` the CLI's
    current context, so `hutch run` just works. Ctrl-C (or `hutch down`) stops it; machines keep
    running and are picked up again at the next `hutch up`.
    """
    overrides = {"state_dir": data_dir} if data_dir else {}
    settings = config.load(**overrides)
    if detach:
        _detach(settings, port)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_up(settings, port))


def _running(pid_file: Path) -> int | None:
    """The pid of the `hutch up` that wrote pid_file, if it still runs."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"hutch\0up" in cmdline else None  # not another process that got its pid


def _node_ready(url: str, token_file: Path) -> bool:
    with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError):
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        nodes = httpx.get(url + "/v1/nodes", headers=headers, timeout=2).json()["items"]
        return any(n["state"] == "ready" for n in nodes)
    return False


def _detach(settings: config.Settings, port: int) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_file = settings.state_dir / "hutch.pid"
    if (pid := _running(pid_file)) is not None:
        url = (settings.state_dir / "hutch.url").read_text().strip()
        typer.echo(f"hutch is already up (pid {pid}): API at {url} (stop: hutch down)")
        return
    log_path = settings.state_dir / "hutch.log"
    argv = [
        sys.executable,
        "-m",
        "hutch",
        "up",
        "--data-dir",
        str(settings.state_dir),
        "--port",
        str(port),
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    pid_file.write_text(f"{proc.pid}\n")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"hutch up stopped at once; see {log_path}")
        if _node_ready(url, settings.state_dir / "admin-token"):
            break
        time.sleep(0.2)
    else:
        raise Unavailable(f"hutch up did not come up within 120 s; see {log_path}")
    typer.echo(f"hutch is up: API at {url} (log: {log_path}, stop: hutch down)")


def down(
    data_dir: Annotated[Path | None, typer.Option(help="State directory of `hutch up -d`.")] = None,
) -> None:
    """Stop a `hutch up -d` (its machines keep running until the next `hutch up`)."""
    settings = config.load(**({"state_dir": data_dir} if data_dir else {}))
    pid_file = settings.state_dir / "hutch.pid"
    pid = _running(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        raise Invalid(f"no hutch up -d running from {settings.state_dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _running(pid_file) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid_file) == pid:
        os.kill(pid, signal.SIGKILL)  # the store loses nothing acknowledged: see docs
        typer.echo(f"hutch did not stop within {STOP_TIMEOUT:g} s: killed it", err=True)
    pid_file.unlink(missing_ok=True)
    typer.echo("hutch is down")


def controller(
    listen: Annotated[
        str | None, typer.Option(help="host:port (default: the listen setting).")
    ] = None,
) -> None:
    """Run the controller: the API, the scheduler, the agents' API."""
    settings = config.load()
    host, port = _host_port(listen or settings.listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ctl = build_controller(settings)
    server = _server(create_app(ctl, settings), host, port)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


def agent(
    controller_url: Annotated[str, typer.Option("--controller", help="The controller's URL.")],
    join_secret: Annotated[str, typer.Option(help="The controller's join secret.")] = "",
    name: Annotated[str, typer.Option(help="Node name (default: the host name).")] = "",
    listen: Annotated[str, typer.Option(help="host:port of this agent's API.")] = "127.0.0.1:0",
    advertise: Annotated[str, typer.Option(help="URL the controller reaches this agent at.")] = "",
    label: Annotated[list[str] | None, typer.Option(help="k=v, repeatable.")] = None,
) -> None:
    """Run a node agent: join the controller and run the machines it assigns to this host."""
    settings = config.load()
    host, port = _host_port(listen)
    labels = {}
    for item in label or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise Invalid(f"label {item!r} is not k=v")
        labels[key] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    node = NodeAgent(
        settings,
        controller=controller_url,
        join_secret=join_secret,
        name=name or node_name(),
        advertise=advertise or f"http://{host}:{port}",
        labels=labels,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_agent(node, host, port))
