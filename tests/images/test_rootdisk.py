import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hutch.images.rootdisk import TreeUsage, build_root_disk, ext4_geometry, tree_usage
from hutch.model.errors import Invalid, Unavailable

T0 = 1_600_000_000


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chown(root / "bin/tool", 1000, 1001)
    os.chmod(root / "bin/tool", 0o4755)
    os.utime(root / "bin/tool", (T0, T0))
    os.link(root / "bin/tool", root / "bin/tool2")
    (root / "etc").mkdir()
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "etc/long").symlink_to("/" + "x" * 100)
    (root / "big").write_bytes(os.urandom(300_000))
    os.chown(root, 5, 6)
    os.chmod(root, 0o751)
    return root


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_erofs_keeps_owners_modes_and_content(tree: Path, tmp_path: Path) -> None:
    need("mkfs.erofs")
    dump = need("dump.erofs")
    out = tmp_path / "disks" / "root.erofs"
    build_root_disk(tree, out)
    assert out.is_file()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    info = run(dump, "--path=/bin/tool", str(out))
    assert re.search(r"Uid: 1000\s+Gid: 1001", info)
    assert "Links: 2" in info  # the hard link is kept
    assert "2020-09-13" in info  # mtime kept
    root_info = run(dump, "--path=/", str(out))
    assert re.search(r"Uid: 5\s+Gid: 6", root_info) and "0751" in root_info
    extracted = tmp_path / "x"
    run(need("fsck.erofs"), f"--extract={extracted}", str(out))
    assert (extracted / "bin/tool").read_bytes() == (tree / "bin/tool").read_bytes()
    assert (extracted / "big").read_bytes() == (tree / "big").read_bytes()
    assert os.readlink(extracted / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert [p.name for p in out.parent.iterdir()] == ["root.erofs"]  # no temp files left


def test_ext4_keeps_owners_modes_and_content(tree: Path, tmp_path: Path) -> None:
    need("mkfs.ext4")
    debugfs = need("debugfs")
    out = tmp_path / "root.ext4"
    build_root_disk(tree, out, "ext4")
    tool = run(debugfs, "-R", "stat /bin/tool", str(out))
    assert "Mode:  04755" in tool
    assert re.search(r"User:\s+1000\s+Group:\s+1001", tool)
    assert "Links: 2" in tool
    root = run(debugfs, "-R", "stat /", str(out))
    assert "Mode:  0751" in root  # mke2fs leaves the root alone; we fix it up
    assert re.search(r"User:\s+5\s+Group:\s+6", root)
    assert run(debugfs, "-R", "cat /bin/tool", str(out)) == "#!/bin/sh\necho hi\n"
    fsck = subprocess.run(
        [need("e2fsck"), "-fn", str(out)], capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_ext4_size_fits_many_small_files(tmp_path: Path) -> None:
    need("mkfs.ext4")
    tree = tmp_path / "tree"
    for d in range(20):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(150):
            (tree / f"d{d}" / f"file-with-a-longish-name-{f}").write_bytes(b"x" * (f * 37))
    out = tmp_path / "many.ext4"
    build_root_disk(tree, out, "ext4")
    usage = tree_usage(tree)
    assert usage.inodes == 20 * 150 + 20 + 1
    assert out.stat().st_size == ext4_geometry(usage)[0]  # fitted first time, no retry


def test_ext4_geometry_has_headroom() -> None:
    size, inodes = ext4_geometry(TreeUsage(blocks=0, inodes=1))
    assert size == 8 << 20 and inodes >= 256
    size, inodes = ext4_geometry(TreeUsage(blocks=100_000, inodes=50_000))
    assert size >= 100_000 * 4096 * 1.2 + 50_000 * 256
    assert inodes >= 60_000
    assert size % (1 << 20) == 0


def test_unknown_format_is_invalid(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="'squashfs' is unknown: use one of erofs, ext4"):
        build_root_disk(tree, tmp_path / "x", "squashfs")


def test_missing_tree_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="is not a directory"):
        build_root_disk(tmp_path / "nope", tmp_path / "x")


def test_missing_tool_is_unavailable(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda *a, **kw: None)
    with pytest.raises(Unavailable, match=r"mkfs\.erofs is not installed: install erofs-utils"):
        build_root_disk(tree, tmp_path / "out" / "x.erofs")
    assert list((tmp_path / "out").iterdir()) == []


def test_tool_failure_is_unavailable_with_its_last_error_line(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "mkfs.erofs"
    fake.write_text("#!/bin/sh\necho 'some noise' >&2\necho 'disk on fire' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    out = tmp_path / "out" / "x.erofs"
    with pytest.raises(Unavailable, match=r"mkfs\.erofs failed: disk on fire"):
        build_root_disk(tree, out)
    assert list(out.parent.iterdir()) == []  # the temporary file is gone
