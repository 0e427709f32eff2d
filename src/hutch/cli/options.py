"""Options that several commands take alike, defined once so that they read the same in each."""

from typing import Annotated

import typer

EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")]
