"""`hutch stats`: machines' CPU, memory, disk and network use, refreshing in place (like
`docker stats`), from their metric history (`GET /v1/machines/{id}/metrics`)."""

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hutch.cli.remote import OutputOpt, check_output, connect, dump
from hutch.model.units import format_bytes

if TYPE_CHECKING:
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
        if no_stream:
            from rich.console import Console  # noqa: PLC0415  (loaded when it prints)

            Console().print(table(rows(client, refs)))
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
            before = [p for p in points[:-1] if p.generation == last.generation]
            if before and last.time > before[-1].time:
                used = last.cpu_s - before[-1].cpu_s
                row["cpu_percent"] = round(100 * used / (last.time - before[-1].time), 1)
        out.append(row)
    return out


def table(rows: list[dict[str, Any]]) -> "Table":
    from rich.table import Table  # noqa: PLC0415

    t = Table(box=None, header_style="bold")
    for header in ("ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "NET I/O", "BLOCK I/O", "STATE"):
        t.add_column(header)
    for r in rows:
        if "time" not in r:  # no sample yet (it just started, or has not run)
            t.add_row(r["id"], r["name"], "-", "-", "-", "-", "-")
            continue
        cpu = "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}%"
        t.add_row(
            r["id"],
            r["name"],
            cpu,
            f"{format_bytes(r['memory_bytes'])} / {format_bytes(r['memory_limit_bytes'])}",
            f"{format_bytes(r['rx_bytes'])} / {format_bytes(r['tx_bytes'])}",
            f"{format_bytes(r['disk_read_bytes'])} / {format_bytes(r['disk_write_bytes'])}",
            r["state"],
        )
    return t
