import os
from pathlib import Path

import pytest

from hutch.images.users import resolve_user
from hutch.model.errors import Invalid
from hutch.model.sandbox import User

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin
# a comment
this line is malformed
broken:x:notanumber:1::/:/bin/sh
app:x:1000:1000:App:/home/app:/bin/sh
+::::::
shadowed:x:1000:5::/:/bin/sh
"""
GROUP = """\
root:x:0:root
wheel:x:10:root,app
daemon:x:1:
app:x:1000:
staff:x:50:app,other
bad:x:nan:app
audio:x:63:app
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    return root


@pytest.mark.parametrize(
    ("spec", "user"),
    [
        ("", User(0, 0, (0, 10))),  # as Docker: root gets its groups from /etc/group
        ("root", User(0, 0, (0, 10))),
        ("0", User(0, 0, (0, 10))),
        ("app", User(1000, 1000, (10, 50, 63))),
        ("1000", User(1000, 1000, (10, 50, 63))),  # first passwd entry with the uid wins
        ("daemon", User(1, 1, ())),
        ("4242", User(4242, 0, ())),  # numeric and not in passwd: gid 0, as runc
        ("app:staff", User(1000, 50, ())),  # explicit group: no supplementary groups
        ("app:77", User(1000, 77, ())),
        ("1000:50", User(1000, 50, ())),
        ("4242:4242", User(4242, 4242, ())),
        (":staff", User(0, 50, ())),
    ],
)
def test_resolves_like_runc(rootfs: Path, spec: str, user: User) -> None:
    assert resolve_user(rootfs, spec) == user


def test_unknown_names_are_refused(rootfs: Path) -> None:
    with pytest.raises(Invalid, match="user 'nobody2' is not in the image's /etc/passwd"):
        resolve_user(rootfs, "nobody2")
    with pytest.raises(Invalid, match="group 'nogroup2' is not in the image's /etc/group"):
        resolve_user(rootfs, "app:nogroup2")
    with pytest.raises(Invalid, match="user 'broken' is not"):
        resolve_user(rootfs, "broken")  # its line is malformed, so skipped


def test_malformed_specs_are_refused(rootfs: Path) -> None:
    with pytest.raises(Invalid, match="use name, uid, name:group or uid:gid"):
        resolve_user(rootfs, "a:b:c")
    with pytest.raises(Invalid, match="empty group"):
        resolve_user(rootfs, "app:")
    with pytest.raises(Invalid, match="out of range"):
        resolve_user(rootfs, "99999999999")


def test_image_without_passwd(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "") == User(0, 0)
    assert resolve_user(tmp_path, "1000") == User(1000, 0)
    assert resolve_user(tmp_path, "1000:1000") == User(1000, 1000)
    with pytest.raises(Invalid, match="image has no /etc/passwd"):
        resolve_user(tmp_path, "app")


def test_absolute_symlinks_resolve_inside_the_root(rootfs: Path) -> None:
    (rootfs / "usr/lib").mkdir(parents=True)
    (rootfs / "etc/passwd").rename(rootfs / "usr/lib/passwd")
    (rootfs / "etc/passwd").symlink_to("/usr/lib/passwd")
    assert resolve_user(rootfs, "app") == User(1000, 1000, (10, 50, 63))


def test_symlinks_to_host_files_read_the_image_copy(rootfs: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("hostonly:x:7:7::/:/bin/sh\n")
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").symlink_to(host / "passwd")  # absolute host path
    with pytest.raises(Invalid, match="'hostonly' is not in the image's /etc/passwd"):
        resolve_user(rootfs, "hostonly")
    # The same path inside the image is what counts.
    inside = rootfs / str(host / "passwd").lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("imageuser:x:8:8::/:/bin/sh\n")
    assert resolve_user(rootfs, "imageuser") == User(8, 8)


def test_dotdot_cannot_climb_out_of_the_root(rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("hostonly:x:7:7::/:/bin/sh\n")
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").symlink_to("../../../../../../passwd")
    with pytest.raises(Invalid, match="the image has no /etc/passwd"):
        resolve_user(rootfs, "hostonly")


def test_symlinked_etc_directory_is_resolved_inside(rootfs: Path, tmp_path: Path) -> None:
    host_etc = tmp_path / "hostetc"
    host_etc.mkdir()
    (host_etc / "passwd").write_text("hostonly:x:7:7::/:/bin/sh\n")
    (rootfs / "etc").rename(rootfs / "real-etc")
    (rootfs / "etc").symlink_to(host_etc)
    with pytest.raises(Invalid, match="no /etc/passwd"):
        resolve_user(rootfs, "hostonly")
    (rootfs / "etc").unlink()
    (rootfs / "etc").symlink_to("/real-etc")
    assert resolve_user(rootfs, "app") == User(1000, 1000, (10, 50, 63))


def test_symlink_loops_are_refused(rootfs: Path) -> None:
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(Invalid, match="symlink loop"):
        resolve_user(rootfs, "app")


def test_special_files_are_not_read(rootfs: Path) -> None:
    (rootfs / "etc/passwd").unlink()
    os.mkfifo(rootfs / "etc/passwd")  # reading it would block forever
    with pytest.raises(Invalid, match="not in the image's /etc/passwd"):
        resolve_user(rootfs, "app")
    assert resolve_user(rootfs, "1000") == User(1000, 0)
