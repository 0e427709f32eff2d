"""`hutch snapshot`: machine snapshots, which `hutch run --from` continues from."""

from typing import Annotated

import typer

from hutch.cli.remote import OutputOpt, connect, each, fields, listed, progress, show, when
from hutch.model.units import format_bytes

app = typer.Typer(
    help="Machine snapshots: a running micro-VM's memory, devices and disk, to run copies of.",
    no_args_is_help=True,
)

SnapshotRef = Annotated[str, typer.Argument(metavar="SNAPSHOT", help="A snapshot's name or id.")]


@app.command("create")
def create(
    machine: Annotated[str, typer.Argument(metavar="MACHINE", help="A running micro-VM.")],
    name: Annotated[str, typer.Option(help="Unique in the project (default: the time).")] = "",
) -> None:
    """Snapshot a running micro-VM (its workload pauses for the copy, then runs on); print
    the snapshot's name.

    \b
    hutch snapshot create warm --name tmpl
    hutch run -d --from tmpl --name copy1
    """
    with connect() as client:
        s = client.snapshots.create(machine, name)
    progress(f"snapshot {s.name}: {format_bytes(s.size_bytes)} on node {s.node}")
    typer.echo(s.name)


@app.command("ls")
def ls(output: OutputOpt = "table") -> None:
    """List the project's machine snapshots."""
    columns = [
        *fields("name", "id", "image"),
        ("SIZE", lambda s: format_bytes(s.size_bytes)),
        *fields("node", "state"),
        ("CLONES", lambda s: len(s.clones)),
        when("created_at"),
    ]
    listed(lambda client: client.snapshots.list(), columns, output)


@app.command("inspect")
def inspect(ref: SnapshotRef, output: OutputOpt = "json") -> None:
    """Show a snapshot: its image, shape, node, size and the machines that continue from it."""
    show(lambda client: client.snapshots.get(ref), output)


@app.command("rm")
def rm(
    refs: Annotated[
        list[str], typer.Argument(metavar="SNAPSHOT...", help="Snapshots' names or ids.")
    ],
) -> None:
    """Delete snapshots (refused while machines continue from one); print each once deleted."""
    each(lambda client, ref: client.snapshots.delete(ref), refs)
