"""`hutch volume` through the real binary against a real `hutch up` (its node's LocalBackend),
and the SDK: volumes, snapshots, forks, quotas, export and import; each refusal a clear 4xx
next to the same request allowed."""

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hutch.client import Client
from hutch.client.errors import Conflict, Invalid, NotFound, QuotaExceeded
from tests.controller import Controller, controller, new_project
from tests.helpers.cli import HUTCH, one_clear_line

__all__ = ["controller"]

Run = Callable[..., subprocess.CompletedProcess[str]]
GIB = 1 << 30


@pytest.fixture
def project(controller: Controller) -> str:
    return new_project(controller, "vol")


@pytest.fixture
def hutch(controller: Controller, project: str) -> Run:
    env = {**controller.env, "HUTCH_PROJECT": project}

    def run(*args: str, stdin: bytes | None = None, text: bool = True) -> Any:
        return subprocess.run(
            [HUTCH, *args], capture_output=True, text=text, env=env, timeout=120, check=False,
            input=stdin,
        )  # fmt: skip

    return run


def _fails(r: subprocess.CompletedProcess[str], words: str) -> None:
    assert r.returncode == 125, r.stderr
    assert words in one_clear_line(r.stderr), r.stderr


def test_volumes_from_the_cli(hutch: Run) -> None:
    made = hutch("volume", "create", "db-data", "--size", "1G")
    assert made.returncode == 0, made.stderr
    assert "volume db-data: 1.0 GiB ext4 on node" in made.stderr
    listed = hutch("volume", "ls")
    assert listed.stdout.splitlines()[0].split()[:4] == ["NAME", "ID", "SIZE", "USED"]
    assert "db-data" in listed.stdout and "available" in listed.stdout
    shown = json.loads(hutch("volume", "inspect", "db-data").stdout)
    assert shown["size_bytes"] == GIB and shown["fs"] == "ext4" and shown["node"]
    assert shown["state"] == "available" and shown["machine"] is None
    raw = hutch("volume", "create", "raw", "--size", "64M", "--fs", "none")
    assert raw.returncode == 0, raw.stderr
    # Bad input, each refused in one clear line, beside the same request allowed above.
    for argv, words in (
        (("volume", "create", "db-data", "--size", "1G"), "already has a volume named db-data"),
        (("volume", "create", "v0", "--size", "0"), "more than 0 bytes"),
        (("volume", "create", "v0", "--size", "lots"), "is not a size"),
        (("volume", "create", "v0", "--size", "1G", "--fs", "xfs"), "'ext4' or 'none'"),
        (("volume", "create", "v0", "--size", "1G", "--node", "nowhere"), "no node 'nowhere'"),
        (("volume", "inspect", "nope"), "no volume 'nope'"),
        (("volume", "extend", "db-data", "--size", "512M"), "only grows"),
    ):
        _fails(hutch(*argv), words)
    grown = hutch("volume", "extend", "db-data", "--size", "2Gi")  # Kubernetes' spelling too
    assert grown.returncode == 0, grown.stderr
    assert json.loads(hutch("volume", "inspect", "db-data").stdout)["size_bytes"] == 2 * GIB
    assert hutch("volume", "rm", "db-data").returncode == 0
    assert hutch("volume", "rm", "raw").returncode == 0
    assert "db-data" not in hutch("volume", "ls").stdout
    _fails(hutch("volume", "rm", "db-data"), "no volume 'db-data'")


def test_snapshots_forks_and_restore(hutch: Run) -> None:
    assert hutch("volume", "create", "db", "--size", "256M").returncode == 0
    took = hutch("volume", "snapshot", "db", "--name", "before")
    assert took.returncode == 0 and took.stdout.strip() == "before", took.stderr
    assert hutch("volume", "snapshot", "db").returncode == 0  # named from the time
    listed = hutch("volume", "snapshot", "ls", "db").stdout
    assert "before" in listed and len(listed.splitlines()) == 3
    _fails(hutch("volume", "snapshot", "db", "--name", "before"), "snapshot named 'before'")
    forked = hutch("volume", "create", "preview", "--from", "db@before")
    assert forked.returncode == 0, forked.stderr
    fork = json.loads(hutch("volume", "inspect", "preview").stdout)
    db = json.loads(hutch("volume", "inspect", "db").stdout)
    assert fork["node"] == db["node"] and fork["size_bytes"] == db["size_bytes"]
    live = hutch("volume", "create", "now", "--from", "db", "--size", "512M")
    assert live.returncode == 0, live.stderr
    _fails(hutch("volume", "create", "x", "--from", "db@nope"), "no snapshot 'nope'")
    _fails(hutch("volume", "create", "x", "--from", "db", "--size", "128M"), "at least as large")
    assert hutch("volume", "restore", "db", "before").returncode == 0
    _fails(hutch("volume", "restore", "db", "nope"), "no snapshot 'nope'")
    assert hutch("volume", "snapshot", "rm", "db", "before").returncode == 0
    assert "before" not in hutch("volume", "snapshot", "ls", "db").stdout
    for name in ("preview", "now", "db"):
        assert hutch("volume", "rm", name).returncode == 0


def test_another_projects_volume_is_not_found(controller: Controller, project: str) -> None:
    other = new_project(controller, "vol")
    with controller.client(project) as mine, controller.client(other) as theirs:
        v = mine.volumes.create("private", "64M")
        assert mine.volumes.get(v.id).name == "private"
        for ref in ("private", v.id):
            with pytest.raises(NotFound):
                theirs.volumes.get(ref)
            with pytest.raises(NotFound):
                theirs.volumes.delete(ref)
            with pytest.raises(NotFound):
                theirs.volumes.snapshot(ref)
        # The same name is another project's own.
        theirs.volumes.create("private", "64M")
        theirs.volumes.delete("private")
        mine.volumes.delete("private")


def test_quotas_bound_volumes_and_snapshots(
    controller: Controller, project: str, hutch: Run
) -> None:
    set_ = hutch("quota", "set", project, "--volumes", "1", "--snapshots", "1")
    assert set_.returncode == 0, set_.stderr
    with controller.client(project) as client:
        client.volumes.create("a", "768M")
        with pytest.raises(QuotaExceeded, match="volume_gib"):
            client.volumes.create("b", "512M")
        client.volumes.create("b", "256M")  # what is left fits
        with pytest.raises(QuotaExceeded, match="volume_gib"):
            client.volumes.create("c", source="b")  # a fork counts too
        with pytest.raises(QuotaExceeded, match="volume_gib"):
            client.volumes.extend("b", "512M")
        client.volumes.snapshot("a", "s1")
        with pytest.raises(QuotaExceeded, match="snapshot_gib"):
            client.volumes.snapshot("a", "s2")
        client.volumes.snapshot("b", "s1")  # 768M + 256M: within 1 GiB
        report = client.projects.quota(project)
        assert report.quota.volume_gib == 1 and report.usage.volume_gib == 1.0
        assert report.usage.snapshot_gib == 1.0
    shown = hutch("quota", "show", project).stdout
    assert "volumes" in shown and "snapshots" in shown
    with controller.client(project) as client:
        for name in ("a", "b"):
            client.volumes.delete(name)


def test_export_and_import_stream_through_the_controller(
    controller: Controller, project: str, hutch: Run, tmp_path: Path
) -> None:
    with controller.client(project) as client:
        client.volumes.create("src", "64M")
    image = tmp_path / "src.hvol"
    with image.open("wb") as out:
        r = subprocess.run(
            [HUTCH, "volume", "export", "src"], stdout=out, stderr=subprocess.PIPE,
            env={**controller.env, "HUTCH_PROJECT": project}, timeout=120, check=False,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = image.read_bytes()
    assert data.startswith(b"HUTCHVOL") and len(data) < 64 << 20  # sparse: data only
    made = hutch("volume", "import", "copy", stdin=data, text=False)
    assert made.returncode == 0, made.stderr
    with controller.client(project) as client:
        copy = client.volumes.get("copy")
        assert copy.size_bytes == 64 << 20 and copy.fs == "ext4"
        assert b"".join(client.volumes.export("copy")) == data
        # A damaged image is refused by the node as it arrives, and leaves no volume.
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0xFF
        with pytest.raises(Invalid, match="corrupted"):
            client.volumes.import_("bad", _file(tmp_path, bad))
        assert "bad" not in [v.name for v in client.volumes.list()]
    # Beyond the project's volume quota: refused (by what is left of it), beside the import
    # above that fitted.
    assert hutch("quota", "set", project, "--volumes", "1").returncode == 0
    with controller.client(project) as client:
        client.volumes.create("big", "896M")  # 64M + 64M + 896M: the whole GiB
        with pytest.raises(QuotaExceeded, match="volume_gib"):
            client.volumes.import_("over", _file(tmp_path, data))
        assert "over" not in [v.name for v in client.volumes.list()]
        for name in ("src", "copy", "big"):
            client.volumes.delete(name)


def _file(tmp: Path, data: bytes | bytearray) -> Path:
    path = tmp / "image.hvol"
    path.write_bytes(bytes(data))
    return path


def test_the_sdk_refuses_a_deleted_volume_in_use_with_conflict(
    controller: Controller, project: str
) -> None:
    with Client(controller.url, controller.token, project=project) as client:
        client.volumes.create("busy", "64M")
        with pytest.raises(Conflict):
            client.volumes.create("busy", "64M")
        client.volumes.delete("busy")
