"""`make test` runs two pytest sessions side by side over two lists of test paths: together
they must hold every test, each once, or a test would silently never run."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def listed(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    found = re.search(rf"^{name} = (.*)$", text, re.M)
    assert found, f"{name} is not in the Makefile"
    return found.group(1).split()


def test_the_two_runs_hold_every_test_once() -> None:
    paths = listed("TESTS_GUESTS") + listed("TESTS_REST")
    assert len(paths) == len(set(paths)), paths
    tests = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").iterdir()
        if (p.is_dir() and any(p.glob("test_*.py"))) or re.match(r"test_.*\.py$", p.name)
    }
    assert tests == set(paths)


def test_make_up_says_where_the_dashboard_is() -> None:
    text = (ROOT / "Makefile").read_text()
    up = text[text.index("\nup:") : text.index("\ndown:")]
    assert "http://127.0.0.1:$(PORT)/ui" in up
