"""What the commands that talk to a controller share: the client, `-o table|json|yaml`,
KEY=VALUE options, progress on stderr. Data goes to stdout, everything else to stderr."""

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel

from hutch.client import AsyncClient, Client
from hutch.model.errors import Invalid

OUTPUTS = ("table", "json", "yaml")
OutputOpt = Annotated[
    str, typer.Option("--output", "-o", help="table (for people), json or yaml (for scripts).")
]
Column = tuple[str, Callable[[Any], object]]  # header, and how to get the cell from an item


def connect(project: str | None = None) -> Client:
    """The client for the configured controller (HUTCH_URL/HUTCH_TOKEN or the context)."""
    return Client(project=project)


def connect_async(project: str | None = None) -> AsyncClient:
    return AsyncClient(project=project)


def progress(message: str) -> None:
    typer.echo(f"hutch: {message}", err=True)


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise Invalid(f"unknown output format {output!r}: use {', '.join(OUTPUTS)}")
    return output


def data(item: object) -> object:
    """An item as plain JSON data."""
    return item.model_dump(mode="json") if isinstance(item, BaseModel) else item


def dump(value: object, output: str) -> None:
    """`value` (a model, or a list or dict of them) as JSON or YAML on stdout."""
    plain = [data(i) for i in value] if isinstance(value, list) else data(value)
    if output == "yaml":
        typer.echo(yaml.safe_dump(plain, sort_keys=False).rstrip("\n"))
    else:
        typer.echo(json.dumps(plain, indent=2))


def emit(items: Iterable[Any], columns: Sequence[Column], output: str) -> None:
    """A listing: an aligned table with a header, or every item as JSON/YAML."""
    check_output(output)
    items = list(items)
    if output != "table":
        dump(items, output)
        return
    rows = [[header for header, _ in columns]]
    rows += [[_cell(get(item)) for _, get in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """KEY=VALUE options (`-e`, `--label`) as a dict."""
    result: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Invalid(f"{what} {item!r} is not KEY=VALUE")
        result[key] = value
    return result


def ago(epoch: float | None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago' (or '-')."""
    if epoch is None:
        return "-"
    seconds = max(time.time() - epoch, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def when(epoch: float | None) -> str:
    """Local date and time (or '-')."""
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
