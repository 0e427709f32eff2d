"""Metering benchmark: what telemetry, metering and billing cost (issue 15). Each part is a
function that returns its figures; `main` runs them and prints one JSON object as its last line.

Part 3, `invoicing`: the seconds to close (price and store) the invoice of one project with
10,000 machines over a 30-day month, its ledger holding an hourly row per machine (7.2 million
rows: what the meter's records of 10 s samples come to once hours are summed; more rows per
hour only make the sums longer, not the invoice's work different), the machines' labels in 10
sets, the price book with a plan, included amounts and a label's override. On SQLite, the
controller's own store (migrated, WAL), rows written in bulk through its table.

    .venv/bin/python -m bench.metering [--machines N] [--days D]
"""

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hutch import config
from hutch.controller import build_controller
from hutch.model.prices import PriceBook
from hutch.model.tenancy import Project, Quota
from hutch.store import tables as t

MACHINES = 10_000
DAYS = 30
CHUNK = 50_000  # rows per executemany
BOOK = {
    "currency": "EUR",
    "plan": "basic",
    "rates": {"vcpu_seconds": "0.02", "cpu_seconds": "0.01", "memory_gib_seconds": "0.003",
              "storage_gib_hours": "0.0001", "egress_bytes": "0.05", "starts": "0.001"},
    "plans": {"basic": {"included": {"vcpu_seconds": "1000"}, "fee": "5"}},
    "labels": {"tier=t3": {"vcpu_seconds": "0.01"}},
}  # fmt: skip


def _rows(project_id: str, start: float, machines: int, hours: int) -> Any:
    """The ledger's rows, an hour of every machine at a time (as a meter appends them)."""
    for h in range(hours):
        at = start + h * 3600
        for m in range(machines):
            yield {
                "key": f"m:{m}:1:{h}", "project_id": project_id, "machine_id": f"m-{m}",
                "subject": f"m-{m}", "labels": {"app": f"a{m % 100}", "tier": f"t{m % 10}"},
                "start": at, "end": at + 3600, "vcpu_seconds": Decimal(3600),
                "cpu_seconds": Decimal("123.456789"), "memory_gib_seconds": Decimal(900),
                "storage_gib_hours": Decimal("1.25"), "egress_bytes": 1 << 20,
                "starts": 1 if h == 0 else 0,
            }  # fmt: skip


def _fill(url: str, project_id: str, start: float, machines: int, hours: int) -> int:
    engine = sa.create_engine(url)
    written = 0
    chunk: list[dict[str, Any]] = []
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA synchronous=OFF")  # a bench's fill, not what it measures
        for row in _rows(project_id, start, machines, hours):
            chunk.append(row)
            if len(chunk) == CHUNK:
                conn.execute(t.usage.insert(), chunk)
                written += len(chunk)
                chunk = []
        if chunk:
            conn.execute(t.usage.insert(), chunk)
            written += len(chunk)
    engine.dispose()
    return written


async def _invoice(state: Path, machines: int, days: int) -> dict[str, float]:
    settings = config.load(state_dir=state, controller_secret="c" * 32, join_secret="j" * 32)
    ctl = build_controller(settings)
    await ctl.store.open()
    # A month of `days` days (November 2026 has 30) and the project made at its start.
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    end = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    project = Project("p-bench", "bench", start, Quota())
    async with ctl.store.write() as tx:
        await tx.projects.create(project)
    await ctl.billing.set_book(None, PriceBook.parse(BOOK))
    url = f"sqlite:///{state / 'controller.db'}"
    began = time.perf_counter()
    rows = await asyncio.to_thread(_fill, url, project.id, start, machines, days * 24)
    filled = time.perf_counter() - began
    began = time.perf_counter()
    closed = await ctl.billing.close_due(end + 1)
    seconds = time.perf_counter() - began
    async with ctl.store.read() as tx:
        [invoice] = await tx.billing.invoices(project.id, 1)
    await ctl.store.close()
    assert closed == 1 and invoice.total == sum(line.amount for line in invoice.lines)
    print(f"invoicing: {rows} ledger rows ({filled:.1f} s to write), invoice of "
          f"{len(invoice.lines)} lines, total {invoice.total} {invoice.currency}: "
          f"{seconds:.2f} s", file=sys.stderr)  # fmt: skip
    return {
        "invoice_machines": machines,
        "invoice_ledger_rows": rows,
        "invoice_seconds_sqlite": round(seconds, 3),
    }


def invoicing(machines: int = MACHINES, days: int = DAYS) -> dict[str, float]:
    """Part 3 (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="hbi", dir="/var/tmp") as tmp:
        return asyncio.run(_invoice(Path(tmp), machines, days))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=MACHINES, help="machines of the invoice")
    parser.add_argument("--days", type=int, default=DAYS, help="days of ledger (at most 30)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    figures: dict[str, float] = {}
    figures |= invoicing(args.machines, min(args.days, 30))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
