"""Every `hutch` command the README shows, its options and the ones its comments mention, is one
the CLI has: checked against `--help`. Most also run for real, read from the README: running
machines, --dry-run, login/context and images in tests/cli/test_readme_runs.py, the project
commands in tests/cli/test_projects.py, the SDK example in tests/client/test_readme.py; what
cannot run on one machine (the cluster's controller --tls and agent join) is checked here only."""

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from hutch.cli.main import app

README = Path(__file__).parents[2] / "README.md"
OPTION = re.compile(r"(?<![\w./-])(--[a-z][a-z-]*|-[a-zA-Z]{1,3})\b")


def commands() -> list[tuple[list[str], str]]:
    """Each `hutch ...` in the README's sh blocks: its words, and its line's comment."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            code, _, comment = line.partition("  #")
            for part in re.split(r"[;|]", code.rstrip(" \\")):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)  # VAR=value before the command
                if words and words[0] == "hutch":
                    found.append((words[1:], comment))
    return found


def help_of(path: list[str]) -> str | None:
    """`hutch PATH --help`'s text, or None if that is no command. In this process: the same
    text as the console script's (a subprocess each, for over a hundred paths, took ~0.4 s
    apiece; tests/cli/test_main.py runs the binary's help)."""
    ran = CliRunner().invoke(app, [*path, "--help"], env={"NO_COLOR": "1", "TERM": "dumb"})
    return ran.stdout if ran.exit_code == 0 else None


def test_every_readme_command_and_option_exists() -> None:
    listed = commands()
    assert len(listed) > 40
    helps: dict[tuple[str, ...], str | None] = {}
    problems = []
    for words, comment in listed:
        path: list[str] = []
        for word in words[:3]:  # a command, a subcommand of a group, and of a group in it
            if word.startswith("-"):
                break
            key = (*path, word)
            if key not in helps:
                helps[key] = help_of(list(key))
            if helps[key] is None:
                break
            path.append(word)
        if not path:
            problems.append(f"hutch {' '.join(words)}: no such command")
            continue
        text = helps[tuple(path)] or ""
        args = words[: words.index("--")] if "--" in words else words
        options = {w.split("=")[0] for w in args if w.startswith("-")}
        options |= set(OPTION.findall(comment))
        for option in sorted(options):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                problems.append(f"hutch {' '.join(path)}: no option {option}")
    assert not problems, "\n".join(problems)
