"""`hutch image`, end to end: a real registry, the host's store, then `hutch sandbox run`."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Hutch, one_clear_line
from tests.images.ocibuild import write_oci_layout
from tests.images.registry_server import Registry

APP_CONFIG = {
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo $GREETING from $(pwd) as $(id -un)"],
    "Env": ["GREETING=hello", "PATH=/bin"],
    "WorkingDir": "/home/app",
    "User": "app",
    "ExposedPorts": {"8080/tcp": {}},
    "StopSignal": "SIGINT",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    layout = tmp_path_factory.mktemp("layout") / "app"
    write_oci_layout(layout, [busybox_rootfs], APP_CONFIG, ref="v1")
    reg.push(layout, "v1", "demo/app:1")
    yield reg
    reg.stop()


@pytest.fixture
def env(hutch_env: dict[str, str], registry: Registry) -> dict[str, str]:
    hutch_env["HUTCH_REGISTRIES"] = json.dumps({registry.host: {"insecure": True}})
    return hutch_env


@pytest.fixture
def hutch_r(hutch: Hutch, env: dict[str, str]) -> Hutch:
    return hutch  # the same runner; `env` (which it shares) now knows the registry


def test_pull_then_run_under_both_runtimes(hutch_r: Hutch, registry: Registry) -> None:
    ref = f"{registry.host}/demo/app:1"
    pulled = hutch_r("image", "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    digest = pulled.stdout.strip()
    assert digest.startswith("sha256:") and "pulled" in pulled.stderr
    assert "demo/app:1" in hutch_r("image", "ls").stdout
    for runtime in ("microvm", "container"):
        result = hutch_r("sandbox", "run", "--runtime", runtime, ref)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello from /home/app as app\n"  # the image's config
    override = hutch_r(
        "sandbox", "run", "--runtime", "container", "-u", "root", ref, "--", "id -un"
    )
    assert override.stdout == "root\n"
    again = hutch_r("image", "pull", ref)  # warm: nothing to fetch
    assert again.returncode == 0 and again.stdout.strip() == digest
    assert "fetched" not in again.stderr
    inspect = json.loads(hutch_r("image", "inspect", ref).stdout)
    assert inspect["id"] == digest and inspect["config"]["exposed_ports"] == ["8080/tcp"]
    assert inspect["config"]["stop_signal"] == "SIGINT" and len(inspect["layers"]) == 1


def test_export_rm_import_round_trip(hutch_r: Hutch, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/demo/app:1"
    digest = hutch_r("image", "pull", ref).stdout.strip()
    archive = tmp_path / "app.tar"
    assert hutch_r("image", "export", ref, str(archive)).returncode == 0
    removed = hutch_r("image", "rm", ref)
    assert removed.returncode == 0 and removed.stdout.strip() == digest
    assert "demo/app" not in hutch_r("image", "ls").stdout
    gone = hutch_r("sandbox", "run", ref)
    assert gone.returncode == 125
    assert f"first (hutch image pull --local {ref})" in one_clear_line(gone.stderr)
    imported = hutch_r("image", "import", str(archive))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == digest


def test_import_from_stdin_with_a_name(
    env: dict[str, str], hutch_r: Hutch, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/demo/app:1"
    hutch_r("image", "pull", ref)
    archive = tmp_path / "app.tar"
    hutch_r("image", "export", ref, str(archive))
    with archive.open("rb") as f:
        result = hutch_r("image", "import", "--name", "local/copy:2", "-", stdin=f)
    assert result.returncode == 0, result.stderr
    assert "local/copy:2" in hutch_r("image", "ls").stdout
    run = hutch_r("sandbox", "run", "--runtime", "container", "local/copy:2")
    assert run.stdout == "hello from /home/app as app\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pull", "Bad/Ref"], "is invalid"),
        (["pull", "127.0.0.1:1/nothing:1"], "127.0.0.1:1"),
        (["inspect", "no/such:image"], "no image"),
        (["rm", "no/such:image"], "no image"),
        (["import", "/no/such/file.tar"], "does not exist"),
        (["ls", "-o", "xml"], "unknown output format"),
    ],
)
def test_refusals_are_one_clear_line(hutch_r: Hutch, args: list[str], message: str) -> None:
    result = hutch_r("image", *args)
    assert result.returncode == 125
    assert message in one_clear_line(result.stderr)


def test_pull_with_wrong_credentials(
    hutch: Hutch, hutch_env: dict[str, str], tmp_path: Path, busybox_rootfs: Path
) -> None:
    reg = Registry(tmp_path / "reg", htpasswd={"bob": "right"}).start()
    try:
        layout = tmp_path / "layout"
        write_oci_layout(layout, [busybox_rootfs], APP_CONFIG, ref="v1")
        reg.push(layout, "v1", "private/app:1")
        hutch_env["HUTCH_REGISTRIES"] = json.dumps({reg.host: {"insecure": True}})
        argv = ["image", "pull", "--username", "bob", "--password-stdin"]
        for password, ok in (("wrong", False), ("right", True)):
            result = hutch(*argv, f"{reg.host}/private/app:1", input=f"{password}\n")
            if ok:
                assert result.returncode == 0, result.stderr
            else:
                assert result.returncode == 125
                assert "refused the credentials" in one_clear_line(result.stderr)
    finally:
        reg.stop()


def test_import_a_layout_or_a_root_directory(
    hutch: Hutch, busybox_rootfs: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [busybox_rootfs], APP_CONFIG)
    result = hutch("image", "import", "--name", "local/dir:1", str(layout))
    assert result.returncode == 0, result.stderr
    run = hutch("sandbox", "run", "--runtime", "container", "local/dir:1")
    assert run.stdout == "hello from /home/app as app\n"
    root = hutch("image", "import", "--name", "local/root:1", str(busybox_rootfs))
    assert root.returncode == 0 and root.stdout.startswith("sha256:"), root.stderr
    assert "packing" in root.stderr
    run = hutch("sandbox", "run", "--runtime", "container", "local/root:1", "--", "echo", "hi")
    assert run.stdout == "hi\n", run.stderr
    again = hutch("image", "import", "--name", "local/root:2", str(busybox_rootfs))
    assert again.stdout == root.stdout  # the same tree packs to the same image
