"""`hutch`: the command line entry point. Errors are one line on stderr and a non-zero exit."""

import sys

import typer

from hutch import __version__
from hutch.cli import contexts, image, machines, nodes, projects, sandbox, serve, setup
from hutch.client.errors import NoConnection
from hutch.model.errors import HutchError

HUTCH_ERROR_EXIT = 125  # like docker: the workload's own codes stay unambiguous

app = typer.Typer(
    name="hutch",
    help="hutch: run OCI images, each workload in its own lightweight VM.",
    epilog="Start here: `hutch up -d` runs a controller and a node on this machine, then "
    "`hutch run busybox -- echo hi` runs a machine. `hutch COMMAND --help` for any command; "
    "README.md and docs/ for the rest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(image.app, name="image")
app.command("setup")(setup.setup)
app.command("up")(serve.up)
app.command("down")(serve.down)
app.command("controller")(serve.controller)
app.command("agent")(serve.agent)
app.command(
    "run", context_settings={"allow_interspersed_args": False}, epilog=machines.RUN_EXAMPLES
)(machines.run)
app.command("ps")(machines.ps)
app.command("logs")(machines.logs)
app.command("exec", context_settings={"allow_interspersed_args": False})(machines.exec_)
app.command("stop")(machines.stop)
app.command("start")(machines.start)
app.command("restart")(machines.restart)
app.command("kill")(machines.kill)
app.command("rm")(machines.rm)
app.command("wait")(machines.wait)
app.command("inspect")(machines.inspect)
app.add_typer(projects.project_app, name="project")
app.add_typer(projects.token_app, name="token")
app.add_typer(projects.quota_app, name="quota")
app.add_typer(nodes.app, name="node")
app.command("login")(contexts.login)
app.add_typer(contexts.app, name="context")


@app.command()
def version() -> None:
    """Print hutch's version."""
    typer.echo(f"hutch {__version__}")


def main() -> None:
    try:
        app()
    except NoConnection as e:
        typer.echo(
            f"hutch: {e.message}. Is it running? `hutch up -d` starts one on this machine; "
            "`hutch context ls` shows the controllers this CLI knows",
            err=True,
        )
        sys.exit(HUTCH_ERROR_EXIT)
    except HutchError as e:
        typer.echo(f"hutch: {e.message}", err=True)
        sys.exit(HUTCH_ERROR_EXIT)
    except KeyboardInterrupt:
        sys.exit(130)
