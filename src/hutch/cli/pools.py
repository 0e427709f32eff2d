"""`hutch pool`: warm pools, micro-VMs kept ready for `hutch run` of their image and shape."""

from typing import Annotated

import typer

from hutch.cli.remote import OutputOpt, connect, each, fields, listed, progress, when
from hutch.model.pool import MAX_READY
from hutch.model.sandbox import scratch_mib
from hutch.model.units import parse_mib

app = typer.Typer(
    help="Warm pools: micro-VMs kept booted and paused, so that hutch run starts in a blink.",
    no_args_is_help=True,
)


@app.command("set")
def set_(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="An image's name or digest.")],
    min_ready: Annotated[
        int,
        typer.Option(
            "--min-ready",
            "-n",
            min=0,
            max=MAX_READY,
            help="Machines kept ready (0: none, pool kept).",
        ),
    ],
    cpus: Annotated[int, typer.Option(help="vCPUs (default 1).")] = 1,
    memory: Annotated[
        str, typer.Option("--memory", "-m", help="RAM, e.g. 256M (default 128M).")
    ] = "128M",
    disk: Annotated[
        str | None, typer.Option(help="Writable space over the image (default: memory / 2).")
    ] = None,
) -> None:
    """Keep N micro-VMs of IMAGE and this shape ready (made, or updated if the project has a
    pool of it); print the pool's id.

    A `hutch run` of the same image, --cpus, --memory and --disk (on the default network, with
    no -p, --sg, -v or --from) then takes a ready one, already booted, instead of booting one:
    it becomes the new machine (its name, command, environment) and the pool makes another.
    Pooled machines count in the project's quota and give way to its own machines when the
    quota or a node is full.

    \b
    hutch pool set busybox --memory 256M --min-ready 2
    hutch run -m 256M busybox -- echo hi    # from the pool
    hutch pool ls; hutch pool rm busybox
    """
    with connect() as client:
        p = client.pools.set(
            image, min_ready=min_ready, cpus=cpus, memory_mib=parse_mib(memory),
            disk_mib=parse_mib(disk) if disk else 0,
        )  # fmt: skip
    progress(f"pool of {p.image}: {p.ready}/{p.min_ready} ready ({p.state})")
    typer.echo(p.id)


@app.command("ls")
def ls(output: OutputOpt = "table") -> None:
    """List the project's warm pools: how many machines each has ready of how many it keeps,
    its state, and why it is not full or failed."""
    columns = [
        *fields("id", "image", "cpus"),
        ("MEMORY", lambda p: f"{p.memory_mib}M"),
        ("DISK", lambda p: f"{scratch_mib(p.disk_mib, p.memory_mib)}M"),  # what a run gets
        ("READY", lambda p: f"{p.ready}/{p.min_ready}"),
        *fields("state", "node"),
        ("ERROR", lambda p: p.error or "-"),
        when("created_at"),
    ]
    listed(lambda client: client.pools.list(), columns, output)


@app.command("rm")
def rm(
    refs: Annotated[
        list[str],
        typer.Argument(
            metavar="POOL...", help="Pools' ids, or images the project has one pool of."
        ),
    ],
) -> None:
    """Remove pools: their machines are destroyed (machines already taken from one run on);
    print each once removed."""
    each(lambda client, ref: client.pools.delete(ref), refs)
