"""Where the CLI and SDK find their controller: arguments, the environment, saved contexts."""

import stat
from pathlib import Path

import pytest

from hutch.client.config import (
    Context,
    configured,
    load,
    resolve,
    save_context,
    save_owned,
)
from hutch.model.errors import Invalid


@pytest.fixture(autouse=True)
def contexts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "contexts.toml"
    monkeypatch.setenv("HUTCH_CLIENT_CONFIG", str(path))
    for name in ("HUTCH_URL", "HUTCH_TOKEN", "HUTCH_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_nothing_configured_says_how_to_get_a_controller() -> None:
    with pytest.raises(Invalid, match="hutch up"):
        resolve()
    assert not configured()


def test_saved_contexts_round_trip_private(contexts_file: Path) -> None:
    save_context("local", Context("http://127.0.0.1:8800/", "t1", "p1"))
    save_context("other", Context("http://10.0.0.1", 'to"ken'), make_current=False)
    current, contexts = load()
    assert current == "local"
    assert contexts["other"] == Context("http://10.0.0.1", 'to"ken')
    assert stat.S_IMODE(contexts_file.stat().st_mode) == 0o600
    assert resolve() == Context("http://127.0.0.1:8800", "t1", "p1")


def test_the_environment_overrides_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    save_context("local", Context("http://127.0.0.1:8800", "t1", "p1"))
    monkeypatch.setenv("HUTCH_PROJECT", "p2")
    assert resolve() == Context("http://127.0.0.1:8800", "t1", "p2")
    monkeypatch.setenv("HUTCH_TOKEN", "t2")  # another token: not the context's project
    monkeypatch.delenv("HUTCH_PROJECT")
    assert resolve() == Context("http://127.0.0.1:8800", "t2", None)
    monkeypatch.setenv("HUTCH_URL", "http://127.0.0.1:9900")  # another controller entirely
    assert resolve() == Context("http://127.0.0.1:9900", "t2", None)
    monkeypatch.delenv("HUTCH_TOKEN")
    # A URL without a token: the URL is named, and where a token goes (not "no controller").
    with pytest.raises(Invalid, match=r"no token for http://127.0.0.1:9900: set HUTCH_TOKEN"):
        resolve()
    assert resolve(token="t3", project="p3") == Context("http://127.0.0.1:9900", "t3", "p3")


def test_a_broken_contexts_file_is_named(contexts_file: Path) -> None:
    contexts_file.write_text("current = [")
    with pytest.raises(Invalid, match="not a valid contexts file"):
        resolve()


def test_an_owned_context_takes_over_nothing_of_the_users() -> None:
    up = Context("http://127.0.0.1:7001", "admin", "default", owner="/srv/a")
    # Nothing current: it becomes current.
    assert save_owned("local", up) == (True, "local")
    # Its owner updates it (another port, another token) and it stays current.
    moved = Context("http://127.0.0.1:7002", "admin2", "default", owner="/srv/a")
    assert save_owned("local", moved) == (True, "local")
    assert load() == ("local", {"local": moved})
    # The user chose another context: saving again keeps the user's choice.
    save_context("prod", Context("http://127.0.0.1:9000", "p"))
    assert save_owned("local", moved) == (True, "prod")
    assert load()[0] == "prod"
    # Another owner (another data directory) does not replace it.
    other = Context("http://127.0.0.1:7003", "b", "default", owner="/srv/b")
    assert save_owned("local", other) == (False, "prod")
    # Nor does anyone replace a context the user saved under that name.
    save_context("local", Context("http://127.0.0.1:9100", "mine"), make_current=False)
    assert save_owned("local", moved) == (False, "prod")
    assert load() == (
        "prod",
        {"local": Context("http://127.0.0.1:9100", "mine"),
         "prod": Context("http://127.0.0.1:9000", "p")},
    )  # fmt: skip


def test_a_context_saved_before_owners_is_its_owners_by_its_token() -> None:
    save_context("local", Context("http://127.0.0.1:7001", "admin", "default"))
    up = Context("http://127.0.0.1:7002", "admin", "default", owner="/srv/a")
    assert save_owned("local", up) == (True, "local")
    assert load() == ("local", {"local": up})


def test_a_current_context_that_is_gone_counts_as_none(contexts_file: Path) -> None:
    contexts_file.write_text('current = "gone"\n')
    up = Context("http://127.0.0.1:7001", "admin", owner="/srv/a")
    assert save_owned("local", up) == (True, "local")
