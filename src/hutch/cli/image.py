"""`hutch image`: pull, import, list, inspect, remove images; export them from this host.

With a controller configured (`hutch up`, `hutch login`, HUTCH_URL), pull, import, ls, inspect
and rm go through its API, so they reach every node; otherwise, or with --local, they act on
this host's store. `export` always reads this host's store.
"""

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from hutch import config
from hutch.agent import images
from hutch.agent.runtimes import RUNTIMES, open_driver, sandbox_dirs
from hutch.cli.remote import OutputOpt, ago, check_output, connect, dump, emit, newest_first
from hutch.client.config import configured
from hutch.images.build import is_rootfs_tarball, write_archive, write_archive_of_tarball
from hutch.images.pull import PullProgress
from hutch.images.store import StoredImage
from hutch.model.errors import Invalid, NotFound
from hutch.model.image import parse_ref
from hutch.model.units import format_bytes
from hutch.wire.images import PullEvent

app = typer.Typer(
    help="Images: pull, import, list, remove, export. Through the controller when one is "
    "configured (hutch up, hutch login), else in this host's store (and always with --local)."
)
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        help="Project (default: the context's). In this host's store (--local, export): the "
        "`project` setting's namespace by default, or a controller project's id (p-...)."
    ),
]
LocalOpt = Annotated[
    bool, typer.Option("--local", help="This host's store, even when a controller is configured.")
]


def _err(msg: str) -> None:
    typer.echo(f"hutch: {msg}", err=True)


def _project(project: str | None, settings: config.Settings) -> str:
    return project or settings.project


def _project_id(name: str | None) -> str:
    """The id the controller's project `name` (default: the context's, else the token's own)
    is known by in the nodes' stores; a `name` the controller does not know is taken as an id."""
    with connect(name) as client:
        if client.project:
            try:
                return client.projects.get(client.project).id
            except NotFound:
                if name:  # an id already, as --project takes in this host's store
                    return name
                raise
        projects = list(client.projects.list())
    if len(projects) != 1:
        raise Invalid("name a project (--project): this token sees several")
    return projects[0].id


def _remote(local: bool) -> bool:
    return not local and configured()


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _names(names: "list[str] | tuple[str, ...]") -> str:
    """Names as people type them: deb-py:1, not docker.io/library/deb-py:1."""
    return ", ".join(parse_ref(n).familiar() for n in names) or "an unnamed image"


def _view(image: StoredImage) -> dict[str, Any]:
    return {
        "id": image.digest,
        "names": list(image.names),
        "size": image.size,
        "created": image.created,
        "layers": image.layers,
        "public": image.public,
        "source": image.source,
        "unpacked": image.unpacked,
        "config": asdict(image.config),
    }


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(metavar="REF", help="e.g. registry.example.com/app:1.2")],
    project: ProjectOpt = None,
    public: Annotated[
        bool, typer.Option(help="Publish to the catalogue every project sees (system token).")
    ] = False,
    username: Annotated[str, typer.Option(help="Registry user (else from settings).")] = "",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    local: LocalOpt = False,
) -> None:
    """Pull an image from its registry (resumes an interrupted pull)."""
    parsed = parse_ref(ref)
    if _remote(local):
        if username:
            raise Invalid(
                "through a controller, registry credentials come from the nodes' settings "
                "(registries in hutch.toml); use --local to pull with --username here"
            )
        started = time.monotonic()
        with connect(project) as client, _PullDisplay() as display:
            view = client.images.pull(ref, public=public, progress=display.overall)
        took = time.monotonic() - started
        _err(f"pulled {parsed.familiar()} ({format_bytes(view.size)}) in {took:.1f} s")
        typer.echo(view.id)
        return
    settings = config.load()
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
        self._layers_seen: set[str] = set()

    def __enter__(self) -> "_PullDisplay":
        if self._tty:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._tty:
            self._progress.stop()

    def update(self, event: PullProgress) -> None:
        """A local pull's event: a bar per layer."""
        self._show(event.layer, event.status, event.layer_done, event.layer_total)

    def overall(self, event: PullEvent) -> None:
        """A pull through the controller: its events count the bytes of all layers, so one bar."""
        self._show("", event.status, event.done, event.total, event.layer)

    def _show(self, key: str, status: str, done: int, total: int, layer: str = "") -> None:
        short = _short(layer or key)
        if not self._tty:
            if status in ("exists", "done") and (layer or key) not in self._layers_seen:
                self._layers_seen.add(layer or key)
                what = "already here" if status == "exists" else "fetched"
                size = f" ({format_bytes(total)})" if key else ""
                _err(f"layer {short} {what}{size}")
            return
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = self._progress.add_task(short, total=total)
        self._progress.update(task, completed=done, total=total, description=f"{short} {status}")


@app.command("import")
def import_(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="docker save or OCI archive, OCI layout, root directory or root filesystem "
            "tarball; - for stdin.",
        ),
    ],
    name: Annotated[list[str] | None, typer.Option(help="Name the image (repeatable).")] = None,
    project: ProjectOpt = None,
    public: Annotated[
        bool, typer.Option(help="Publish to the catalogue every project sees (system token).")
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Import an image archive, layout, root directory or root filesystem tarball.

    A `docker save` archive, an OCI archive, an OCI layout directory, or a plain root directory
    or tar of one (debootstrap's, say: packed as a one-layer image running /bin/sh, like
    `docker import`; device nodes and FIFOs are left out, the sandbox provides /dev).
    """
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if file == "-":  # read once, to tell an image archive from a root filesystem's tar
            file = str(scratch / "stdin")
            with open(file, "wb") as spooled:
                shutil.copyfileobj(sys.stdin.buffer, spooled, 1 << 20)
        source = Path(file)
        shown = "stdin" if source.parent == scratch else file
        packed = None
        if source.is_dir() and not (source / "oci-layout").exists():
            _err(f"packing {file} as a one-layer image")
            with (scratch / "image.tar").open("wb") as out:
                packed = write_archive(source, out)
        elif source.is_file() and is_rootfs_tarball(source):
            _err(f"packing {shown}, a root filesystem's tar, as a one-layer image")
            with (scratch / "image.tar").open("wb") as out:
                packed = write_archive_of_tarball(source, out)
        if packed is not None:
            if note := packed.note(shown):
                _err(note)
            file = str(scratch / "image.tar")
        _import(file, name, project, public, local)


def _import(
    file: str, name: list[str] | None, project: str | None, public: bool, local: bool
) -> None:
    if _remote(local):
        with connect(project) as client:
            source = sys.stdin.buffer if file == "-" else file
            views = client.images.import_(source, names=name or (), public=public)
        for view in views:
            _err(f"imported {_names(view.names)} ({format_bytes(view.size)})")
            typer.echo(view.id)
        return
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
        _err(f"imported {_names(image.names)} ({format_bytes(image.size)})")
        typer.echo(image.digest)


@app.command("ls")
def ls(project: ProjectOpt = None, output: OutputOpt = "table", local: LocalOpt = False) -> None:
    """List the images a project sees: its own (FROM project), then the catalogue's.

    A name the project has itself is what its machines get, even where the catalogue has it too.
    """
    check_output(output)
    views: list[dict[str, Any]]
    if _remote(local):
        with connect(project) as client:
            views = [i.model_dump(mode="json") for i in client.images.list()]
    else:
        settings = config.load()
        views = [_view(i) for i in images.open_store(settings).images(_project(project, settings))]
    views = newest_first(views, lambda v: v["created"])
    if output != "table":
        dump(views, output)
        return
    rows = [
        (parse_ref(n).familiar() if n else "<none>", v) for v in views for n in v["names"] or [""]
    ]
    emit(
        rows,
        [
            ("NAME", lambda r: r[0]),
            ("IMAGE ID", lambda r: _short(r[1]["id"])),
            ("SIZE", lambda r: format_bytes(r[1]["size"])),
            ("CREATED", lambda r: ago(r[1]["created"] or None)),
            ("FROM", lambda r: r[1]["source"]),  # which one a machine of the project gets
        ],
        "table",
    )


@app.command()
def inspect(
    ref: Annotated[str, typer.Argument(metavar="REF")],
    project: ProjectOpt = None,
    local: LocalOpt = False,
) -> None:
    """Show an image, as JSON.

    Its digest, names and size (and, from this host's store, its config and layers).
    """
    if _remote(local):
        with connect(project) as client:
            dump(client.images.get(ref), "json")
        return
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
    public: Annotated[
        bool, typer.Option(help="Remove from the catalogue every project sees (system token).")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Even if machines use it (they cannot start again without it)."
        ),
    ] = False,
    local: LocalOpt = False,
) -> None:
    """Remove images (and the roots prepared from them, unless in use).

    Through a controller, an image that machines of the project (not destroyed) use is not
    removed unless --force, which says which machines lose it.
    """
    if _remote(local):
        with connect(project) as client:
            for ref in refs:
                removed = client.images.delete(ref, public=public, force=force)
                if removed.machines:
                    _err(
                        f"removed {ref}, which machines {', '.join(removed.machines)} use: they "
                        "keep running but cannot start again without it"
                    )
                else:
                    _err(f"removed {ref}")
                typer.echo(removed.id)
        return
    settings = config.load()
    in_use = asyncio.run(_roots_in_use(settings))
    for ref in refs:
        removal = images.remove_image(
            settings, ref, project=_project(project, settings), roots_in_use=in_use, public=public
        )
        freed = removal.gc.bytes + removal.cache_bytes
        note = " (its root stays: a sandbox runs on it)" if removal.kept_in_use else ""
        _err(f"removed {ref}: {format_bytes(freed)} freed{note}")
        typer.echo(removal.image.digest)


async def _roots_in_use(settings: config.Settings) -> set[str]:
    """The roots this host's sandboxes run on: `hutch sandbox`'s and the node agent's."""
    paths: set[str] = set()
    for directory in sandbox_dirs(settings):
        for runtime in RUNTIMES:
            if not (directory / runtime).is_dir():
                continue
            driver = open_driver(settings, runtime, sandboxes_dir=directory)
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
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="The `project` setting's namespace, even when a controller is configured.",
        ),
    ] = False,
) -> None:
    """Write an image to an OCI archive.

    From this host's store (a node's: the controller's images are on its nodes); skopeo, umoci,
    podman and `hutch image import` read it. With a controller configured, the context's project
    (or --project's) is looked up there, so what `hutch image import/pull` put in it is found.
    """
    settings = config.load()
    if _remote(local):
        project = _project_id(project)
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
