"""`hutch run`, `ps`, `logs`, `exec`, `stop`, `start`, `restart`, `suspend`, `resume`, `kill`,
`rm`, `wait`, `inspect`, `machine extend`: machines through the controller (see `hutch up` or
`hutch login`)."""

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from hutch.cli.main import CLI_WORDS
from hutch.cli.options import EnvOpt, TtyOpt, UserOpt, WorkdirOpt
from hutch.cli.remote import (
    OutputOpt,
    ago,
    check_output,
    connect,
    connect_async,
    cut,
    data,
    dump,
    emit,
    newest_first,
    pairs,
    progress,
)
from hutch.client import plain
from hutch.model.errors import HutchError, Invalid
from hutch.model.machine import MachineState, OnIdle, OnTimeout, check_timeout
from hutch.model.units import format_duration, parse_duration, parse_mib

if TYPE_CHECKING:  # imported where used: `hutch ps` loads no wire models, asyncio or websockets
    import asyncio

    from hutch.client import (
        AsyncAttachSession,
        AsyncClient,
        ExecSession,
        MachineOptions,
    )
    from hutch.wire.machines import LogLine, MachineView, PlacementView

HUTCH_ERROR_EXIT = 125  # as in cli/main.py: hutch itself refused or failed
INTERRUPTED_EXIT = 130
RM_WAIT = 60.0  # seconds `hutch rm` waits for the nodes to destroy what it asked

Refs = Annotated[list[str], typer.Argument(metavar="MACHINE...", help="Machine ids or names.")]
Ref = Annotated[str, typer.Argument(metavar="MACHINE", help="A machine's id or name.")]


def _argv(command: list[str] | None) -> list[str] | None:
    argv = list(command or ())
    if argv[:1] == ["--"]:  # options end at IMAGE, so click passes the separator through
        argv = argv[1:]
    return argv or None


def _write(line: "LogLine") -> None:
    from hutch.client import log_bytes  # noqa: PLC0415  (see the imports)

    if line.skipped:  # the machine's log dropped output nobody read in time: say so
        sys.stderr.write(f"hutch: {line.skipped} bytes of {line.stream} were lost\n")
        sys.stderr.flush()
        return
    out = sys.stdout if line.stream == "stdout" else sys.stderr
    out.buffer.write(log_bytes(line))
    out.buffer.flush()


def _status(m: "MachineView") -> str:
    return _status_of(m.state, m.exit_code, m.oom_killed, m.error)


def _status_of(state: str, exit_code: int | None, oom_killed: bool, error: str) -> str:
    """A machine's state as `hutch ps` shows it (`state` a MachineState or its value)."""
    if state == MachineState.EXITED:
        # No code: its process never ended on its own (stopped while suspended, say).
        code = "" if exit_code is None else f" ({exit_code})"
        return f"exited{code}" + (", out of memory" if oom_killed else "")
    if state == MachineState.FAILED:
        return f"failed: {error}" if error else "failed"
    return str(state)


def _exit_code(m: "MachineView") -> int:
    """The workload's exit code, explaining on stderr what it does not say by itself."""
    if m.exit_code is None:
        progress(f"machine {m.name} {_status(m)}")
        return HUTCH_ERROR_EXIT
    if m.state == "failed" and m.exit_code not in (126, 127):  # not the workload's code
        progress(f"machine {m.name} failed: {m.error}" if m.error else f"machine {m.name} failed")
        return HUTCH_ERROR_EXIT
    if m.error:  # it ran, but not its command (not found, not executable)
        progress(f"machine {m.name}: {m.error}")
    if m.oom_killed:
        progress(f"machine {m.name} ran out of memory (limit {m.memory_mib} MiB)")
    return m.exit_code


# -- run ------------------------------------------------------------------------------------------


RUN_EXAMPLES = (
    "Examples: hutch run busybox -- echo hello;  "
    "hutch run -d --name web -m 256M -e MODE=prod nginx:1.27;  "
    "hutch run --rm --runtime container busybox -- sh -c 'uname -a';  "
    "hutch run -d --timeout 30m --on-timeout destroy busybox -- sleep 1d;  "
    "hutch run -d -p 8080:80 --idle 5m --on-idle suspend nginx:1.27"
)


def run(
    image: Annotated[
        str | None,
        typer.Argument(metavar="IMAGE", help="An image the project sees (hutch image ls)."),
    ] = None,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="CMD", help="Command and arguments (replace the image's Cmd)."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Print the machine's id and return.")
    ] = False,
    rm: Annotated[bool, typer.Option("--rm", help="Destroy the machine when it ends.")] = False,
    interactive: Annotated[
        bool,
        typer.Option("--interactive", "-i", help="Keep the command's stdin open: send hutch's."),
    ] = False,
    tty: TtyOpt = False,
    name: Annotated[str | None, typer.Option(help="A name, unique in the project.")] = None,
    env: EnvOpt = None,
    cpus: Annotated[int | None, typer.Option(help="vCPUs (default 1).")] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", "-m", help="RAM, e.g. 256M or 1G (default 128M).")
    ] = None,
    disk: Annotated[
        str | None, typer.Option(help="Writable space over the image (default: memory / 2).")
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(help="microvm (default: a VM each) or container (crun: trusted code only)."),
    ] = None,
    restart: Annotated[str | None, typer.Option(help="no (default), on-failure or always.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable.")
    ] = None,
    workdir: WorkdirOpt = None,
    user: UserOpt = None,
    entrypoint: Annotated[
        str | None, typer.Option(help="Replace the image's entrypoint (and drop its Cmd).")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="A group of machines placed relative to each other.")
    ] = None,
    group_policy: Annotated[
        str | None,
        typer.Option(
            help="affinity (the group shares a node) or anti-affinity (never).", metavar="POLICY"
        ),
    ] = None,
    constraint: Annotated[
        list[str] | None,
        typer.Option("--constraint", help="KEY=VALUE: a node label it needs; repeatable."),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="spread (default) or pack across the nodes.")
    ] = None,
    publish: Annotated[
        list[str] | None,
        typer.Option(
            "--publish",
            "-p",
            help="[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]: publish a port on the machine's node "
            "(every address of the node, 127.0.0.1 included, unless HOST_IP); repeatable.",
        ),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(
            "--network",
            help="The network to join; default: the project's default network; none: no "
            "network. (Repeatable, the first is eth0, but nodes run machines on one network "
            "only today: one on more fails at start.)",
        ),
    ] = None,
    sg: Annotated[
        list[str] | None,
        typer.Option("--sg", help="A security group of the project's (repeatable)."),
    ] = None,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume",
            "-v",
            help="NAME:/PATH[:ro]: attach the project's volume (hutch volume ls) at PATH until "
            "the machine is destroyed (one machine at a time); it runs on the volume's node. "
            "Repeatable.",
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            help="End it once it has run this long (90s, 30m, 2h, 1d; time suspended does not "
            "count), as --on-timeout says; `hutch machine extend` gives it more.",
            metavar="DURATION",
        ),
    ] = None,
    on_timeout: Annotated[
        str | None,
        typer.Option(
            help="What --timeout does: stop (default), suspend (micro-VMs only) or destroy.",
            metavar="ACTION",
        ),
    ] = None,
    idle: Annotated[
        str | None,
        typer.Option(
            help="Stop or suspend it (--on-idle) once no connection has come to its published "
            "ports (-p, at least one) for this long: 90s, 30m, 2h.",
            metavar="DURATION",
        ),
    ] = None,
    on_idle: Annotated[
        str | None,
        typer.Option(
            help="What --idle does: stop (default) or suspend (micro-VMs only; a new "
            "connection to a published TCP port then resumes it, and gets its answer).",
            metavar="ACTION",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Create nothing: print the node it would go to, and why not others."
        ),
    ] = False,
    from_snapshot: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="SNAPSHOT",
            help="Continue a machine snapshot (hutch snapshot ls) instead of booting: its "
            "image, shape and process, on its node. Give no IMAGE.",
        ),
    ] = None,
) -> None:
    """Run an image in a new machine (a micro-VM of its own).

    Attached (the default), the machine's stdout and stderr go to hutch's, and hutch exits with
    the workload's exit code (125 when the machine failed or hutch refused). Ctrl-C stops the
    machine gracefully; a second Ctrl-C leaves it and returns.

    With -i, hutch's stdin goes to the command (its end closes the command's stdin). With -t
    the command runs on a terminal of this one's size (all its output is stdout); with -it this
    terminal is put in raw mode while attached, so every key, Ctrl-C and Ctrl-D included, goes
    to the command: hutch run -it --rm busybox sh
    """
    given = {
        "name": name,
        "env": pairs(env, "--env") or None,
        "labels": pairs(label, "--label") or None,
        "cpus": cpus,
        "memory_mib": parse_mib(memory) if memory is not None else None,
        "disk_mib": parse_mib(disk) if disk is not None else None,
        "runtime": runtime,
        "restart": restart,
        "workdir": workdir,
        "user": user,
        "entrypoint": entrypoint.split() if entrypoint is not None else None,
        "group": group,
        "group_policy": group_policy,
        "constraints": pairs(constraint, "--constraint") or None,
        "strategy": strategy,
        "tty": tty or None,
        "stdin": interactive or None,
        "ports": publish or None,
        "networks": network or None,
        "security_groups": sg or None,
        "volumes": volume or None,
        "timeout_s": _duration(timeout, "--timeout") if timeout is not None else None,
        "on_timeout": _one_of(on_timeout, OnTimeout, "--on-timeout"),
        "idle_s": _duration(idle, "--idle") if idle is not None else None,
        "on_idle": _one_of(on_idle, OnIdle, "--on-idle"),
        "from_snapshot": from_snapshot,
    }
    if on_timeout is not None and timeout is None:
        raise Invalid("--on-timeout says what --timeout does: give --timeout DURATION too")
    if on_idle is not None and idle is None:
        raise Invalid("--on-idle says what --idle does: give --idle DURATION too")
    if from_snapshot and (image or command):
        raise Invalid(
            f"--from {from_snapshot} continues the snapshot's process in its image: give no "
            "IMAGE or command"
        )
    if not from_snapshot and not image:
        raise Invalid("hutch run needs an IMAGE (hutch image ls), or --from SNAPSHOT")
    image = image or ""
    if tty and (size := _terminal_size()) is not None:
        given["rows"], given["cols"] = size  # from its start: attaching then changes nothing
    # What is not given takes the server's default (the SDK leaves it out of the request).
    options = cast("MachineOptions", {k: v for k, v in given.items() if v is not None})
    if dry_run:
        with connect() as client:
            plan = client.machines.explain(image, _argv(command), **options)
        _print_plan(plan)
        return
    if detach:
        options["auto_destroy"] = rm
        with connect() as client:
            m = client.machines.create(image, _argv(command), **options)
        typer.echo(m.id)
        return
    import asyncio  # noqa: PLC0415  (see the imports)

    options["hold_output"] = True  # it follows from the start: the node keeps output for it
    sys.exit(asyncio.run(_attached(image, _argv(command), options, rm, interactive, tty)))


def _one_of(value: str | None, choices: type[StrEnum], flag: str) -> str | None:
    """`value` if it is one of `choices` (checked here: a typo fails before any request)."""
    words = [c.value for c in choices]
    if value is not None and value not in words:
        raise Invalid(f"{flag} {value!r}: say {', '.join(words[:-1])} or {words[-1]}")
    return value


def _duration(text: str, what: str) -> float:
    """Seconds of a lifetime (or an extension) given as `what`; Invalid saying why not."""
    return check_timeout(parse_duration(text), f"{what} {text}")


def _print_plan(plan: "PlacementView") -> None:
    if plan.placed and plan.because:
        typer.echo(f"would run on node {plan.node} ({plan.because})")
    elif plan.placed:
        typer.echo(f"would run on node {plan.node} ({plan.candidates} node(s) could take it)")
    else:
        typer.echo("no node can take it now")
    for r in plan.rejected:
        typer.echo(f"  {r.node}: {r.reason}")
    if not plan.placed:
        raise typer.Exit(125)


async def _attached(
    image: str,
    command: list[str] | None,
    options: "MachineOptions",
    rm: bool,
    interactive: bool = False,
    tty: bool = False,
) -> int:
    # --rm is done here, not with auto_destroy: a machine destroyed as it ends takes its logs
    # along, and a quick one would end before its output could be read.
    async with connect_async() as client:
        m = await client.machines.create(image, command, **options)
        try:
            return await _attach(client, m, interactive, tty)
        finally:
            if rm:
                with contextlib.suppress(HutchError):
                    await client.machines.delete(m.id, force=True)


async def _attach(
    client: "AsyncClient", m: "MachineView", interactive: bool = False, tty: bool = False
) -> int:
    """Output until the machine ends, then its exit code. First Ctrl-C (or SIGTERM): stop it
    gracefully; second: leave. With `interactive` or `tty`, hutch's stdin and window size go
    to the machine's main process too (_type_into)."""
    import asyncio  # noqa: PLC0415  (see the imports)

    loop = asyncio.get_running_loop()
    follow = asyncio.ensure_future(_follow(client, m))
    typing = None
    if interactive or tty:
        typing = asyncio.ensure_future(_type_into(client, m, interactive, tty))
        follow.add_done_callback(lambda _: typing.cancel())
    stops: list[asyncio.Future[MachineView]] = []

    def on_signal() -> None:
        if not stops:
            progress(f"stopping {m.name} (Ctrl-C again to leave it)")
            stops.append(asyncio.ensure_future(client.machines.stop(m.id)))
        else:
            follow.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        final = await follow
    except asyncio.CancelledError:
        progress(f"left {m.name} (`hutch ps -a` shows what becomes of it)")
        return INTERRUPTED_EXIT
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if typing is not None:  # its end restores the terminal
            typing.cancel()
            with contextlib.suppress(HutchError, asyncio.CancelledError):
                await typing
        for stopping in stops:  # its answer does not matter: the machine's end does
            with contextlib.suppress(HutchError, asyncio.CancelledError):
                await stopping
    return _exit_code(final)


async def _type_into(client: "AsyncClient", m: "MachineView", interactive: bool, tty: bool) -> None:
    """Attached to the machine's main process while it runs: hutch's stdin goes to it (with
    `interactive`; its end closes the process's stdin), this terminal's size and its changes
    (SIGWINCH) too (with `tty`), in raw mode with both. Its output comes with the log."""
    started = await client.machines.wait(m.id, "started")
    if started.state is not MachineState.RUNNING:
        return
    try:
        session = await client.machines.attach(m.id, size=_terminal_size() if tty else None)
    except HutchError:  # it ended meanwhile: the log and its exit say the rest
        return
    import asyncio  # noqa: PLC0415  (see the imports)

    loop = asyncio.get_running_loop()
    resizing: set[asyncio.Future[None]] = set()

    def resize() -> None:
        if (size := _terminal_size()) is not None:
            sent = asyncio.ensure_future(session.resize(*size))
            resizing.add(sent)
            sent.add_done_callback(resizing.discard)

    async with session:
        with _raw_terminal(interactive and tty):
            if tty:
                loop.add_signal_handler(signal.SIGWINCH, resize)
            try:
                if interactive:
                    forward = threading.Thread(
                        target=_forward_stdin_async, args=(session, loop), daemon=True
                    )
                    forward.start()
                with contextlib.suppress(HutchError):
                    await session.wait()
            finally:
                if tty:
                    loop.remove_signal_handler(signal.SIGWINCH)


def _forward_stdin_async(session: "AsyncAttachSession", loop: "asyncio.AbstractEventLoop") -> None:
    """hutch's stdin to an attach session, from a thread (a blocking read: a pipe, a file or a
    terminal alike), until its end, which closes the process's stdin."""
    import asyncio  # noqa: PLC0415  (see the imports)

    with contextlib.suppress(Exception):
        while chunk := os.read(sys.stdin.fileno(), 1 << 16):
            asyncio.run_coroutine_threadsafe(session.write(chunk), loop).result()
        asyncio.run_coroutine_threadsafe(session.close_stdin(), loop).result()


async def _follow(client: "AsyncClient", m: "MachineView") -> "MachineView":
    started = await client.machines.wait(m.id, "started")
    if started.state is not MachineState.FAILED:  # a failed start has no sandbox, no logs
        async with contextlib.aclosing(client.machines.logs(m.id, follow=True)) as lines:
            async for line in lines:
                _write(line)
    return await client.machines.wait(m.id)


# -- listing and looking ----------------------------------------------------------------------


def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include destroyed machines.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print ids only.")] = False,
    state: Annotated[
        list[str] | None, typer.Option(help="Only machines in this state (repeatable).")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Only with KEY=VALUE (repeatable).")
    ] = None,
    output: OutputOpt = "table",
) -> None:
    """List the project's machines (-a: destroyed ones too)."""
    labels = pairs(label, "--label")
    for wanted in state or ():
        _one_of(wanted, MachineState, "--state")
    check_output(output)
    # The API's JSON as it came, whatever the output: the SDK's models would parse every
    # machine only to dump it back unchanged, and take longer to import than the listing takes
    # to fetch (bench/cli.py).
    machines = newest_first(plain.machines(state, labels, all_), lambda m: m["created_at"])
    if quiet:
        for m in machines:
            typer.echo(m["id"])
        return
    emit(machines, _PS_COLUMNS, output)


def _ps_status(m: dict[str, Any]) -> str:
    status = _status_of(m["state"], m.get("exit_code"), m.get("oom_killed", False), m["error"])
    # "idle": suspended for idling, a connection wakes it (one `hutch suspend` made: none does)
    notes = ["idle"] if m.get("idled") and m["state"] == MachineState.SUSPENDED else []
    if (left := m.get("time_left_s")) is not None and not MachineState(m["state"]).finished:
        # 0 left: it ran its whole timeout (suspended, it resumes once extended)
        notes.append(f"{format_duration(math.ceil(left))} left" if left > 0 else "timed out")
    if notes:
        status += f" ({', '.join(notes)})"
    return cut(status)  # whole in `hutch inspect`


_PS_COLUMNS = [
    ("ID", lambda m: m["id"]),
    ("NAME", lambda m: m["name"]),
    ("IMAGE", lambda m: m["image"]),
    ("RUNTIME", lambda m: m["runtime"]),
    ("STATUS", _ps_status),
    ("ADDRESS", lambda m: ",".join(a["ip4"] for a in m.get("addresses", ())) or "-"),
    ("PORTS", lambda m: ports_text(m.get("ports", ())) or "-"),
    ("CREATED", lambda m: ago(m["created_at"])),
]


def ports_text(ports: Any) -> str:
    """Published ports as `docker ps` shows them: 8080->80/tcp, 127.0.0.1:53->53/udp."""
    return ",".join(
        f"{p['host_ip'] + ':' if p.get('host_ip') else ''}{p['host_port']}->{p['port']}/"
        f"{p.get('protocol', 'tcp')}"
        for p in ports
    )


def logs(
    ref: Ref,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the machine ends.")
    ] = False,
    tail: Annotated[
        int | None,
        typer.Option("--tail", "-n", help="Only the last N lines."),
    ] = None,
) -> None:
    """Print a machine's output.

    Its stdout goes to stdout and its stderr to stderr; -f follows until the machine ends.
    """
    with connect() as client:
        for line in client.machines.logs(ref, follow=follow, tail=tail):
            _write(line)


def inspect(ref: Ref) -> None:
    """Show a machine, as JSON (with its image's `exposed_ports` when a node has the image)."""
    with connect() as client:
        m = client.machines.get(ref)
        shown = cast("dict[str, Any]", data(m))
        with contextlib.suppress(HutchError):  # no node has it now: shown without
            shown["exposed_ports"] = client.images.get(m.image_digest or m.image).exposed_ports
        dump(shown, "json")


# -- lifetimes ------------------------------------------------------------------------------------

machine_app = typer.Typer(help="A machine's lifetime: extend.", no_args_is_help=True)


@machine_app.callback()
def machine_group() -> None:
    """A group even with one command (typer would make a lone command the group itself)."""


@machine_app.command("extend")
def extend(
    ref: Ref,
    duration: Annotated[
        str,
        typer.Argument(metavar="DURATION", help="More time to run: 90s, 30m, 2h, 1d."),
    ],
) -> None:
    """Give a machine run with --timeout more time before it times out; print its time left."""
    seconds = _duration(duration, "DURATION")
    with connect() as client:
        m = client.machines.extend(ref, seconds)
    typer.echo(f"{m.name}: {format_duration(math.ceil(m.time_left_s or 0.0))} left")


# -- exec -----------------------------------------------------------------------------------------


def exec_(
    ref: Ref,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="CMD...", help="Command and arguments, after --."),
    ] = None,
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="Send hutch's stdin to the command.")
    ] = False,
    tty: TtyOpt = False,
    env: EnvOpt = None,
    workdir: Annotated[
        str, typer.Option("--workdir", "-w", help="Working directory (default: the machine's).")
    ] = "",
    user: Annotated[
        str, typer.Option("--user", "-u", help="USER[:GROUP] (default: the machine's).")
    ] = "",
) -> None:
    """Run a command in a running machine (one still booting is waited for, up to 2 minutes).

    Its stdout and stderr go to hutch's, and hutch exits with its exit code (255 if the machine
    stopped under it, 125 if hutch refused); with -i, hutch's stdin goes to it. Ctrl-C ends
    it. With -t it runs on a terminal of this one's size (all its output is stdout); with -it
    this terminal is put in raw mode while it runs, so keys such as Ctrl-C and Ctrl-D reach
    the command: hutch exec -it web -- sh
    """
    argv = _argv(command)
    if not argv:
        raise Invalid("give the command to run after --, e.g. hutch exec web -- ls /")
    with (
        connect() as client,
        client.machines.exec_stream(
            ref,
            argv,
            stdin=interactive,
            env=pairs(env, "--env"),
            workdir=workdir,
            user=user,
            tty=tty,
            size=_terminal_size() if tty else None,
        ) as session,  # fmt: skip
        _raw_terminal(interactive and tty),
        _follow_window(session if tty else None),
    ):
        if interactive:
            threading.Thread(target=_forward_stdin, args=(session,), daemon=True).start()
        for stream, data in session:
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.buffer.write(data)
            out.buffer.flush()
    assert session.end is not None
    if session.end.error:
        progress(session.end.error)
    sys.exit(session.end.exit_code)


def _terminal_size() -> tuple[int, int] | None:
    """(rows, columns) of the terminal hutch runs in, if it runs in one."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(stream.fileno())
            return size.lines, size.columns
    return None


@contextlib.contextmanager
def _raw_terminal(wanted: bool) -> Iterator[None]:
    """hutch's stdin in raw mode (when it is a terminal): every key goes to the command as
    typed, Ctrl-C and Ctrl-D included, and the remote terminal echoes. Restored after."""
    fd = sys.stdin.fileno()
    if not wanted or not os.isatty(fd):
        yield
        return
    import termios  # noqa: PLC0415 (POSIX only, and only here)
    import tty  # noqa: PLC0415

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _follow_window(session: "ExecSession | None") -> Iterator[None]:
    """Send the remote terminal this one's size whenever it changes (SIGWINCH)."""
    if session is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def resize() -> None:
        if (size := _terminal_size()) is not None:
            with contextlib.suppress(Exception):
                session.resize(*size)

    def on_winch(_sig: int, _frame: object) -> None:
        # Not from the handler itself: the main thread may hold the connection's lock.
        threading.Thread(target=resize, daemon=True).start()

    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _forward_stdin(session: "ExecSession") -> None:
    """hutch's stdin to an exec session, from a thread, until its end or the session's (a
    socket closed under a write: the session itself says how it ended, or why it never ran)."""
    with contextlib.suppress(Exception):
        # os.read: what is there now (a line on a terminal), not a full buffer.
        while chunk := os.read(sys.stdin.fileno(), 1 << 16):
            session.write(chunk)
        session.close_stdin()


# -- lifecycle ------------------------------------------------------------------------------------


StopTimeout = Annotated[
    float, typer.Option("--time", "-t", help="Seconds from the stop signal to the kill.")
]


def stop(
    refs: Refs,
    time: StopTimeout = 10.0,
    signal_: Annotated[
        str, typer.Option("--signal", "-s", help="Stop signal (default: the image's, or TERM).")
    ] = "",
) -> None:
    """Stop machines gracefully.

    Each gets its stop signal, then a kill after --time seconds; hutch waits until they ended.
    """
    with connect() as client:
        for ref in refs:
            client.machines.stop(ref, signal_, time)
        for ref in refs:
            client.machines.wait(ref, timeout=time + 30)
            typer.echo(ref)


def start(refs: Refs) -> None:
    """Start stopped or ended machines again."""
    _start_each(refs, again=False)


def restart(refs: Refs) -> None:
    """Restart machines (stop them if they run, then start them)."""
    _start_each(refs, again=True)


def _start_each(refs: list[str], *, again: bool) -> None:
    """Start (`again`: restart) each machine in turn, and wait until it has started."""
    with connect() as client:
        for ref in refs:
            (client.machines.restart if again else client.machines.start)(ref)
            client.machines.wait(ref, "started")
            typer.echo(ref)


def suspend(refs: Refs) -> None:
    """Suspend micro-VMs: their memory and devices are saved on their node and their processes
    end, so they hold no CPU or memory there (their disks and addresses stay). hutch waits
    until each has started (`run -d` returns before), then until it is suspended. `hutch
    resume` (or start) continues them where they were."""
    with connect() as client:
        for ref in refs:
            client.machines.wait(ref, "started", timeout=RM_WAIT)
            client.machines.suspend(ref, wait=True, timeout=RM_WAIT)
            typer.echo(ref)


def resume(refs: Refs) -> None:
    """Resume suspended machines where they were, on their node; hutch waits until each runs."""
    with connect() as client:
        for ref in refs:
            client.machines.resume(ref, wait=True, timeout=RM_WAIT)
            typer.echo(ref)


def kill(
    refs: Refs,
    signal_: Annotated[str, typer.Option("--signal", "-s", help="Signal to send.")] = "SIGKILL",
) -> None:
    """Send a signal to machines.

    KILL (the default) ends them at once; other signals are delivered to the workload.
    """
    with connect() as client:
        for ref in refs:
            client.machines.kill(ref, signal_)
            typer.echo(ref)


def rm(
    refs: Refs,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Also running machines (killed first).")
    ] = False,
) -> None:
    """Destroy machines (and what they left on their node), waiting up to a minute for their
    nodes to do it: their networks and security groups can be removed next."""
    failed = 0
    with connect() as client:
        asked = []
        for ref in refs:
            try:
                client.machines.delete(ref, force=force)
            except HutchError as e:
                progress(e.message_in(CLI_WORDS))
                failed += 1
                continue
            asked.append(ref)
        deadline = time.monotonic() + RM_WAIT
        for ref in asked:
            try:
                client.machines.wait(ref, "destroyed", max(deadline - time.monotonic(), 0.0))
            except HutchError as e:  # a lost node: destroyed once it is fenced
                progress(f"{ref}: destroying ({e.message_in(CLI_WORDS)})")
            typer.echo(ref)
    if failed:
        sys.exit(HUTCH_ERROR_EXIT)


def wait(
    refs: Refs,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Wait for machines to end; print exit codes."""
    with connect() as client:
        for ref in refs:
            m = client.machines.wait(ref, timeout=timeout)
            if m.exit_code is None:
                raise Invalid(f"machine {m.name} {_status(m)}: it has no exit code")
            typer.echo(str(m.exit_code))
