import re
from pathlib import Path

import pytest

from hutch import config
from hutch.model.errors import Invalid


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "hutch.toml"
    toml.write_text('state_dir = "/srv/hutch"\nlog_max_bytes = "2M"\naccel = "tcg"\n')
    monkeypatch.setenv("HUTCH_CONFIG", str(toml))
    settings = config.load()
    assert settings.state_dir == Path("/srv/hutch")
    assert settings.log_max_bytes == 2 << 20
    monkeypatch.setenv("HUTCH_ACCEL", "kvm")
    assert config.load().accel == "kvm"  # environment over file
    assert config.load(accel="auto").accel == "auto"  # explicit over both


def test_bad_settings_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(Invalid, match="accel"):
        config.load(accel="warp")
    with pytest.raises(Invalid, match="boot_timeout"):
        config.load(boot_timeout=0)
    (tmp_path / "bad.toml").write_text("no_such_setting = 1\n")
    monkeypatch.setenv("HUTCH_CONFIG", str(tmp_path / "bad.toml"))
    with pytest.raises(Invalid, match="no_such_setting"):
        config.load()


def test_machine_retention_is_a_duration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_CONFIG", str(tmp_path / "missing.toml"))
    assert config.load().machine_retention == 7 * 86400  # a week by default
    monkeypatch.setenv("HUTCH_MACHINE_RETENTION", "2h")
    assert config.load().machine_retention == 7200
    assert config.load(machine_retention=90).machine_retention == 90
    with pytest.raises(Invalid, match=r"machine_retention.*'soon' is not a duration"):
        config.load(machine_retention="soon")
    with pytest.raises(Invalid, match="machine_retention"):
        config.load(machine_retention=0)


def test_the_readme_lists_every_setting() -> None:
    """A setting the README's Configuration table leaves out is one nobody learns to set (the
    metering and billing ones were named in prose, never said how to set)."""
    section = (
        (Path(__file__).parent.parent / "README.md").read_text().split("\n## Configuration\n")[1]
    )
    table = section.split("\n## ", 1)[0]
    listed = {
        name
        for row in re.findall(r"^\| (`.*?) \|", table, re.M)
        for name in re.findall(r"`(\w+)`", row)
    }
    assert set(config.Settings.model_fields) - listed == set()
    assert listed - set(config.Settings.model_fields) == set()
