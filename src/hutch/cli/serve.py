"""`hutch up` / `hutch down`, `hutch controller`, `hutch agent`: the long-running processes."""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from hutch import config
from hutch.cli import contexts
from hutch.cli.remote import pairs
from hutch.model.errors import Invalid, Unavailable

# The servers (FastAPI, uvicorn, the agent: most of hutch) are imported by the commands that
# run them, not with this module: every `hutch` command loads it, and should start quickly.
STOP_TIMEOUT = 20.0  # seconds `hutch down` waits for a graceful stop


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="State directory (default: $HUTCH_STATE_DIR, else /var/lib/hutch)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the API on 127.0.0.1.")] = 7878,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background.")] = False,
) -> None:
    """Run a controller and a node agent on this machine (SQLite under the data dir).

    Writes a system admin token to DATA_DIR/admin-token (mode 0600) and saves a CLI context
    named `local` for it (unless one of that name is another controller's). `local` becomes the
    current context only when none is; otherwise `hutch context use local` switches to it.
    Ctrl-C (or `hutch down`) stops it; machines keep running and are picked up again at the
    next `hutch up`.
    """
    overrides = {"state_dir": data_dir} if data_dir else {}
    settings = config.load(**overrides)
    if detach:
        _detach(settings, port)
        return
    from hutch.cli import servers  # noqa: PLC0415  (see the imports)

    _logging()
    servers.run_up(settings, port)


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
        typer.echo(f"hutch is already up (pid {pid}): API at {url}, dashboard at {url}/ui "
                   f"(stop: {_down(settings)})")  # fmt: skip
        return
    from hutch.network.claim import claim  # noqa: PLC0415  (see the imports)

    # Said here rather than in the log of a child that stops at once: the child claims the
    # namespace itself, for its life.
    claim(None, settings.state_dir).release()
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
    typer.echo(f"hutch is up: API at {url}, dashboard at {url}/ui "
               f"(sign in with {settings.state_dir / 'admin-token'}; log: {log_path}, "
               f"stop: {_down(settings)})")  # fmt: skip
    # hutch up saved its context already; saving the same again says here, rather than in its
    # log, whether the CLI will use it.
    served = (settings.state_dir / "hutch.url").read_text().strip()
    contexts.save_up_context(served, settings.state_dir, settings.project)


def _down(settings: config.Settings) -> str:
    """The command that stops this `hutch up -d`: a bare `hutch down` looks in the default
    state directory only."""
    if settings.state_dir == config.load().state_dir:
        return "hutch down"
    return f"hutch down --data-dir {settings.state_dir}"


def down(
    data_dir: Annotated[Path | None, typer.Option(help="State directory of `hutch up -d`.")] = None,
    stop_machines: Annotated[
        bool,
        typer.Option(
            "--stop-machines", help="Stop every machine it runs first (they stay, stopped)."
        ),
    ] = False,
) -> None:
    """Stop a `hutch up -d`.

    Its machines keep running, and the next `hutch up` picks them up again; with
    --stop-machines, they are stopped first (as `hutch stop` would) and stay stopped.
    """
    settings = config.load(**({"state_dir": data_dir} if data_dir else {}))
    pid_file = settings.state_dir / "hutch.pid"
    pid = _running(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        raise Invalid(
            f"no hutch up -d running from {settings.state_dir} (one started with --data-dir DIR "
            "is stopped with hutch down --data-dir DIR)"
        )
    if stop_machines:
        stopped = _stop_machines(settings.state_dir)
        typer.echo(f"stopped {stopped} machine(s)", err=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _running(pid_file) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid_file) == pid:
        os.kill(pid, signal.SIGKILL)  # the store loses nothing acknowledged: see docs
        typer.echo(f"hutch did not stop within {STOP_TIMEOUT:g} s: killed it", err=True)
    pid_file.unlink(missing_ok=True)
    typer.echo("hutch is down")
    if not stop_machines:
        typer.echo(
            "hutch: its machines keep running; the next `hutch up` picks them up again "
            "(`hutch down --stop-machines` stops them)",
            err=True,
        )


def _stop_machines(state_dir: Path) -> int:
    """Stop every machine of every project of the `hutch up` of `state_dir` (its admin token),
    and wait until they ended; how many there were."""
    from hutch.client import Client  # noqa: PLC0415  (see the imports)

    url = (state_dir / "hutch.url").read_text().strip()
    token = (state_dir / "admin-token").read_text().strip()
    running = ("created", "starting", "running", "stopping")
    with Client(url, token) as admin:
        projects = [p.name for p in admin.projects.list()]
    with contextlib.ExitStack() as clients:
        machines = []
        for project in projects:
            client = clients.enter_context(Client(url, token, project=project))
            for m in client.machines.list(state=running):
                client.machines.stop(m)
                machines.append((client, m))
        for client, m in machines:
            client.machines.wait(m, timeout=STOP_TIMEOUT + 30)
    return len(machines)


def controller(
    listen: Annotated[
        str | None, typer.Option(help="host:port (default: the listen setting).")
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="Serve HTTPS with a CA made in the state directory (see join-token)."
        ),
    ] = False,
    tls_name: Annotated[
        list[str] | None,
        typer.Option(help="A host name or address the certificate is for; repeatable."),
    ] = None,
) -> None:
    """Run the controller: the API, the scheduler, the agents' API.

    Several controllers may share one PostgreSQL database (HUTCH_DATABASE_URL) and one
    controller secret (HUTCH_CONTROLLER_SECRET): any serves the API, and one at a time leads (the
    scheduler and node health), another taking over within seconds when the leader dies.
    """
    from hutch.cli import servers  # noqa: PLC0415  (see the imports)

    overrides: dict[str, object] = {}
    if tls:
        overrides["tls"] = True
    if tls_name:
        overrides["tls_names"] = tls_name
    if listen:
        overrides["listen"] = listen  # the controller's address, as its nodes block it
    settings = config.load(**overrides)
    host, port = servers.host_port(settings.listen)
    _logging()
    servers.run_controller(settings, host, port)


def agent(
    controller_url: Annotated[str, typer.Option("--controller", help="The controller's URL.")],
    join_token: Annotated[
        str,
        typer.Option(
            "--join-token",
            "--join-secret",
            help="From `hutch node join-token` (or the controller's join secret). Visible to "
            "every user of this host (ps): prefer --join-token-file or HUTCH_JOIN_TOKEN.",
        ),
    ] = "",
    join_token_file: Annotated[
        Path | None,
        typer.Option(
            "--join-token-file",
            "--join-secret-file",
            help="A file holding the join token (or the join secret).",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Node name (default: the host name).")] = "",
    listen: Annotated[str, typer.Option(help="host:port of this agent's API.")] = "127.0.0.1:0",
    advertise: Annotated[str, typer.Option(help="URL the controller reaches this agent at.")] = "",
    label: Annotated[list[str] | None, typer.Option(help="k=v, repeatable.")] = None,
    domain: Annotated[
        str, typer.Option(help="Failure domain (rack, zone): a group's machines spread across.")
    ] = "",
    heartbeat: Annotated[
        float | None, typer.Option(help="Seconds between heartbeats (default 5).", min=0.1)
    ] = None,
) -> None:
    """Run a node agent: join the controller and run the machines it assigns to this host.

    The join token (from `hutch node join-token`, or the controller's join secret) is needed at
    the first join only: the node keeps the credential it gets. Give it in a file
    (--join-token-file) or the environment (HUTCH_JOIN_TOKEN, or HUTCH_JOIN_SECRET for the
    secret): --join-token puts it on the command line, where every user of the host can read it.
    """
    from hutch.cli import servers  # noqa: PLC0415  (see the imports)

    settings = config.load(**({"heartbeat_interval": heartbeat} if heartbeat else {}))
    if join_token and join_token_file:
        raise Invalid("give the join token once: --join-token or --join-token-file")
    if join_token_file:
        join_token = _read_secret(join_token_file, "--join-token-file")
    join_token = join_token or settings.join_token or settings.join_secret
    servers.host_port(listen)  # a bad --listen is refused before anything starts
    labels = pairs(label, "--label")
    _logging()
    servers.run_agent(
        settings,
        controller=controller_url,
        join_secret=join_token,
        name=name,
        listen=listen,
        advertise=advertise,
        labels=labels,
        domain=domain,
    )


def _read_secret(path: Path, flag: str) -> str:
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not text"
        raise Invalid(f"cannot read {flag} {path}: {why}") from None
    if not secret:
        raise Invalid(f"{flag} {path} is empty")
    return secret


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for chatty in ("httpx", "alembic"):  # a line per request, per migration plugin
        logging.getLogger(chatty).setLevel(logging.WARNING)
