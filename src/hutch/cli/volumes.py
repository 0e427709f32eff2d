"""`hutch volume`: a project's persistent disks, their snapshots, forks and backups."""

import sys
from typing import Annotated

import typer

from hutch.cli.remote import OutputOpt, act, connect, fields, listed, progress, show, when
from hutch.model.errors import Invalid
from hutch.model.units import format_bytes
from hutch.model.volume import parse_size

app = typer.Typer(
    help="Volumes: a project's persistent disks, with snapshots, forks and backups.",
    no_args_is_help=True,
)

VolumeRef = Annotated[str, typer.Argument(metavar="VOLUME", help="A volume's name or id.")]
SnapshotRef = Annotated[str, typer.Argument(metavar="SNAPSHOT", help="A snapshot's name or id.")]


def _size(text: str) -> int:
    return parse_size(text)


def _bytes(n: int) -> str:
    return format_bytes(n)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Unique in the project.")],
    size: Annotated[
        str | None,
        typer.Option(
            help="Its size: 10G, 512M, 1T (a bare number is GiB). With --from: "
            "at least the source's (default: the same)."
        ),
    ] = None,
    fs: Annotated[str, typer.Option(help="ext4 (made now), or none: a raw block device.")] = (
        "ext4"
    ),
    node: Annotated[
        str, typer.Option(help="The node to put it on (default: the one with most room).")
    ] = "",
    source: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="VOLUME[@SNAPSHOT]",
            help="Fork a volume (its data now) or one of its snapshots: copy-on-write, on "
            "the source's node.",
        ),
    ] = "",
) -> None:
    """Make a volume (or a fork of one).

    \b
    hutch volume create db-data --size 10G
    hutch volume create db-preview --from db-data@before-migration
    """
    if not size and not source:
        raise Invalid("a volume needs --size (10G), or --from VOLUME[@SNAPSHOT] for a fork")
    with connect() as client:
        v = client.volumes.create(name, _size(size) if size else 0, fs=fs, node=node, source=source)
    progress(f"volume {v.name}: {_bytes(v.size_bytes)} {v.fs} on node {v.node}")


@app.command("ls")
def ls(output: OutputOpt = "table") -> None:
    """List the project's volumes."""
    columns = [
        *fields("name", "id"),
        ("SIZE", lambda v: _bytes(v.size_bytes)),
        ("USED", lambda v: _bytes(v.used_bytes)),
        *fields("fs", "state", "node", "machine", "snapshots"),
        when("created_at"),
    ]
    listed(lambda client: client.volumes.list(), columns, output)


@app.command("inspect")
def inspect(ref: VolumeRef, output: OutputOpt = "json") -> None:
    """Show a volume: size, filesystem, state, node, the machine it is attached to."""
    show(lambda client: client.volumes.get(ref), output)


@app.command("rm")
def rm(ref: VolumeRef) -> None:
    """Delete a volume and its snapshots (refused while a machine has it)."""
    act(lambda client: client.volumes.delete(ref), f"volume {ref} is deleted")


@app.command("extend")
def extend(
    ref: VolumeRef,
    size: Annotated[str, typer.Option(help="The new size (larger: a volume never shrinks).")],
) -> None:
    """Grow a detached volume (and its ext4)."""
    with connect() as client:
        v = client.volumes.extend(ref, _size(size))
    progress(f"volume {v.name}: {_bytes(v.size_bytes)}")


@app.command(
    "snapshot",
    context_settings={"allow_interspersed_args": True},
)
def snapshot(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="VOLUME | ls VOLUME | rm VOLUME SNAPSHOT",
            help="VOLUME: take a snapshot of it; ls VOLUME: its snapshots; rm VOLUME "
            "SNAPSHOT: delete one. (A snapshot of a volume named ls or rm: use its id.)",
        ),
    ],
    name: Annotated[str, typer.Option(help="The snapshot's name (default: from the time).")] = "",
    output: OutputOpt = "table",
) -> None:
    """Take, list or delete snapshots (point in time, copy-on-write).

    \b
    hutch volume snapshot db-data --name before-migration
    hutch volume snapshot ls db-data
    hutch volume snapshot rm db-data before-migration
    """
    verb = words[0] if len(words) > 1 and words[0] in ("ls", "rm") else ""
    rest = words[1:] if verb else words
    if verb == "ls" and len(rest) == 1:
        columns = [
            *fields("name", "id"),
            ("SIZE", lambda s: _bytes(s.size_bytes)),
            ("USED", lambda s: _bytes(s.used_bytes)),
            ("FROZEN", lambda s: "yes" if s.frozen else "no"),
            when("created_at"),
        ]
        listed(lambda client: client.volumes.snapshots(rest[0]), columns, output)
    elif verb == "rm" and len(rest) == 2:
        act(
            lambda client: client.volumes.delete_snapshot(rest[0], rest[1]),
            f"snapshot {rest[1]} of volume {rest[0]} is deleted",
        )
    elif not verb and len(rest) == 1:
        with connect() as client:
            s = client.volumes.snapshot(rest[0], name)
        if s.frozen:
            progress(f"snapshot {s.name}: taken with the file system frozen by its machine")
        typer.echo(s.name)
    else:
        raise Invalid(
            "hutch volume snapshot takes VOLUME, ls VOLUME, or rm VOLUME SNAPSHOT, not "
            + " ".join(words)
        )


@app.command("restore")
def restore(ref: VolumeRef, snap: SnapshotRef) -> None:
    """Put a detached volume back as it was at a snapshot (the snapshot stays)."""
    act(lambda client: client.volumes.restore(ref, snap), f"volume {ref} is as at {snap}")


@app.command("export")
def export(
    ref: VolumeRef,
    snap: Annotated[str, typer.Option("--snapshot", help="Export this snapshot instead.")] = "",
) -> None:
    """Write a volume (detached) or its snapshot to stdout: sparse and checksummed.

    hutch volume export db-data > db-data.hvol
    """
    if sys.stdout.isatty():
        raise Invalid("hutch volume export writes binary data: redirect it to a file (> FILE)")
    out = sys.stdout.buffer
    with connect() as client:
        for chunk in client.volumes.export(ref, snap):
            out.write(chunk)
    out.flush()


@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new volume's name.")],
    node: Annotated[str, typer.Option(help="The node to put it on (default: most room).")] = "",
) -> None:
    """Make a volume from an export read on stdin (checked as it arrives).

    hutch volume import db-restored < db-data.hvol
    """
    if sys.stdin.isatty():
        raise Invalid(
            "hutch volume import reads an export on stdin: hutch volume import NAME < FILE"
        )
    with connect() as client:
        v = client.volumes.import_(name, sys.stdin.buffer, node=node)
    progress(f"volume {v.name}: {_bytes(v.size_bytes)} {v.fs} on node {v.node}")
