import signal
from pathlib import Path

import pytest

from hutch.agent.sandbox import Roots, RunRequest, build_spec, merge_env
from hutch.model.errors import Invalid
from hutch.model.sandbox import Capabilities, Resources
from tests.images.ocibuild import write_oci_layout

DIR_CAPS = Capabilities(
    runtime="container", isolation="namespaces", root="dir", exec=True, signals=True,
    accel="none", min_memory_mib=16, max_cpus=2, max_memory_mib=1024, overhead_mib=0,
)  # fmt: skip


@pytest.fixture
def layout(busybox_rootfs: Path, tmp_path: Path) -> Path:
    config = {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo default"],
        "Env": ["PATH=/bin", "MODE=image"],
        "WorkingDir": "/home/app",
        "User": "app",
        "StopSignal": "SIGQUIT",
    }
    write_oci_layout(tmp_path / "layout", [busybox_rootfs], config)
    return tmp_path / "layout"


def test_image_config_gives_the_defaults(layout: Path, tmp_path: Path) -> None:
    spec, root = build_spec(RunRequest(image=str(layout)), DIR_CAPS, Roots(tmp_path / "cache"))
    proc = spec.process
    assert proc.args == ("/bin/sh", "-c", "echo default")
    assert proc.cwd == "/home/app"
    assert (proc.user.uid, proc.user.gid) == (1000, 1000)
    assert "MODE=image" in proc.env and "HOME=/" in proc.env
    assert f"HOSTNAME={spec.id}" in proc.env
    assert spec.stop_signal == signal.SIGQUIT
    assert spec.rootfs == str(root.rootfs) and spec.root_disk == ""  # a dir runtime: no disk


def test_the_request_wins(layout: Path, tmp_path: Path) -> None:
    request = RunRequest(
        image=str(layout), command=("echo mine",), env=("MODE=mine",), workdir="/tmp", user="root",
        resources=Resources(memory_mib=64), sandbox_id="mine",
    )  # fmt: skip
    spec, _ = build_spec(request, DIR_CAPS, Roots(tmp_path / "cache"))
    assert spec.process.args == ("/bin/sh", "-c", "echo mine")  # a command replaces Cmd only
    assert "MODE=mine" in spec.process.env and "HOME=/root" in spec.process.env
    assert (spec.process.cwd, spec.process.user.uid, spec.id) == ("/tmp", 0, "mine")
    entry = RunRequest(image=str(layout), entrypoint=("/bin/echo",))
    spec, _ = build_spec(entry, DIR_CAPS, Roots(tmp_path / "cache"))
    assert spec.process.args == ("/bin/echo",)  # a new entrypoint drops the image's Cmd


def test_nothing_to_run_or_unknown_user_is_refused(busybox_rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="no command"):
        build_spec(RunRequest(image=str(busybox_rootfs)), DIR_CAPS, Roots(tmp_path))
    with pytest.raises(Invalid, match="nosuch"):
        build_spec(
            RunRequest(image=str(busybox_rootfs), command=("id",), user="nosuch"),
            DIR_CAPS, Roots(tmp_path),
        )  # fmt: skip


def test_env_layers_merge_by_key() -> None:
    assert merge_env(("A=1", "B=2"), ("B=3",), ("C=4", "A=5")) == ("A=5", "B=3", "C=4")
    with pytest.raises(Invalid):
        merge_env(("BROKEN",))
