"""`hutch image`: this host's image store (pull, import, list, inspect, remove, export)."""

import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from hutch import config
from hutch.agent import images
from hutch.agent.runtimes import RUNTIMES, open_driver
from hutch.images.pull import PullProgress
from hutch.images.store import StoredImage
from hutch.model.errors import Invalid
from hutch.model.image import parse_ref
from hutch.model.units import format_bytes

app = typer.Typer(help="Images in this host's store: pull, import, list, inspect, remove.")
ProjectOpt = Annotated[str | None, typer.Option(help="Project (default: the `project` setting).")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table or json.")]


def _err(msg: str) -> None:
    typer.echo(f"hutch: {msg}", err=True)


def _project(project: str | None, settings: config.Settings) -> str:
    return project or settings.project


def _view(image: StoredImage) -> dict[str, Any]:
    return {
        "id": image.digest,
        "names": list(image.names),
        "size": image.size,
        "created": image.created,
        "layers": image.layers,
        "public": image.public,
        "config": asdict(image.config),
    }


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(metavar="REF", help="e.g. registry.example.com/app:1.2")],
    project: ProjectOpt = None,
    public: Annotated[bool, typer.Option(help="Visible to every project.")] = False,
    username: Annotated[str, typer.Option(help="Registry user (else from settings).")] = "",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
) -> None:
    """Pull an image from its registry into this host's store (resumes an interrupted pull)."""
    settings = config.load()
    parsed = parse_ref(ref)
    credentials = None
    if username:
        if not password_stdin:
            raise Invalid(
                "--username needs --password-stdin (passwords do not go on command lines)"
            )
        credentials = (parsed.registry, username, sys.stdin.readline().rstrip("\n"))
    started = time.monotonic()
    with _PullDisplay() as display:
        image = asyncio.run(
            images.pull_image(
                settings,
                ref,
                project=_project(project, settings),
                public=public,
                credentials=credentials,
                progress=display.update,
            )
        )
    took = time.monotonic() - started
    _err(f"pulled {parsed.familiar()} ({format_bytes(image.size)}) in {took:.1f} s")
    typer.echo(image.digest)


class _PullDisplay:
    """A progress bar per layer on a terminal; one line per finished layer otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "_PullDisplay":
        if self._tty:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._tty:
            self._progress.stop()

    def update(self, event: PullProgress) -> None:
        short = event.layer.removeprefix("sha256:")[:12]
        if not self._tty:
            if event.status in ("exists", "done"):
                what = "already here" if event.status == "exists" else "fetched"
                _err(f"layer {short} {what} ({format_bytes(event.layer_total)})")
            return
        task = self._tasks.get(event.layer)
        if task is None:
            task = self._tasks[event.layer] = self._progress.add_task(
                short, total=event.layer_total
            )
        self._progress.update(
            task, completed=event.layer_done, description=f"{short} {event.status}"
        )


@app.command("import")
def import_(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="docker save or OCI archive, an OCI layout directory, - for stdin."
        ),
    ],
    name: Annotated[list[str] | None, typer.Option(help="Name the image (repeatable).")] = None,
    project: ProjectOpt = None,
    public: Annotated[bool, typer.Option(help="Visible to every project.")] = False,
) -> None:
    """Import a `docker save` archive, an OCI archive or an OCI layout directory."""
    settings = config.load()
    stream: BinaryIO
    if file == "-":
        stream = sys.stdin.buffer
        found = images.import_image(
            settings,
            stream,
            project=_project(project, settings),
            public=public,
            names=tuple(name or ()),
        )
    elif Path(file).is_dir():
        found = images.import_layout(
            settings, Path(file), project=_project(project, settings), public=public,
            names=tuple(name or ()),
        )  # fmt: skip
    else:
        try:
            with open(file, "rb") as stream:
                found = images.import_image(
                    settings, stream, project=_project(project, settings), public=public,
                    names=tuple(name or ()),
                )  # fmt: skip
        except FileNotFoundError:
            raise Invalid(f"{file} does not exist") from None
    for image in found:
        _err(
            f"imported {', '.join(image.names) or 'an unnamed image'} ({format_bytes(image.size)})"
        )
        typer.echo(image.digest)


@app.command("ls")
def ls(project: ProjectOpt = None, output: OutputOpt = "table") -> None:
    """List the images a project sees: its own and the public ones."""
    settings = config.load()
    found = images.open_store(settings).images(_project(project, settings))
    if output == "json":
        typer.echo(json.dumps([_view(i) for i in found], indent=2))
        return
    if output != "table":
        raise Invalid(f"unknown output format {output!r}: use table or json")
    typer.echo(f"{'NAME':<48} {'IMAGE ID':<13} {'SIZE':>10}  {'CREATED':<20} PUBLIC")
    for image in found:
        names = [parse_ref(n).familiar() for n in image.names] or ["<none>"]
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(image.created))
        for n in names:
            typer.echo(
                f"{n:<48} {image.short_id:<13} {format_bytes(image.size):>10}  {created:<20} "
                f"{'yes' if image.public else 'no'}"
            )


@app.command()
def inspect(ref: Annotated[str, typer.Argument(metavar="REF")], project: ProjectOpt = None) -> None:
    """Show an image: digest, names, size, config, layers (JSON)."""
    settings = config.load()
    store = images.open_store(settings)
    image = store.resolve(ref, _project(project, settings))
    view = _view(image)
    view["layers"] = [
        {"digest": layer.digest, "size": layer.size, "media_type": layer.media_type}
        for layer in store.image(image.digest).layers
    ]
    typer.echo(json.dumps(view, indent=2))


@app.command()
def rm(
    refs: Annotated[list[str], typer.Argument(metavar="REF...")],
    project: ProjectOpt = None,
) -> None:
    """Remove images from the store (and the roots prepared from them, unless in use)."""
    settings = config.load()
    in_use = asyncio.run(_roots_in_use(settings))
    for ref in refs:
        removal = images.remove_image(
            settings, ref, project=_project(project, settings), roots_in_use=in_use
        )
        freed = removal.gc.bytes + removal.cache_bytes
        note = " (its root stays: a sandbox runs on it)" if removal.kept_in_use else ""
        _err(f"removed {ref}: {format_bytes(freed)} freed{note}")
        typer.echo(removal.image.digest)


async def _roots_in_use(settings: config.Settings) -> set[str]:
    paths: set[str] = set()
    for runtime in RUNTIMES:
        driver = open_driver(settings, runtime)
        for info in await driver.sandboxes():
            paths.update(info.root_paths)
        await driver.close()
    return paths


@app.command()
def export(
    ref: Annotated[str, typer.Argument(metavar="REF")],
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="OCI archive to write; - for stdout.")
    ],
    project: ProjectOpt = None,
) -> None:
    """Write an image to an OCI archive (readable by skopeo, umoci, podman, hutch import)."""
    settings = config.load()
    if file == "-":
        if sys.stdout.isatty():
            raise Invalid(
                "refusing to write an archive to a terminal: redirect stdout or give FILE"
            )
        image = images.export_image(
            settings, ref, sys.stdout.buffer, project=_project(project, settings)
        )
    else:
        with open(file, "wb") as out:
            image = images.export_image(settings, ref, out, project=_project(project, settings))
    _err(f"exported {image.digest} ({format_bytes(image.size)})")
