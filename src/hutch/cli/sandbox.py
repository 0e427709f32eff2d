"""`hutch sandbox`: run sandboxes directly on this host, without a controller (like firectl)."""

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from hutch import config
from hutch.agent.images import roots_for
from hutch.agent.runtimes import RUNTIMES, open_driver
from hutch.agent.sandbox import RunRequest, build_spec
from hutch.cli.options import EnvOpt, UserOpt, WorkdirOpt
from hutch.model.errors import Invalid
from hutch.model.sandbox import (
    Resources,
    SandboxState,
    Stream,
    VolumeMount,
    validate_volume_target,
)
from hutch.model.units import parse_mib
from hutch.runtime.driver import SandboxDriver

app = typer.Typer(
    help="Run sandboxes directly on this host, without a controller.", no_args_is_help=True
)


def _progress(msg: str) -> None:
    typer.echo(f"hutch: {msg}", err=True)


@app.command(
    "run",
    context_settings={"allow_interspersed_args": False},
    epilog="Examples: hutch sandbox run busybox -- echo hello;  "
    "hutch sandbox run --memory 256M ./rootfs -- /bin/sh -c 'echo hello'",
)
def run(
    rootfs: Annotated[
        str,
        typer.Argument(
            metavar="IMAGE|ROOTFS",
            help="An image in this host's store (hutch image ls), a root directory, "
            "or an OCI image layout.",
        ),
    ],
    command: Annotated[
        list[str] | None, typer.Argument(metavar="CMD", help="Command and arguments, after --.")
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="microvm (a VM each) or container (crun).")
    ] = "microvm",
    cpus: Annotated[int, typer.Option(help="vCPUs (microvm) or CPU quota (container).")] = 1,
    memory: Annotated[
        str, typer.Option("--memory", "-m", help="Memory, e.g. 256M or 1G.")
    ] = "128M",
    scratch: Annotated[
        str, typer.Option(help="Writable space over the root (0 = half the memory).")
    ] = "0",
    env: EnvOpt = None,
    workdir: WorkdirOpt = None,
    user: UserOpt = None,
    entrypoint: Annotated[str | None, typer.Option(help="Replace the image's entrypoint.")] = None,
    name: Annotated[str, typer.Option(help="Sandbox id (default: generated).")] = "",
    keep: Annotated[
        bool, typer.Option(help="Keep the sandbox after it exits (see `sandbox rm`).")
    ] = False,
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds from SIGTERM to kill on Ctrl-C.")
    ] = 10.0,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume",
            "-v",
            metavar="FILE:PATH[:ro][:block]",
            help="A raw file of this host (ext4 inside) mounted at PATH; :ro read-only, "
            ":block as a block device at PATH instead. Repeatable.",
        ),
    ] = None,
) -> None:
    """Boot one sandbox, stream its output, exit with its exit code."""
    if runtime not in RUNTIMES:
        raise Invalid(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    volumes = tuple(parse_volume(v, i) for i, v in enumerate(volume or ()))
    argv = list(command or ())
    if argv[:1] == ["--"]:  # options end at ROOTFS, so click passes the separator through
        argv = argv[1:]
    request = RunRequest(
        image=rootfs,
        command=tuple(argv),
        entrypoint=tuple(entrypoint.split()) if entrypoint is not None else None,
        env=tuple(env or ()),
        workdir=workdir or "",
        user=user or "",
        resources=Resources(
            cpus=cpus, memory_mib=parse_mib(memory), scratch_mib=parse_mib(scratch)
        ),
        sandbox_id=name,
    )
    sys.exit(asyncio.run(_run(request, runtime, keep, stop_timeout, volumes)))


def parse_volume(text: str, index: int) -> VolumeMount:
    """FILE:PATH[:ro][:block] (options also comma-separated) as volume `vol<index>`."""
    options: set[str] = set()
    rest = text
    while (cut := rest.rfind(":")) > 0 and not rest[cut + 1 :].startswith("/"):
        words = set(rest[cut + 1 :].split(","))
        if not words <= {"ro", "rw", "block"}:
            if ":/" in rest[:cut]:  # FILE:PATH:WORD
                raise Invalid(f"-v {text}: unknown option {rest[cut + 1 :]!r} (ro, rw or block)")
            break  # FILE:WORD: a path that is not absolute, said below
        options |= words
        rest = rest[:cut]
    file, sep, target = rest.rpartition(":")
    if not sep or not file:
        raise Invalid(f"-v {text}: give FILE:PATH, e.g. -v ./data.ext4:/data")
    if {"ro", "rw"} <= options:
        raise Invalid(f"-v {text}: ro or rw, not both")
    path = Path(file).absolute()
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise Invalid(f"-v {text}: {file} {what}")
    validate_volume_target(target)
    return VolumeMount(
        volume_id=f"vol{index}",
        source=str(path),
        target=target,
        read_only="ro" in options,
        fs="none" if "block" in options else "ext4",
    )


async def _run(
    request: RunRequest,
    runtime: str,
    keep: bool,
    stop_timeout: float,
    volumes: tuple[VolumeMount, ...] = (),
) -> int:
    settings = config.load()
    driver = open_driver(settings, runtime, log=_progress)
    started = time.monotonic()
    preparing = asyncio.ensure_future(
        asyncio.to_thread(build_spec, request, driver.capabilities(), roots_for(settings))
    )
    done, _ = await asyncio.wait({preparing}, timeout=1.0)
    if not done:  # first use of this root: unpacking and building its disk take a while
        _progress(f"preparing the root file system from {request.image} ...")
    spec, _ = await preparing
    spec = dataclasses.replace(spec, volumes=volumes)
    if not done:
        _progress(f"root ready in {time.monotonic() - started:.1f} s (cached from now on)")
    try:
        await driver.create(spec)
        await driver.start(spec.id)
        with _stop_on_signals(driver, spec.id, stop_timeout):
            async for record in driver.logs(spec.id, follow=True):
                if record.skipped:
                    _progress(f"{record.skipped} bytes of {record.stream} were lost")
                out = sys.stdout if record.stream is Stream.STDOUT else sys.stderr
                out.buffer.write(record.data)
                out.buffer.flush()
            status = await driver.wait(spec.id)
        if status.error:
            _progress(f"sandbox {spec.id} failed: {status.error}")
        elif status.oom_killed:
            _progress(f"sandbox {spec.id}: out of memory (limit {spec.resources.memory_mib} MiB)")
        return status.code
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                await driver.destroy(spec.id, force=True)
        await driver.close()


@contextlib.contextmanager
def _stop_on_signals(driver: SandboxDriver, sandbox_id: str, timeout: float):  # type: ignore[no-untyped-def]
    """First Ctrl-C/SIGTERM: stop gracefully (signal, then kill after `timeout`). Second: kill."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[object]] = []

    def on_signal() -> None:
        if not tasks:
            _progress(f"stopping {sandbox_id} (again to kill)")
            tasks.append(loop.create_task(driver.stop(sandbox_id, timeout)))
        else:
            tasks.append(loop.create_task(driver.stop(sandbox_id, 0)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@app.command("ls")
def ls(
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Include exited and failed ones.")
    ] = False,
) -> None:
    """List the sandboxes on this host."""
    asyncio.run(_ls(all_))


async def _ls(all_: bool) -> None:
    settings = config.load()
    rows = []
    for runtime in RUNTIMES:
        driver = open_driver(settings, runtime)
        await driver.recover()  # re-adopt what a crashed hutch process left; record the dead
        for info in await driver.sandboxes():
            if all_ or info.state in (SandboxState.CREATED, SandboxState.RUNNING):
                exit_ = info.exit.describe() if info.exit else ""
                rows.append((info.id, runtime, info.state.value, str(info.pid or ""), exit_))
        await driver.close()
    typer.echo(f"{'ID':<24} {'RUNTIME':<10} {'STATE':<8} {'PID':<8} EXIT")
    for row in rows:
        typer.echo(f"{row[0]:<24} {row[1]:<10} {row[2]:<8} {row[3]:<8} {row[4]}")


@app.command("rm")
def rm(
    ids: Annotated[list[str], typer.Argument(help="Sandbox ids.")],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Kill running sandboxes first.")
    ] = False,
) -> None:
    """Remove sandboxes and everything they left on this host."""
    asyncio.run(_rm(ids, force))


async def _rm(ids: list[str], force: bool) -> None:
    settings = config.load()
    drivers = [open_driver(settings, runtime) for runtime in RUNTIMES]
    try:
        for sandbox_id in ids:
            for driver in drivers:
                await driver.destroy(sandbox_id, force=force)
            typer.echo(sandbox_id)
    finally:
        for driver in drivers:
            await driver.close()
