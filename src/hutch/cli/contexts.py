"""`hutch login` and `hutch context`: which controller the CLI talks to, as whom.

Contexts live in the file of hutch.client.config (mode 0600: they hold tokens); HUTCH_URL,
HUTCH_TOKEN and HUTCH_PROJECT override the current one.
"""

import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer

from hutch.cli.remote import OutputOpt, emit, progress
from hutch.client import Client, config
from hutch.model.errors import Invalid

LOCAL = "local"  # the context `hutch up` saves

app = typer.Typer(
    help="Saved controllers and tokens (contexts): ls, use, rm.",
    no_args_is_help=True,
)


def login(
    url: Annotated[
        str, typer.Argument(metavar="URL", help="The controller's, e.g. https://hutch.example.com")
    ],
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read the token from stdin (else a prompt).")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Name of the context (default: the URL's host:port).")
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(help="For a system token: the project to act in (default: 'default')."),
    ] = None,
) -> None:
    """Log in to a controller (saves a context).

    The token is checked first; the new context becomes the current one.

    Example: echo "$TOKEN" | hutch login https://hutch.example.com --token-stdin
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise Invalid(f"{url!r} is not a controller URL: use http(s)://HOST[:PORT]")
    if token_stdin:
        token = sys.stdin.readline().strip()
    elif sys.stdin.isatty():
        token = typer.prompt("Token", hide_input=True, err=True).strip()
    else:
        raise Invalid("give the token on stdin with --token-stdin")
    if not token:
        raise Invalid("the token is empty")
    with Client(url, token, project=project) as client:
        projects = [p.name for p in client.projects.list()]  # 401 here if the token is bad
    if project is None and len(projects) == 1:
        project = projects[0]  # a project token's own, or the only one there is
    elif project is None and "default" in projects:
        project = "default"
    context = config.Context(url.rstrip("/"), token, project)
    name = name or parsed.netloc
    path = config.save_context(name, context)
    acting = f"in project {project}" if project else "with no project (use --project)"
    progress(f"logged in to {context.url} {acting}; context {name} saved in {path}")


def save_up_context(url: str, data_dir: Path, project: str) -> None:
    """Save `hutch up`'s context as `local`, and say so when the CLI will not use it.

    A `local` context the user (or another `hutch up`) saved is left alone; `local` becomes the
    current context only when none is (see config.save_owned)."""
    token_file = data_dir.resolve() / "admin-token"
    token = token_file.read_text().strip()
    context = config.Context(url, token, project, owner=str(data_dir.resolve()))
    saved, current = config.save_owned(LOCAL, context)
    if not saved:
        _, contexts = config.load()
        progress(
            f"context {LOCAL} is another controller's ({contexts[LOCAL].url}) and was kept; "
            f"to use this one: hutch login {url} --name NAME --token-stdin < {token_file}"
        )
    elif current != LOCAL:
        progress(
            f"context {LOCAL} saved, but the CLI still uses context {current}: "
            f"switch with `hutch context use {LOCAL}`"
        )


@app.command("ls")
def ls(output: OutputOpt = "table") -> None:
    """List saved contexts (* is the current one).

    Their tokens are not shown.
    """
    current, contexts = config.load()
    rows = [
        {"name": n, "url": c.url, "project": c.project, "current": n == current}
        for n, c in sorted(contexts.items())
    ]
    emit(
        rows,
        [
            ("CURRENT", lambda r: "*" if r["current"] else ""),
            ("NAME", lambda r: r["name"]),
            ("URL", lambda r: r["url"]),
            ("PROJECT", lambda r: r["project"]),
        ],
        output,
    )


def _known(name: str) -> dict[str, config.Context]:
    _, contexts = config.load()
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none yet: `hutch login URL` or `hutch up`"
        raise Invalid(f"no context {name!r} (contexts: {known})")
    return contexts


@app.command("use")
def use(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A context from `hutch context ls`.")],
) -> None:
    """Make a context the current one."""
    config.save(name, _known(name))
    progress(f"now using context {name}")


@app.command("rm")
def rm(names: Annotated[list[str], typer.Argument(metavar="NAME...")]) -> None:
    """Forget contexts (and their tokens)."""
    current, _ = config.load()
    for name in names:
        contexts = _known(name)
        del contexts[name]
        current = None if current == name else current
        config.save(current, contexts)
        typer.echo(name)
