"""Real root filesystems and image references, through the real binary against a real `hutch up`
(tests/controller.py): debootstrap-like trees and tarballs (device nodes, FIFOs, symlinks), a
WORKDIR the image lacks, local names, a name nobody has, and removing an image machines use."""

import io
import json
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

from tests.cli.test_machines import C, env, hutch
from tests.controller import BUSYBOX_CONFIG, Controller, controller, registry_with_app
from tests.helpers.cli import Hutch, one_clear_line
from tests.images.ocibuild import write_oci_layout

__all__ = ["controller", "env", "hutch"]  # the fixtures, for the tests here


def debootstrap_like(busybox_rootfs: Path, dest: Path) -> Path:
    """busybox's tree as debootstrap leaves one: device nodes and a FIFO under /dev (and one
    elsewhere), absolute and relative symlinks, a merged /usr."""
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    dev = dest / "dev"
    dev.mkdir(exist_ok=True)
    os.mknod(dev / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(dev / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.mknod(dev / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(dev / "initctl")
    (dest / "run").mkdir(exist_ok=True)
    os.mkfifo(dest / "run" / "pipe")
    os.symlink("/proc/self/fd", dev / "fd")  # as debootstrap makes it: absolute, dangling here
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc" / "os-release").write_text("ID=debian-ish\n")
    os.symlink("../etc/os-release", dest / "usr-os-release")
    return dest


def test_a_root_directory_with_devices_fifos_and_symlinks_imports_and_runs(
    hutch: Hutch, tmp_path: Path, busybox_rootfs: Path
) -> None:
    tree = debootstrap_like(busybox_rootfs, tmp_path / "deb")
    imported = hutch("image", "import", str(tree), "--name", "deb-py:1")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("sha256:")
    lines = imported.stderr.splitlines()
    assert [line for line in lines if "device node" in line] == [
        f"hutch: left out 5 device nodes and FIFOs of {tree}: the sandbox provides /dev"
    ]
    assert "hutch: imported deb-py:1 (" in imported.stderr  # the name as given
    assert "docker.io" not in imported.stderr
    assert "deb-py:1" in hutch("image", "ls").stdout
    ran = hutch("run", "--rm", *C, "deb-py:1", "--", "sh", "-c", "cat /usr-os-release; ls /dev")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("ID=debian-ish\n") and "null" in ran.stdout  # the sandbox's


def test_a_root_filesystem_tarball_imports_from_a_file_and_stdin(
    hutch: Hutch, env: dict[str, str], tmp_path: Path, busybox_rootfs: Path
) -> None:
    tree = debootstrap_like(busybox_rootfs, tmp_path / "deb")
    tarball = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:  # as `tar -C tree -czf rootfs.tar.gz .` does
        tar.add(tree, arcname=".")
    imported = hutch("image", "import", str(tarball), "--name", "deb:file")
    assert imported.returncode == 0, imported.stderr
    assert "left out 5 device nodes and FIFOs" in imported.stderr
    with tarball.open("rb") as stdin:
        piped = hutch("image", "import", "-", "--name", "deb:stdin", stdin=stdin)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == imported.stdout  # the same tree, the same image
    ran = hutch("run", "--rm", *C, "deb:stdin", "--", "cat", "/usr-os-release")
    assert (ran.returncode, ran.stdout) == (0, "ID=debian-ish\n"), ran.stderr


def test_a_hostile_tarball_is_still_refused(hutch: Hutch, tmp_path: Path) -> None:
    tarball = tmp_path / "evil.tar"
    with tarfile.open(tarball, "w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    refused = hutch("image", "import", str(tarball), "--name", "evil:1")
    assert refused.returncode == 125
    assert "'..'" in one_clear_line(refused.stderr.split("\n", 1)[1])  # after "packing ..."
    assert "evil" not in hutch("image", "ls").stdout


def test_an_image_whose_layer_has_device_nodes_runs(
    hutch: Hutch, tmp_path: Path, busybox_rootfs: Path
) -> None:
    """An image made elsewhere (`docker import` of a debootstrap tree keeps /dev's nodes)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name, kind in (("dev/null", tarfile.CHRTYPE), ("dev/initctl", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.devmajor, info.devminor = kind, 1, 3
            tar.addfile(info)
    write_oci_layout(tmp_path / "img", [busybox_rootfs, layer.getvalue()], BUSYBOX_CONFIG)
    assert hutch("image", "import", str(tmp_path / "img"), "--name", "devs:1").returncode == 0
    for runtime in ("container", "microvm"):
        ran = hutch("run", "--rm", "--runtime", runtime, "devs:1", "--", "echo", "up")
        assert (ran.returncode, ran.stdout) == (0, "up\n"), (runtime, ran.stderr)


@pytest.mark.parametrize("runtime", ["container", "microvm"])
def test_a_missing_workdir_is_created(
    hutch: Hutch, tmp_path: Path, busybox_rootfs: Path, runtime: str
) -> None:
    ran = hutch("run", "--rm", "--runtime", runtime, "-w", "/srv/new/dir", "busybox", "--", "pwd")
    assert (ran.returncode, ran.stdout) == (0, "/srv/new/dir\n"), ran.stderr
    config = {**BUSYBOX_CONFIG, "WorkingDir": "/app", "Cmd": ["sh", "-c", "pwd; ls -ld ."]}
    write_oci_layout(tmp_path / "img", [busybox_rootfs], config)
    assert hutch("image", "import", str(tmp_path / "img"), "--name", "wd:1").returncode == 0
    ran = hutch("run", "--rm", "--runtime", runtime, "wd:1")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("/app\ndrwxr-xr-x") and " root " in ran.stdout


def test_exec_in_a_missing_directory_still_fails(hutch: Hutch) -> None:
    started = hutch("run", "-d", *C, "--name", "w", "busybox", "--", "sleep", "600")
    assert started.returncode == 0, started.stderr
    ran = hutch("exec", "-w", "/no/such", "w", "--", "pwd")  # as docker exec: not made
    assert ran.returncode != 0 and "/no/such" in ran.stderr


def test_a_name_nobody_has_is_a_404_and_makes_no_machine(hutch: Hutch) -> None:
    for typo in ("busybx", "team/app:1"):
        result = hutch("run", *C, typo)
        assert result.returncode == 125
        line = one_clear_line(result.stderr)
        assert f"no image {typo!r} in project" in line and "hutch image ls" in line, line
    assert hutch("ps", "-a", "-q").stdout == ""


def test_a_reference_naming_a_registry_is_still_pulled(
    hutch: Hutch, controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with registry_with_app(controller, tmp_path, busybox_rootfs) as ref:
        ran = hutch("run", "--rm", *C, ref)
    assert (ran.returncode, ran.stdout) == (0, "app\n"), ran.stderr


def test_an_image_machines_use_is_not_removed_unless_forced(
    hutch: Hutch, tmp_path: Path, busybox_rootfs: Path
) -> None:
    config = {**BUSYBOX_CONFIG, "Cmd": ["sleep", "600"]}  # not the catalogue's busybox
    write_oci_layout(tmp_path / "img", [busybox_rootfs], config)
    imported = hutch("image", "import", str(tmp_path / "img"), "--name", "app:1")
    assert imported.returncode == 0, imported.stderr
    started = hutch("run", "-d", *C, "--name", "web", "app:1")
    assert started.returncode == 0, started.stderr
    for _ in range(300):  # `run -d` returns before the node has taken it up
        if json.loads(hutch("inspect", "web").stdout)["state"] == "running":
            break
        time.sleep(0.1)
    refused = hutch("image", "rm", "app:1")
    assert refused.returncode == 125
    line = one_clear_line(refused.stderr)
    assert "used by machine web" in line and "--force" in line
    assert "app:1" in hutch("image", "ls").stdout
    forced = hutch("image", "rm", "--force", "app:1")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == imported.stdout
    assert "machines web use" in forced.stderr
    assert "app:1" not in hutch("image", "ls").stdout
    # Once its machine is gone, an image goes without --force.
    assert hutch("image", "import", str(tmp_path / "img"), "--name", "app:1").returncode == 0
    assert hutch("rm", "-f", "web").returncode == 0
    assert hutch("image", "rm", "app:1").returncode == 0
