from pathlib import Path

import pytest

from hutch import config
from hutch.agent.runtimes import RUNTIMES, open_driver
from hutch.model.errors import Invalid
from tests.helpers import CACHE_DIR


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_each_runtime_opens_from_settings(runtime: str, short_dir: Path) -> None:
    driver = open_driver(config.load(state_dir=short_dir, cache_dir=CACHE_DIR), runtime)
    assert driver.name == runtime
    assert driver.capabilities().runtime == runtime
    assert (short_dir / "sandboxes" / runtime).is_dir()
    await driver.close()


def test_unknown_runtime_is_refused(short_dir: Path) -> None:
    with pytest.raises(Invalid, match="unknown runtime"):
        open_driver(config.load(state_dir=short_dir, cache_dir=CACHE_DIR), "docker")


def test_container_uids_may_not_overlap_vm_uids(short_dir: Path) -> None:
    settings = config.load(
        state_dir=short_dir, cache_dir=CACHE_DIR, vm_uid_base=100_000, container_uid_base=99_000
    )
    with pytest.raises(Invalid, match="set it to 165536 or more"):
        open_driver(settings, "container")
    # without user namespaces, containers take no uids at all
    driver = open_driver(settings.model_copy(update={"container_userns": False}), "container")
    assert driver.fingerprint()["userns"] == "off"
