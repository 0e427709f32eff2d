"""Options that several commands take alike, defined once so that they read the same in each."""

from typing import Annotated

import typer

EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")]
TtyOpt = Annotated[
    bool,
    typer.Option(
        "--tty", "-t", help="Give the command a terminal (with -i: type into it, e.g. a shell)."
    ),
]
# `hutch run` and `hutch sandbox run`: where and as whom the command runs.
WorkdirOpt = Annotated[
    str | None, typer.Option("--workdir", "-w", help="Working directory inside.")
]
UserOpt = Annotated[
    str | None, typer.Option("--user", "-u", help="USER[:GROUP] or UID[:GID] inside.")
]
