"""`hutch stats`: machines' CPU, memory, disk and network use, refreshing in place (like
`docker stats`), from their metric history (`GET /v1/machines/{id}/metrics`)."""

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hutch.cli.remote import OutputOpt, check_output, connect, dump, emit
from hutch.model.metrics import rate
from hutch.model.units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.table import Table

    from hutch.client import Client

WINDOW = 120.0  # seconds of history read: the newest two points give the CPU rate

Refs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[MACHINE...]", help="Machine ids or names (default: every running one)."
    ),
]


def stats(
    refs: Refs = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Print once instead of refreshing.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.5)] = 2.0,
    output: OutputOpt = "table",
) -> None:
    """Show machines' CPU, memory, disk and network use, refreshing in place (-o json: once)."""
    check_output(output)
    with connect() as client:
        if output != "table":
            dump(rows(client, refs), output)
            return
        if no_stream or not sys.stdout.isatty():
            # Plain lines, as every listing prints: whole, however narrow the output; piped,
            # a table every interval (refreshing in place is a terminal's).
            try:
                while True:
                    emit(rows(client, refs), COLUMNS, "table")
                    if no_stream:
                        return
                    time.sleep(interval)
                    typer.echo()
            except KeyboardInterrupt:
                return
        from rich.live import Live  # noqa: PLC0415

        with Live(table(rows(client, refs)), auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(table(rows(client, refs)), refresh=True)
            except KeyboardInterrupt:
                pass


def rows(client: "Client", refs: list[str] | None) -> list[dict[str, Any]]:
    """A row per machine: its newest reading, and its CPU use over the last two points."""
    names = refs or [m.id for m in client.machines.list(state="running")]
    out = []
    for ref in names:
        history = client.machines.metrics(ref, since=time.time() - WINDOW)
        row: dict[str, Any] = {"id": history.machine, "name": history.name, "cpu_percent": None}
        points = history.points
        if points:
            last = points[-1]
            row |= last.model_dump(
                include={
                    "time", "generation", "state", "vcpus", "running_s", "cpu_s",
                    "memory_bytes", "memory_limit_bytes", "rx_bytes", "tx_bytes",
                    "disk_read_bytes", "disk_write_bytes",
                }
            )  # fmt: skip
            used = rate(points[-2], last, "cpu_s") if len(points) > 1 else None
            if used is not None:
                row["cpu_percent"] = round(100 * used, 1)
        out.append(row)
    return out


def _size(a: str, b: str) -> "Callable[[dict[str, Any]], str]":
    return lambda r: f"{format_bytes(r[a])} / {format_bytes(r[b])}" if "time" in r else "-"


# A row without "time" has no sample yet (it just started, or has not run).
COLUMNS: list[tuple[str, "Callable[[dict[str, Any]], str]"]] = [
    ("ID", lambda r: r["id"]),
    ("NAME", lambda r: r["name"]),
    ("CPU %", lambda r: "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}%"),
    ("MEM USAGE / LIMIT", _size("memory_bytes", "memory_limit_bytes")),
    ("NET I/O", _size("rx_bytes", "tx_bytes")),
    ("BLOCK I/O", _size("disk_read_bytes", "disk_write_bytes")),
    ("STATE", lambda r: r.get("state", "-")),
]


def table(rows: list[dict[str, Any]]) -> "Table":
    """The live view's table (refreshed in place on a terminal)."""
    from rich.table import Table  # noqa: PLC0415

    t = Table(box=None, header_style="bold")
    for header, _ in COLUMNS:
        t.add_column(header)
    for r in rows:
        t.add_row(*(get(r) for _, get in COLUMNS))
    return t
