"""`hutch sandbox`, as an operator uses it: real micro-VMs and containers on this host."""

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import Hutch, one_clear_line
from tests.images.ocibuild import write_oci_layout


def test_run_streams_output_and_exits_with_the_workloads_code(
    hutch: Hutch, busybox_rootfs: Path
) -> None:
    script = "echo to-out; echo to-err >&2; exit 7"
    result = hutch("sandbox", "run", str(busybox_rootfs), "--", "/bin/sh", "-c", script)
    assert result.returncode == 7, result.stderr
    assert result.stdout == "to-out\n"
    assert result.stderr == "to-err\n"


def test_env_workdir_and_user_by_name(hutch: Hutch, busybox_rootfs: Path) -> None:
    result = hutch(
        "sandbox", "run", "--runtime", "container", "-e", "WHO=operator", "-w", "/home/app",
        "-u", "app", "--memory", "64M", str(busybox_rootfs),
        "--", "/bin/sh", "-c", "echo $WHO; pwd; id -u",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["operator", "/home/app", "1000"]


def test_image_config_supplies_defaults_and_flags_win(
    hutch: Hutch, busybox_rootfs: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    config = {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo $GREETING from $(pwd) as $(id -un)"],
        "Env": ["GREETING=hello", "PATH=/bin"],
        "WorkingDir": "/home/app",
        "User": "app",
    }
    write_oci_layout(layout, [busybox_rootfs], config)
    for runtime in ("microvm", "container"):
        result = hutch("sandbox", "run", "--runtime", runtime, str(layout))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello from /home/app as app\n"
    result = hutch(
        "sandbox", "run", "--runtime", "container", "-e", "GREETING=hi", "-u", "root",
        str(layout), "--", "echo $GREETING as $(id -un)",
    )  # fmt: skip
    assert result.stdout == "hi as root\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "lots"], "not a size"),
        (["--memory", "0"], "memory must be positive"),
        (["--memory", "100T"], "more than this host"),
        (["--runtime", "firecracker"], "unknown runtime"),
        (["-u", "nosuchuser"], "nosuchuser"),
        (["-e", "NOEQUALS"], "KEY=VALUE"),
    ],
)
def test_bad_requests_are_one_clear_line(
    hutch: Hutch, busybox_rootfs: Path, args: list[str], message: str
) -> None:
    result = hutch("sandbox", "run", *args, str(busybox_rootfs), "--", "/bin/true")
    assert result.returncode == 125
    line = one_clear_line(result.stderr)
    assert line.startswith("hutch: ") and message in line


def test_a_missing_root_is_a_clear_error(hutch: Hutch) -> None:
    result = hutch("sandbox", "run", "/no/such/rootfs", "--", "/bin/true")
    assert result.returncode == 125
    assert "/no/such/rootfs" in one_clear_line(result.stderr)


def test_an_unknown_command_exits_127_with_the_reason(hutch: Hutch, busybox_rootfs: Path) -> None:
    result = hutch("sandbox", "run", "--runtime", "container", str(busybox_rootfs), "--", "nope")
    assert result.returncode == 127
    assert "nope" in result.stderr and "No such file" in result.stderr


def test_ctrl_c_stops_the_workload_gracefully(hutch: Hutch, busybox_rootfs: Path) -> None:
    script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done"
    proc = hutch.start(
        "sandbox", "run", str(busybox_rootfs), "--", "/bin/sh", "-c", script,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 42, err
    assert out == "got-term\n"


def test_keep_ls_and_rm(hutch: Hutch, busybox_rootfs: Path) -> None:
    result = hutch(
        "sandbox", "run", "--runtime", "container", "--keep", "--name", "kept",
        str(busybox_rootfs), "--", "/bin/true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listing = hutch("sandbox", "ls", "-a")
    assert "kept" in listing.stdout and "exited" in listing.stdout
    assert "kept" not in hutch("sandbox", "ls").stdout  # only live ones by default
    assert hutch("sandbox", "rm", "kept").stdout == "kept\n"
    assert "kept" not in hutch("sandbox", "ls", "-a").stdout
    assert hutch("sandbox", "rm", "kept").returncode == 0  # already gone: nothing to do


def test_help_makes_sense(hutch: Hutch) -> None:
    top = hutch("--help")
    assert top.returncode == 0
    for command in ("sandbox", "setup", "version"):
        assert command in top.stdout
    run_help = hutch("sandbox", "run", "--help")
    assert "--runtime" in run_help.stdout and "ROOTFS" in run_help.stdout
    assert hutch("version").stdout.startswith("hutch ")
    assert hutch("sandbox", "frobnicate").returncode == 125  # a usage error is a refusal


def test_setup_reports_the_guest_and_accelerator(hutch: Hutch) -> None:
    result = hutch("setup")
    assert result.returncode == 0, result.stderr
    assert "guest kernel" in result.stdout and "accelerator" in result.stdout


def test_ls_and_rm_see_a_sandbox_another_process_runs(hutch: Hutch, busybox_rootfs: Path) -> None:
    proc = hutch.start(
        "sandbox", "run", "--runtime", "container", "--name", "busy",
        str(busybox_rootfs), "--", "/bin/sh", "-c", "echo up; sleep 600",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    ls = hutch("sandbox", "ls")
    listing = ls.stdout
    assert "busy" in listing and "running" in listing, ls.stderr
    refused = hutch("sandbox", "rm", "busy")
    assert refused.returncode == 125
    assert "watched by hutch process" in one_clear_line(refused.stderr)
    assert hutch("sandbox", "rm", "-f", "busy").returncode == 0
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "failed" in err  # its watcher saw it die, and said so
    assert "busy" not in hutch("sandbox", "ls", "-a").stdout


def _ext4(path: Path, mib: int = 32) -> Path:
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(path)], check=True)
    return path


@pytest.mark.parametrize("runtime", ["microvm", "container"])
def test_a_volume_keeps_data_between_runs_and_ro_refuses_writes(
    hutch: Hutch, busybox_rootfs: Path, tmp_path: Path, runtime: str
) -> None:
    data, other = _ext4(tmp_path / "data.ext4"), _ext4(tmp_path / "other.ext4")
    root = str(busybox_rootfs)
    first = hutch(
        "sandbox", "run", "--runtime", runtime, "-v", f"{data}:/data", root,
        "--", "/bin/sh", "-c", "echo hello > /data/greeting",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = hutch(
        "sandbox", "run", "--runtime", runtime, "-v", f"{data}:/data:ro", "-v", f"{other}:/rw",
        root, "--", "/bin/sh", "-c", "cat /data/greeting; echo x > /data/y; echo y > /rw/y && "
        "echo rw-ok",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert second.stdout == "hello\nrw-ok\n"
    assert "Read-only file system" in second.stderr


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ("{dir}/nope.ext4:/data", "nope.ext4 does not exist"),
        ("{dir}:/data", "is not a file"),
        ("{file}:data", "volume path 'data' is invalid"),
        ("{file}:/", "volume path '/' is invalid"),
        ("{file}:/data/../etc", "volume path '/data/../etc' is invalid"),
        ("{file}:/data:rx", "unknown option"),
    ],
)
def test_bad_volumes_are_one_clear_line(
    hutch: Hutch, busybox_rootfs: Path, tmp_path: Path, volume: str, message: str
) -> None:
    file = tmp_path / "v.ext4"
    file.write_bytes(b"")
    arg = volume.format(dir=tmp_path, file=file)
    result = hutch("sandbox", "run", "-v", arg, str(busybox_rootfs), "--", "/bin/true")
    assert result.returncode == 125
    line = one_clear_line(result.stderr)
    assert line.startswith("hutch: ") and message in line, line


@pytest.mark.parametrize("runtime", ["microvm", "container"])
def test_a_volume_path_through_an_image_symlink_stays_inside_the_image(
    hutch: Hutch, busybox_rootfs: Path, tmp_path: Path, runtime: str
) -> None:
    """An image whose /data is a symlink (absolute, or climbing past its root) puts a volume
    named at /data where the symlink leads inside the image, in both runtimes. The guest agent
    resolved it against the initramfs instead: the volume went onto the initramfs's /mnt, out
    of the workload's sight, and /data showed the image's empty /mnt."""
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    (rootfs / "mnt").mkdir(exist_ok=True)
    (rootfs / "data").symlink_to("/mnt")
    (rootfs / "srv").mkdir(exist_ok=True)
    (rootfs / "up").symlink_to("/../../../srv")
    content = tmp_path / "content"
    content.mkdir()
    (content / "greeting").write_text("hello from the volume\n")
    volumes = []
    for name in ("a", "b"):
        image = tmp_path / f"{name}.img"
        subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
        volumes.append(str(image))
    script = "cat /data/greeting /mnt/greeting /up/greeting /srv/greeting"
    result = hutch(
        "sandbox", "run", "--runtime", runtime, "-v", f"{volumes[0]}:/data",
        "-v", f"{volumes[1]}:/up", str(rootfs), "--", "/bin/sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the volume\n" * 4
