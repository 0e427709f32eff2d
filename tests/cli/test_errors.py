"""Refusals through the CLI against a real `hutch up` (tests/controller.py): a node's refusal
keeps its status on the way, and a message names the CLI's way to fix it."""

import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from hutch.client import Unsupported
from tests.controller import BUSYBOX_CONFIG, Controller, controller
from tests.helpers.cli import CLIENT_VARIABLES, Hutch, one_clear_line
from tests.images.ocibuild import write_oci_layout

__all__ = ["controller"]  # the session fixture, for the tests here


def as_system(controller: Controller, **extra: str) -> Hutch:
    """The CLI with the operator's system token in HUTCH_URL and HUTCH_TOKEN, no context, no
    project."""
    env = {k: v for k, v in controller.env.items() if k not in CLIENT_VARIABLES}
    env.update(HUTCH_URL=controller.url, HUTCH_TOKEN=controller.token, **extra)
    return Hutch({**env, "HUTCH_CLIENT_CONFIG": "/nonexistent/contexts.toml"})


@pytest.fixture
def zstd_archive(tmp_path: Path, busybox_rootfs: Path) -> Path:
    """An OCI archive, compressed whole with zstd: a format the nodes do not read (501)."""
    layout = tmp_path / "layout"
    write_oci_layout(layout, [busybox_rootfs], BUSYBOX_CONFIG)
    with tarfile.open(tmp_path / "image.tar", "w") as tar:
        for member in sorted(layout.iterdir()):
            tar.add(member, arcname=member.name)
    subprocess.run(["zstd", "-q", "--rm", str(tmp_path / "image.tar")], check=True)
    return tmp_path / "image.tar.zst"


def test_a_nodes_unsupported_format_stays_501(controller: Controller, zstd_archive: Path) -> None:
    with controller.client("default") as client, pytest.raises(Unsupported) as e:
        client.images.import_(zstd_archive.read_bytes(), names=["zstd:1"])
    assert (e.value.status, e.value.title) == (501, "Not supported")
    assert "zstd-compressed: decompress it first" in e.value.detail
    result = as_system(controller, HUTCH_PROJECT="default")("image", "import", str(zstd_archive))
    assert result.returncode == 125
    assert "zstd-compressed: decompress it first" in one_clear_line(result.stderr)


def test_a_system_token_is_told_the_clis_way_to_name_a_project(
    controller: Controller, busybox_rootfs: Path, tmp_path: Path
) -> None:
    hutch = as_system(controller)
    layout = tmp_path / "layout"
    write_oci_layout(layout, [busybox_rootfs], BUSYBOX_CONFIG)
    refused = hutch("image", "import", str(layout), "--name", "named:1")
    assert refused.returncode == 125
    line = one_clear_line(refused.stderr)
    assert line == (
        "hutch: a system token must name a project: add --project NAME or set HUTCH_PROJECT"
    )
    for named in (["--project", "default"], []):  # the same, with a project named either way
        named_by = as_system(controller, HUTCH_PROJECT="default") if not named else hutch
        ok = named_by("image", "import", str(layout), "--name", "named:1", *named)
        assert ok.returncode == 0, ok.stderr
    with controller.client("default") as client:
        client.images.delete("named:1")
    # The API's own words stay the API's; the problem names the parameter for clients.
    r = httpx.get(
        controller.url + "/v1/images", headers={"Authorization": f"Bearer {controller.token}"}
    )
    assert r.status_code == 400
    assert r.json()["detail"] == "a system token must name a project: add ?project=NAME"
    assert r.json()["param"] == "project"
