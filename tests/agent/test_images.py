"""The agent's image settings reach the roots it prepares."""

from pathlib import Path

from hutch import config
from hutch.agent.images import roots_for


def test_roots_unpack_in_the_configured_staging_directory(tmp_path: Path) -> None:
    settings = config.load(state_dir=tmp_path / "state", unpack_staging=tmp_path / "shm")
    assert roots_for(settings).staging == tmp_path / "shm"
    assert roots_for(config.load(state_dir=tmp_path / "s2", unpack_staging=None)).staging is None
