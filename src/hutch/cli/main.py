"""`hutch`: the command line entry point. Errors are one line on stderr and a non-zero exit.

Each command's module is imported when that command runs, not before: `hutch ps` loads the
client and the listing, never the servers, the images or the other commands, and `hutch --help`
and `hutch version` load none (bench/cli.py measures it). Nor does a command import pydantic
to read its options (typer before 0.27 does not: pyproject.toml) or httpx's own command line
(see main). The table below is the listing of `hutch --help`; tests/cli/test_main.py checks it
against the commands themselves."""

import contextlib
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import typer
from typer import _click as click  # typer vendors click: its types, not a second click
from typer.core import TyperGroup

from hutch import __version__
from hutch.model.errors import HutchError

HUTCH_ERROR_EXIT = 125  # like docker: the workload's own codes stay unambiguous
# How the CLI gives what a refusal asks for: its words, not the API's `?project=NAME`.
CLI_WORDS = {"project": "--project NAME or set HUTCH_PROJECT"}
_NO_INTERSPERSED = {"allow_interspersed_args": False}  # options end at IMAGE or after --


@dataclass(frozen=True)
class Entry:
    """A command of `hutch`: where it is (module of hutch.cli, attribute: a function or a Typer
    of subcommands), its line in `hutch --help`, and its click settings."""

    module: str
    attribute: str
    help: str
    settings: dict[str, Any] = field(default_factory=dict)


COMMANDS: dict[str, Entry] = {
    "setup": Entry("setup", "setup", "Build the guest, fetch the dashboard's packages (cached)."),
    "up": Entry("serve", "up", "Run a controller and a node agent on this machine."),
    "down": Entry("serve", "down", "Stop a `hutch up -d`."),
    "controller": Entry("serve", "controller", "Run the controller: the API, the scheduler."),
    "agent": Entry("serve", "agent", "Run a node agent: join the controller, run machines."),
    "run": Entry(
        "machines",
        "run",
        "Run an image in a new machine (a micro-VM of its own).",
        {"context_settings": _NO_INTERSPERSED, "epilog": "RUN_EXAMPLES"},
    ),
    "ps": Entry("machines", "ps", "List the project's machines (-a: destroyed ones too)."),
    "logs": Entry("machines", "logs", "Print a machine's output."),
    "stats": Entry("stats", "stats", "Show machines' CPU, memory, disk and network use, live."),
    "exec": Entry(
        "machines",
        "exec_",
        "Run a command in a running machine.",
        {"context_settings": _NO_INTERSPERSED},
    ),
    "stop": Entry("machines", "stop", "Stop machines gracefully."),
    "start": Entry("machines", "start", "Start stopped or ended machines again."),
    "restart": Entry("machines", "restart", "Restart machines (stop them, then start them)."),
    "suspend": Entry("machines", "suspend", "Suspend micro-VMs: saved on their node, no CPU/RAM."),
    "resume": Entry("machines", "resume", "Resume suspended machines where they were."),
    "kill": Entry("machines", "kill", "Send a signal to machines."),
    "rm": Entry("machines", "rm", "Destroy machines (and what they left on their node)."),
    "wait": Entry("machines", "wait", "Wait for machines to end; print exit codes."),
    "inspect": Entry("machines", "inspect", "Show a machine, as JSON."),
    "machine": Entry("machines", "machine_app", "A machine's lifetime: extend."),
    "login": Entry("contexts", "login", "Log in to a controller (saves a context)."),
    "version": Entry("main", "version", "Print hutch's version."),
    "sandbox": Entry("sandbox", "app", "Run sandboxes directly on this host, no controller."),
    "image": Entry("image", "app", "Images: pull, import, list, remove, export."),
    "project": Entry("projects", "project_app", "Projects: the tenants."),
    "token": Entry("projects", "token_app", "A project's API tokens: create, ls, revoke."),
    "quota": Entry("projects", "quota_app", "A project's quota and usage: show, set."),
    "node": Entry("nodes", "app", "Nodes: the hosts that run machines."),
    "network": Entry("networks", "network_app", "Networks: a project's private networks."),
    "sg": Entry("networks", "sg_app", "Security groups: named rules attached to machines."),
    "volume": Entry("volumes", "app", "Volumes: persistent disks, snapshots, forks, backups."),
    "snapshot": Entry("snapshots", "app", "Machine snapshots: create, ls, rm (run --from one)."),
    "pool": Entry("pools", "app", "Warm pools: micro-VMs kept ready for hutch run: set, ls, rm."),
    "usage": Entry("billing", "usage", "What a project used: summed, by machine, label or day."),
    "invoice": Entry("billing", "invoice_app", "A project's invoices: ls, show, credit."),
    "price": Entry("billing", "price_app", "The price book: show, set (system token)."),
    "budget": Entry("billing", "budget_app", "A project's budget: show, set, rm."),
    "context": Entry("contexts", "app", "Saved controllers and tokens (contexts): ls, use, rm."),
}


def load(name: str) -> click.Command:
    """The click command `hutch NAME`, its module imported now."""
    entry = COMMANDS[name]
    module = importlib.import_module(f"hutch.cli.{entry.module}")
    target = getattr(module, entry.attribute)
    if isinstance(target, typer.Typer):
        _plain(target)
        command = typer.main.get_command(target)
        command.name = name
    else:
        settings = dict(entry.settings)
        if "epilog" in settings:
            settings["epilog"] = getattr(module, settings["epilog"])
        one = typer.Typer(
            add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
        )
        one.command(name, **settings)(target)
        command = typer.main.get_command(one)
    return command


def _plain(app: typer.Typer) -> None:
    """Plain help text and tracebacks, as the top level's, for `app` and its subgroups, and no
    shell-completion options (only the top level could install them)."""
    app._add_completion = False
    app.rich_markup_mode = None
    app.pretty_exceptions_enable = False
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _plain(group.typer_instance)


@contextlib.contextmanager
def _usage_is_a_refusal() -> Iterator[None]:
    """A usage error (a missing argument, an unknown option or command, an option without its
    value) is a refusal like any other: one line on stderr, exit 125 (as Docker's), naming the
    help that shows the command's usage. A group run bare still prints its help."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.exceptions.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "hutch"
        raise UsageRefused(f"{e.format_message().rstrip('.')}. See '{where} --help'") from None


class UsageRefused(HutchError):
    """The command line itself is wrong (a CLI refusal: no HTTP status is ever derived)."""

    status, title = 400, "Usage"


class _Commands(TyperGroup):
    """The top-level group: commands listed from the table, loaded when one runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _usage_is_a_refusal():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_is_a_refusal():  # every command's parsing happens in here
            return super().invoke(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load(cmd_name)
        return self.commands[cmd_name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.help) for name, entry in COMMANDS.items()])


app = typer.Typer(
    name="hutch",
    cls=_Commands,
    help="hutch: run OCI images, each workload in its own lightweight VM.",
    epilog="Start here: `make up` runs a controller and a node on this machine (`hutch up -d`), "
    "imports a busybox image, and runs a first machine; then `hutch run busybox -- echo hi`. "
    "`hutch COMMAND --help` for any command; README.md and docs/ for the rest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """hutch: run OCI images, each workload in its own lightweight VM."""


def version() -> None:
    """Print hutch's version."""
    typer.echo(f"hutch {__version__}")


def main() -> None:
    # httpx imports its own command line (rich, pygments, click: ~30 ms) when click is
    # installed, as it is here for uvicorn; hutch never runs it. httpx then defines a stub.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    # httpcore imports trio (~60 ms) when it is installed, as it is beside selenium for the
    # tests, to support it as an event loop; hutch runs on asyncio alone.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    try:
        app()
    except HutchError as e:
        message = e.message_in(CLI_WORDS)
        if type(e).__name__ == "NoConnection":  # hutch.client's, not imported for this
            message += (
                ". Is it running? `hutch up -d` starts one on this machine; "
                "`hutch context ls` shows the controllers this CLI knows"
            )
        typer.echo(f"hutch: {message}", err=True)
        sys.exit(HUTCH_ERROR_EXIT)
    except KeyboardInterrupt:
        sys.exit(130)
