"""`hutch`: the command line entry point. Errors are one line on stderr and a non-zero exit."""

import sys

import typer

from hutch import __version__
from hutch.cli import image, sandbox, setup
from hutch.model.errors import HutchError

HUTCH_ERROR_EXIT = 125  # like docker: the workload's own codes stay unambiguous

app = typer.Typer(
    name="hutch",
    help="hutch: run OCI images, each workload in its own lightweight VM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(image.app, name="image")
app.command("setup")(setup.setup)


@app.command()
def version() -> None:
    """Print hutch's version."""
    typer.echo(f"hutch {__version__}")


def main() -> None:
    try:
        app()
    except HutchError as e:
        typer.echo(f"hutch: {e.message}", err=True)
        sys.exit(HUTCH_ERROR_EXIT)
    except KeyboardInterrupt:
        sys.exit(130)
