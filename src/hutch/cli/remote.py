"""What the commands that talk to a controller share: the client, `-o table|json|yaml`,
KEY=VALUE options, progress on stderr. Data goes to stdout, everything else to stderr."""

import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from hutch.model.errors import Invalid

if TYPE_CHECKING:  # imported where used: `hutch ps` needs neither the SDK's models nor YAML
    from hutch.client import AsyncClient, Client

OUTPUTS = ("table", "json", "yaml")
OutputOpt = Annotated[
    str, typer.Option("--output", "-o", help="table (for people), json or yaml (for scripts).")
]
T = TypeVar("T")
Column = tuple[str, Callable[[Any], object]]  # header, and how to get the cell from an item


def connect(project: str | None = None) -> "Client":
    """The client for the configured controller (HUTCH_URL/HUTCH_TOKEN or the context)."""
    from hutch.client.sync import Client  # noqa: PLC0415  (see the imports)

    return Client(project=project)


def connect_async(project: str | None = None) -> "AsyncClient":
    from hutch.client.aio import AsyncClient  # noqa: PLC0415  (see the imports)

    return AsyncClient(project=project)


def progress(message: str) -> None:
    typer.echo(f"hutch: {message}", err=True)


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise Invalid(f"unknown output format {output!r}: use {', '.join(OUTPUTS)}")
    return output


# Fields the API gives as epoch seconds, which the CLI's JSON/YAML gives as ISO 8601 UTC.
TIME_FIELDS = frozenset(
    {"created", "created_at", "started_at", "finished_at", "last_seen", "expires_at", "revoked_at",
     "time"}
)  # fmt: skip


def iso(epoch: float) -> str:
    """'2026-12-03T04:01:02Z' (UTC, to the second)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _times(value: object) -> object:
    """Plain data with every epoch in a time field as ISO 8601 UTC, at any depth."""
    if isinstance(value, dict):
        return {
            k: iso(v)
            if k in TIME_FIELDS and isinstance(v, int | float) and not isinstance(v, bool)
            else _times(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_times(v) for v in value]
    return value


def data(item: object) -> object:
    """An item (a wire model, or plain JSON data) as plain JSON data, its times as ISO 8601
    UTC strings."""
    dump = getattr(item, "model_dump", None)  # a pydantic model's, without importing pydantic
    return _times(dump(mode="json") if dump is not None else item)


def newest_first(items: Iterable[T], created: Callable[[T], float | None]) -> list[T]:
    """A listing in the order people and scripts want it: the newest first."""
    return sorted(items, key=lambda i: created(i) or 0.0, reverse=True)


def dump(value: object, output: str) -> None:
    """`value` (a model, or a list or dict of them) as JSON or YAML on stdout."""
    plain = [data(i) for i in value] if isinstance(value, list) else data(value)
    if output == "yaml":
        import yaml  # noqa: PLC0415  (see the imports)

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


def fields(*names: str) -> list[Column]:
    """Columns of the items' fields as they are, each headed by its name in capitals."""
    return [(name.upper(), attrgetter(name)) for name in names]


def when(name: str, header: str = "CREATED") -> Column:
    """A column of a time field (epoch seconds) as people read it: '3 minutes ago'."""
    return (header, lambda item: ago(getattr(item, name)))


def listed(
    fetch: "Callable[[Client], Iterable[Any]]", columns: Sequence[Column], output: str
) -> None:
    """The API objects `fetch` lists through the configured controller, the newest first (by
    `created_at`), as `emit` shows them."""
    with connect() as client:
        emit(newest_first(fetch(client), attrgetter("created_at")), columns, output)


def show(get: "Callable[[Client], object]", output: str) -> None:
    """The API object `get` fetches through the configured controller, as JSON or YAML."""
    with connect() as client:
        dump(get(client), output)


def act(do: "Callable[[Client], object]", done: str) -> None:
    """One request through the configured controller; then `done` says what it did."""
    with connect() as client:
        do(client)
    progress(done)


def each(do: "Callable[[Client, str], object]", refs: Iterable[str]) -> None:
    """One request per ref through the configured controller, each ref printed once done."""
    with connect() as client:
        for ref in refs:
            do(client, ref)
            typer.echo(ref)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def cut(text: str, width: int = 60) -> str:
    """A long text for a table cell: its first `width` characters, the last one '…'."""
    return text if len(text) <= width else text[: width - 1] + "…"


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
    """A time as people read it in a table: 'just now', '3 minutes ago', 'in 2 days' (or '-')."""
    if epoch is None:
        return "-"
    seconds = epoch - time.time()
    past, seconds = seconds <= 0, abs(seconds)
    if seconds < 10:
        return "just now"
    units = (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60))
    unit, size = next(((u, z) for u, z in units if seconds >= z), ("second", 1))
    n = int(seconds // size)
    span = f"{n} {unit}" + ("" if n == 1 else "s")
    return f"{span} ago" if past else f"in {span}"
