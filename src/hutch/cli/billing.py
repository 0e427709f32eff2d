"""`hutch usage`, `hutch invoice`, `hutch price`, `hutch budget`: what projects used, what it
costs, and the limits a provider sets."""

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from hutch.cli.remote import OutputOpt, check_output, connect, dump, emit, iso, progress
from hutch.model.errors import Invalid

invoice_app = typer.Typer(help="A project's invoices: ls, show, credit.", no_args_is_help=True)
price_app = typer.Typer(help="The price book: show, set (system token).", no_args_is_help=True)
budget_app = typer.Typer(help="A project's budget: show, set, rm.", no_args_is_help=True)

ProjectOpt = Annotated[
    str | None,
    typer.Option("--project", "-p", help="Project (default: the context's, or the token's)."),
]
ProjectArg = Annotated[str, typer.Argument(metavar="PROJECT", help="The project's name.")]
WHEN = "epoch seconds or an ISO 8601 date/time (UTC), e.g. 2026-12-01"


def usage(
    project: ProjectOpt = None,
    since: Annotated[str | None, typer.Option(help=f"From: {WHEN}.")] = None,
    until: Annotated[str | None, typer.Option(help=f"Before: {WHEN}.")] = None,
    by: Annotated[
        str | None, typer.Option(help="machine, label or day (default: one sum).")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or csv.")] = "table",
) -> None:
    """Show what the project used (the usage ledger), summed or per machine, label or day.

    vCPU-seconds are what was given (vCPUs x seconds running), CPU-seconds what was used,
    memory in GiB x seconds, storage in GiB x hours, egress in bytes; a record counts in the
    period its start is in. Machines' use comes in with their nodes' samples (every
    sample_interval, 10 s), storage once each storage_interval (1 h) is over: the newest is
    not in yet. docs/metering.md says what each counts.

    \b
    hutch usage --since 2026-12-01 --by day
    hutch usage -p acme --by label -o csv > acme.csv
    """
    if by not in (None, "machine", "label", "day"):
        raise Invalid(f"--by {by!r}: use machine, label or day")
    if output not in ("table", "json", "csv"):
        raise Invalid(f"--output {output!r}: use table, json or csv")
    with connect(project) as client:
        if output == "csv":
            typer.echo(client.usage.csv(since, until, by), nl=False)
            return
        view = client.usage.get(since, until, by)
    if output == "json":
        dump(view, "json")
        return
    columns = [
        ("GROUP" if by else "PROJECT", lambda r: r.group or (view.project if not by else "-")),
        ("VCPU-SECONDS", lambda r: r.vcpu_seconds),
        ("CPU-SECONDS", lambda r: r.cpu_seconds),
        ("MEMORY GIB-S", lambda r: r.memory_gib_seconds),
        ("STORAGE GIB-H", lambda r: r.storage_gib_hours),
        ("EGRESS BYTES", lambda r: r.egress_bytes),
        ("STARTS", lambda r: r.starts),
    ]
    emit(view.items, columns, "table")


@invoice_app.command("ls")
def invoice_ls(project: ProjectOpt = None, output: OutputOpt = "table") -> None:
    """List the project's invoices: the current period's draft (open), then the closed ones,
    newest first."""
    with connect(project) as client:
        invoices = [client.invoices.get("draft"), *client.invoices.list()]
    columns = [
        ("ID", lambda i: i.id),
        ("PERIOD", lambda i: f"{iso(i.period_start)[:10]} .. {iso(i.period_end)[:10]}"),
        ("STATE", lambda i: i.state),
        ("TOTAL", lambda i: f"{i.total} {i.currency}"),
    ]
    emit(invoices, columns, output)


@invoice_app.command("show")
def invoice_show(
    ref: Annotated[str, typer.Argument(metavar="INVOICE", help="An invoice's id, or draft.")],
    project: ProjectOpt = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write the invoice as a page to print here.")
    ] = None,
    output: OutputOpt = "table",
) -> None:
    """Show an invoice's lines (quantity x unit price = amount) and total; `draft` is the
    current period's, still open.

    \b
    hutch invoice show draft
    hutch invoice show in_... --html invoice.html
    """
    check_output(output)
    with connect(project) as client:
        invoice = client.invoices.get(ref)
        if html is not None:
            html.write_text(client.invoices.html(invoice.id))
            progress(f"wrote {html}")
    if output != "table":
        dump(invoice, output)
        return
    typer.echo(f"invoice {invoice.id}  project {invoice.project}  {invoice.state}")
    typer.echo(f"period {iso(invoice.period_start)} .. {iso(invoice.period_end)}\n")
    columns = [
        ("ITEM", lambda x: x.description),
        ("QUANTITY", lambda x: x.quantity),
        ("UNIT PRICE", lambda x: x.unit_price),
        ("AMOUNT", lambda x: x.amount),
    ]
    emit(invoice.lines, columns, "table")
    typer.echo(f"\ntotal {invoice.total} {invoice.currency}")


@invoice_app.command("credit")
def invoice_credit(
    project: ProjectArg,
    amount: Annotated[str, typer.Argument(metavar="AMOUNT", help="A decimal, e.g. 12.50.")],
    reason: Annotated[str, typer.Argument(metavar="REASON", help="Why: printed on the line.")],
) -> None:
    """Grant a credit (system token): a credit line on the project's next closed invoice (a
    closed invoice never changes)."""
    with connect() as client:
        credit = client.invoices.credit(project, amount, reason)
    progress(f"credit of {credit.amount} for {project}: on its next invoice")
    typer.echo(credit.id)


@price_app.command("show")
def price_show(project: ProjectOpt = None, output: OutputOpt = "json") -> None:
    """Show the project's effective prices (a system token without --project: the whole
    book), as JSON or YAML."""
    check_output(output)
    with connect(project) as client:
        dump(client.prices.get(), "yaml" if output == "yaml" else "json")


@price_app.command("set")
def price_set(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A TOML price book.")],
) -> None:
    """Replace the price book with FILE's (system token); see docs/billing.md for its shape.

    \b
    hutch price set prices.toml
    """
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"), parse_float=Decimal)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise Invalid(f"{file}: {e}") from None
    with connect() as client:
        client.prices.set(_strings(doc.get("prices", doc)))
    progress(f"prices set from {file}")


def _strings(value: Any) -> Any:
    """A TOML document with its numbers as decimal strings, as the API takes prices."""
    if isinstance(value, dict):
        return {k: _strings(v) for k, v in value.items()}
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return str(value)
    return value


@budget_app.command("show")
def budget_show(
    project: Annotated[
        str | None,
        typer.Argument(
            metavar="[PROJECT]", help="The project's name (default: the context's, or the token's)."
        ),
    ] = None,
    output: OutputOpt = "json",
) -> None:
    """Show the project's budget: its amount per period, whether it stops the project's
    machines, and the threshold announced this period."""
    check_output(output)
    with connect() as client:
        dump(client.prices.budget(project), "yaml" if output == "yaml" else "json")


@budget_app.command("set")
def budget_set(
    project: ProjectArg,
    amount: Annotated[str, typer.Argument(metavar="AMOUNT", help="Per period, e.g. 100.")],
    stop: Annotated[bool, typer.Option(help="At 100 %, stop the project's machines.")] = False,
) -> None:
    """Set a project's budget (system token): the events budget.80 and budget.100 come once
    each a period, as its invoice reaches those shares of AMOUNT; with --stop, its machines
    are stopped at 100 %."""
    with connect() as client:
        client.prices.set_budget(project, amount, stop=stop)
    progress(f"budget of {project}: {amount} a period" + (", stops at 100 %" if stop else ""))


@budget_app.command("rm")
def budget_rm(project: ProjectArg) -> None:
    """Remove the project's budget (system token)."""
    with connect() as client:
        client.prices.delete_budget(project)
    typer.echo(project)
