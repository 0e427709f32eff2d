"""Where the CLI and SDK find a controller: explicit arguments, then HUTCH_URL / HUTCH_TOKEN /
HUTCH_PROJECT, then the current context saved by `hutch up` or `hutch login`.

Contexts live in $HUTCH_CLIENT_CONFIG, else $XDG_CONFIG_HOME/hutch/contexts.toml (by default
~/.config/hutch/contexts.toml), mode 0600: they hold tokens.
"""

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hutch.files import write_private
from hutch.model.errors import Invalid


@dataclass(frozen=True, slots=True)
class Context:
    url: str
    token: str
    project: str | None = None  # for system tokens: the project to act in
    # Who saved it, when not the user: `hutch up`'s data directory. A later `hutch up` from the
    # same directory updates its own context and leaves one the user saved under that name alone.
    owner: str | None = None


def config_path() -> Path:
    if explicit := os.environ.get("HUTCH_CLIENT_CONFIG"):
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "hutch" / "contexts.toml"


def load() -> tuple[str | None, dict[str, Context]]:
    """(the current context's name, every context)."""
    path = config_path()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None, {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Invalid(f"{path} is not a valid contexts file: {e}") from None
    contexts = {
        name: Context(
            str(c.get("url", "")), str(c.get("token", "")), c.get("project"), c.get("owner")
        )
        for name, c in doc.get("contexts", {}).items()
        if isinstance(c, dict)
    }
    current = doc.get("current")
    return (current if isinstance(current, str) else None), contexts


def save(current: str | None, contexts: dict[str, Context]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [f"current = {json.dumps(current)}\n"] if current else []
    for name, c in sorted(contexts.items()):
        lines.append(f"\n[contexts.{json.dumps(name)}]\n")
        lines.append(f"url = {json.dumps(c.url)}\ntoken = {json.dumps(c.token)}\n")
        if c.project:
            lines.append(f"project = {json.dumps(c.project)}\n")
        if c.owner:
            lines.append(f"owner = {json.dumps(c.owner)}\n")
    write_private(path, "".join(lines))
    return path


def save_context(name: str, context: Context, *, make_current: bool = True) -> Path:
    current, contexts = load()
    contexts[name] = context
    return save(name if make_current else current, contexts)


def save_owned(name: str, context: Context) -> tuple[bool, str | None]:
    """Save `context` (whose `owner` is set) as `name`, without taking over what is not its
    owner's: (whether it was saved, the current context afterwards).

    A context of that name is replaced only when it has the same owner (or, saved before
    contexts had owners, the same token). The saved context becomes current only when no
    context is; the user's choice of current context is never changed.
    """
    assert context.owner is not None
    current, contexts = load()
    if current not in contexts:
        current = None  # names a context that is gone: nothing is current
    existing = contexts.get(name)
    if existing is not None and existing.owner != context.owner:
        legacy = existing.owner is None and existing.token == context.token
        if not legacy:
            return False, current
    contexts[name] = context
    current = current or name
    save(current, contexts)
    return True, current


def resolve(
    url: str | None = None, token: str | None = None, project: str | None = None
) -> Context:
    """The controller to talk to; Invalid, saying how to get one, when there is none.

    Arguments, then HUTCH_URL/HUTCH_TOKEN/HUTCH_PROJECT, then the current context. A URL given
    leaves the context out; a token given takes only its URL (the context's project is its
    token's, and may mean nothing to another token)."""
    url = url or os.environ.get("HUTCH_URL")
    token = token or os.environ.get("HUTCH_TOKEN")
    project = project or os.environ.get("HUTCH_PROJECT")
    if not url:
        current, contexts = load()
        saved = contexts.get(current) if current else None
        if saved is not None:
            url = saved.url
            if not token:
                token, project = saved.token, project or saved.project
    if not url:
        raise Invalid(
            "no controller configured: start one with `hutch up`, or set HUTCH_URL and "
            "HUTCH_TOKEN, or `hutch login URL`"
        )
    if not token:
        raise Invalid(f"no token for {url}: set HUTCH_TOKEN, or `hutch login {url}`")
    return Context(url.rstrip("/"), token, project)


def configured() -> bool:
    """Whether a controller is configured (the image commands then go through it)."""
    try:
        resolve()
    except Invalid:
        return False
    return True
