import errno
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hutch.images.unpack import Budget, apply_layer
from hutch.model.errors import Invalid

T0 = 1_600_000_000  # a fixed mtime


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: float = T0,
    link: str = "",
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = pax
    return info, data


def directory(name: str, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    kw.setdefault("mode", 0o755)
    return entry(name, tarfile.DIRTYPE, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)  # type: ignore[arg-type]


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, link=target)


def layer(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def apply(
    root: Path, *members: tuple[tarfile.TarInfo, bytes], budget: Budget | None = None
) -> None:
    apply_layer(layer(*members), root, budget=budget or Budget(1 << 30))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("host secret\n")
    return tmp_path / "root"


def assert_outside_untouched(root: Path) -> None:
    base = root.parent
    assert sorted(os.listdir(base)) == ["host", "outside", "root"]
    assert os.listdir(base / "outside") == []
    assert os.listdir(base / "host") == ["secret"]
    assert (base / "host" / "secret").read_text() == "host secret\n"


# -- ordinary layers ----------------------------------------------------------------------------


def test_files_dirs_symlinks_with_modes_owners_and_times(root: Path) -> None:
    apply(
        root,
        directory("etc", mode=0o750, uid=7, gid=8, mtime=T0 + 1),
        entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", mode=0o600, uid=7, gid=8),
        entry("usr/bin/su", data=b"#!su", mode=0o4755, uid=0, gid=0, mtime=T0 + 2),
        symlink("etc/localtime", "/usr/share/zoneinfo/UTC", uid=3, gid=4, mtime=T0 + 3),
        entry("empty", mode=0o000),
    )
    etc = os.lstat(root / "etc")
    assert stat.S_ISDIR(etc.st_mode) and stat.S_IMODE(etc.st_mode) == 0o750
    assert (etc.st_uid, etc.st_gid, etc.st_mtime) == (7, 8, T0 + 1)  # kept despite children

    passwd = os.lstat(root / "etc/passwd")
    assert (root / "etc/passwd").read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
    assert (stat.S_IMODE(passwd.st_mode), passwd.st_uid, passwd.st_gid) == (0o600, 7, 8)
    assert passwd.st_mtime == T0

    su = os.lstat(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755  # setuid kept
    assert su.st_mtime == T0 + 2

    link = os.lstat(root / "etc/localtime")
    assert stat.S_ISLNK(link.st_mode)
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert (link.st_uid, link.st_gid, link.st_mtime) == (3, 4, T0 + 3)

    assert stat.S_IMODE(os.lstat(root / "empty").st_mode) == 0
    # Missing parents are made as root:root 0755.
    usr = os.lstat(root / "usr")
    assert (stat.S_IMODE(usr.st_mode), usr.st_uid, usr.st_gid) == (0o755, 0, 0)


def test_root_entry_sets_root_metadata(root: Path) -> None:
    apply(root, directory("./", mode=0o751, uid=5, gid=6, mtime=T0), entry("./a", data=b"x"))
    st = os.lstat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o751, 5, 6, T0)
    assert (root / "a").read_bytes() == b"x"


def test_root_cannot_be_replaced_by_a_file(root: Path) -> None:
    with pytest.raises(Invalid, match="replace the root"):
        apply(root, entry(".", data=b"x"))


def test_later_entries_and_layers_replace_earlier_ones(root: Path) -> None:
    apply(
        root,
        entry("a", data=b"old"),
        directory("d"),
        entry("d/inner", data=b"x"),
        entry("f", data=b"file"),
        entry("s", data=b"file"),
    )
    apply(
        root,
        entry("a", data=b"new", mode=0o600),
        entry("d", data=b"now a file"),  # a file replaces a directory and its contents
        directory("f"),  # a directory replaces a file
        symlink("s", "a"),  # a symlink replaces a file
    )
    assert (root / "a").read_bytes() == b"new"
    assert stat.S_IMODE(os.lstat(root / "a").st_mode) == 0o600
    assert (root / "d").read_bytes() == b"now a file"
    assert (root / "f").is_dir()
    assert os.readlink(root / "s") == "a"


def test_directories_merge_across_layers(root: Path) -> None:
    apply(root, directory("d", mode=0o700), entry("d/lower", data=b"1"))
    apply(root, directory("d", mode=0o755, uid=9, mtime=T0 + 9), entry("d/upper", data=b"2"))
    assert sorted(os.listdir(root / "d")) == ["lower", "upper"]
    st = os.lstat(root / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o755, 9, T0 + 9)


def test_hard_links_within_and_across_layers(root: Path) -> None:
    apply(root, entry("bin/busybox", data=b"bb", mode=0o755), hardlink("bin/sh", "bin/busybox"))
    apply(root, hardlink("bin/ls", "./bin/busybox"))
    ids = {os.lstat(root / "bin" / n).st_ino for n in ("busybox", "sh", "ls")}
    assert len(ids) == 1
    assert os.lstat(root / "bin/busybox").st_nlink == 3
    # Replacing one name gives it a new file; the other links keep the old content.
    apply(root, entry("bin/sh", data=b"dash"))
    assert (root / "bin/busybox").read_bytes() == b"bb"
    assert (root / "bin/sh").read_bytes() == b"dash"


def test_hard_link_to_a_symlink_links_the_symlink(root: Path) -> None:
    apply(root, symlink("l", "/etc/passwd"), hardlink("l2", "l"))
    assert os.readlink(root / "l2") == "/etc/passwd"
    assert os.lstat(root / "l").st_ino == os.lstat(root / "l2").st_ino


def test_whiteouts_remove_lower_files_and_directories(root: Path) -> None:
    apply(
        root,
        entry("keep", data=b"k"),
        entry("gone", data=b"g"),
        entry("tree/a/b", data=b"b"),
        symlink("link", "/keep"),
    )
    apply(root, entry(".wh.gone"), entry(".wh.tree"), entry(".wh.link"), entry(".wh.absent"))
    assert sorted(os.listdir(root)) == ["keep"]


def test_whiteout_spares_files_of_its_own_layer(root: Path) -> None:
    apply(root, entry("x", data=b"lower"))
    apply(root, entry("x", data=b"same layer"), entry(".wh.x"))
    assert (root / "x").read_bytes() == b"same layer"


def test_opaque_directory_hides_lower_contents_only(root: Path) -> None:
    apply(
        root,
        entry("d/old", data=b"o"),
        entry("d/sub/old", data=b"o"),
        entry("other/keep", data=b"k"),
    )
    apply(
        root,
        directory("d"),
        entry("d/early", data=b"e"),  # before the marker: still this layer's
        directory("d/sub"),  # merges with the lower d/sub, whose contents are lower too
        entry("d/.wh..wh..opq"),
        entry("d/sub/new", data=b"n"),
    )
    assert sorted(os.listdir(root / "d")) == ["early", "sub"]
    assert os.listdir(root / "d/sub") == ["new"]
    assert os.listdir(root / "other") == ["keep"]
    assert not (root / "d/.wh..wh..opq").exists()


def test_other_aufs_metadata_is_ignored(root: Path) -> None:
    apply(root, entry(".wh..wh.plnk/1234"), entry(".wh..wh.aufs"), entry("a", data=b"a"))
    assert os.listdir(root) == ["a"]


def test_extended_attributes_are_kept(root: Path) -> None:
    try:
        os.setxattr(root, "user.probe", b"1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("file system without user xattrs")
        raise
    apply(root, entry("f", data=b"x", pax={"SCHILY.xattr.user.note": "hello"}))
    assert os.getxattr(root / "f", "user.note") == b"hello"


# -- hostile layers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "/", "//x"])
def test_absolute_names_are_refused(root: Path, name: str) -> None:
    with pytest.raises(Invalid, match="absolute path"):
        apply(root, entry(name, data=b"x"))
    assert os.listdir(root) == []
    assert_outside_untouched(root)


@pytest.mark.parametrize("name", ["../outside/x", "a/../../outside/x", "a/b/../../.."])
def test_dotdot_is_refused(root: Path, name: str) -> None:
    with pytest.raises(Invalid, match=r"contains '\.\.'"):
        apply(root, entry(name, data=b"x"))
    assert_outside_untouched(root)


def test_writing_through_a_symlink_of_the_same_layer_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="'evil', which is a symlink"):
        apply(root, symlink("evil", "../outside"), entry("evil/x", data=b"pwned"))
    assert_outside_untouched(root)


def test_writing_through_an_absolute_symlink_is_refused(root: Path) -> None:
    outside = str(root.parent / "outside")
    with pytest.raises(Invalid, match="symlink"):
        apply(root, symlink("evil", outside), entry("evil/x", data=b"pwned"))
    with pytest.raises(Invalid, match="symlink"):
        apply(root, directory("evil/sub"))
    assert_outside_untouched(root)


def test_writing_through_a_symlink_of_a_lower_layer_is_refused(root: Path) -> None:
    apply(root, directory("a"), symlink("a/up", "../../outside"), symlink("etc", "/etc"))
    with pytest.raises(Invalid, match="'a/up', which is a symlink"):
        apply(root, entry("a/up/x", data=b"pwned"))
    with pytest.raises(Invalid, match="'etc', which is a symlink"):
        apply(root, entry("etc/passwd", data=b"pwned"))
    with pytest.raises(Invalid, match="symlink"):
        apply(root, symlink("a/up/link", "/"))
    with pytest.raises(Invalid, match="symlink"):
        apply(root, hardlink("a/up/hl", "etc"))
    assert_outside_untouched(root)


def test_symlink_chains_are_not_followed(root: Path) -> None:
    with pytest.raises(Invalid, match="symlink"):
        apply(root, symlink("b", "../outside"), symlink("a", "b"), entry("a/x", data=b"x"))
    assert_outside_untouched(root)


def test_whiteouts_through_symlinks_are_refused(root: Path) -> None:
    host = str(root.parent / "host")
    apply(root, symlink("evil", host))
    with pytest.raises(Invalid, match="symlink"):
        apply(root, entry("evil/.wh.secret"))
    with pytest.raises(Invalid, match="symlink"):
        apply(root, entry("evil/.wh..wh..opq"))
    assert_outside_untouched(root)


def test_replacing_a_symlink_never_writes_through_it(root: Path) -> None:
    outside = root.parent / "outside"
    apply(root, symlink("f", str(outside / "f")), symlink("d", str(outside)))
    apply(root, entry("f", data=b"inside"), directory("d"), entry("d/x", data=b"inside"))
    assert (root / "f").read_bytes() == b"inside"
    assert (root / "d").is_dir() and not (root / "d").is_symlink()
    assert (root / "d/x").read_bytes() == b"inside"
    assert_outside_untouched(root)


def test_writing_below_a_file_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="'a', which is not a directory"):
        apply(root, entry("a", data=b"x"), entry("a/b", data=b"y"))


def test_hard_link_to_an_absolute_path_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="relative path inside the image"):
        apply(root, hardlink("passwd", "/etc/passwd"))
    assert not (root / "passwd").exists()
    assert_outside_untouched(root)


def test_hard_link_with_dotdot_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match=r"contains '\.\.'"):
        apply(root, hardlink("stolen", "../host/secret"))
    assert os.listdir(root) == []
    assert_outside_untouched(root)


def test_hard_link_through_a_symlink_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="'evil', which is a symlink"):
        apply(root, symlink("evil", str(root.parent / "host")), hardlink("stolen", "evil/secret"))
    assert not (root / "stolen").exists()
    assert_outside_untouched(root)


def test_hard_link_to_a_missing_target_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="does not exist in the image"):
        apply(root, hardlink("x", "nothing"))
    with pytest.raises(Invalid, match="does not exist in the image"):
        apply(root, hardlink("x", "no/such/dir"))


def test_hard_link_to_a_directory_is_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="is a directory"):
        apply(root, directory("d"), hardlink("x", "d"))


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_nodes_and_fifos_are_skipped_and_counted(root: Path, kind: bytes) -> None:
    budget = Budget(max_bytes=1 << 20)
    apply(root, directory("dev"), entry("dev/null", kind), entry("dev/x", data=b"x"), budget=budget)
    assert not (root / "dev/null").exists() and (root / "dev/x").read_bytes() == b"x"
    assert budget.skipped == 1


def test_size_budget_is_enforced_before_writing(root: Path) -> None:
    budget = Budget(max_bytes=1000)
    apply(root, entry("a", data=b"x" * 600), budget=budget)
    assert budget.bytes == 600
    with pytest.raises(Invalid, match="image unpacks to more than 1000 bytes"):
        apply(root, entry("b", data=b"x" * 600), budget=budget)
    assert not (root / "b").exists()  # refused from the header, before any byte was written
    assert budget.bytes == 600


def test_size_budget_counts_while_copying() -> None:
    budget = Budget(max_bytes=100)
    budget.take_bytes(60)
    with pytest.raises(Invalid, match="more than 100 bytes"):
        budget.take_bytes(41)
    budget.take_bytes(40)
    assert budget.bytes == 100


def test_discarded_whiteout_data_counts_too(root: Path) -> None:
    with pytest.raises(Invalid, match="more than 10 bytes"):
        apply(root, entry(".wh.x", data=b"y" * 100), budget=Budget(max_bytes=10))


def test_entry_budget_stops_inode_bombs(root: Path) -> None:
    budget = Budget(max_bytes=1 << 20, max_entries=5)
    with pytest.raises(Invalid, match="more than 5 files"):
        apply(root, *(entry(f"f{i}") for i in range(10)), budget=budget)
    assert len(os.listdir(root)) == 5


def test_implicit_parents_count_as_entries(root: Path) -> None:
    deep = "/".join(["d"] * 50) + "/f"
    with pytest.raises(Invalid, match="more than 10 files"):
        apply(root, entry(deep), budget=Budget(1 << 20, max_entries=10))


def test_garbage_is_not_a_tar(root: Path) -> None:
    with pytest.raises(Invalid, match="not a valid tar archive"):
        apply_layer(io.BytesIO(b"\x01" * 2000), root, budget=Budget(1 << 20))


def test_truncated_tar_is_refused(root: Path) -> None:
    data = layer(entry("big", data=b"z" * 5000)).getvalue()[:2048]
    with pytest.raises(Invalid, match="not a valid tar archive"):
        apply_layer(io.BytesIO(data), root, budget=Budget(1 << 20))


def test_owner_ids_out_of_range_are_refused(root: Path) -> None:
    with pytest.raises(Invalid, match="out of range"):
        apply(root, entry("f", uid=2**32 - 1))


def test_long_names_in_gnu_and_pax_formats(root: Path) -> None:
    name = "/".join(["n" * 200] * 3)  # beyond ustar's 100 + 155 bytes
    link = "s" * 200 + "/" + "l" * 200
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            info, data = entry(name, data=b"long")
            tar.addfile(info, io.BytesIO(data))
            tar.addfile(symlink(link, "/" + "t" * 300)[0])
        buf.seek(0)
        apply_layer(buf, root, budget=Budget(1 << 20))
        assert (root / name).read_bytes() == b"long"
        assert os.readlink(root / link) == "/" + "t" * 300


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_huge_extended_headers_are_refused(root: Path, fmt: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info, data = entry("x" * (2 << 20), data=b"")
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    with pytest.raises(Invalid, match="extended tar header; the limit is 1048576"):
        apply_layer(buf, root, budget=Budget(1 << 30))


def test_extended_headers_count_against_the_budget(root: Path) -> None:
    buf = layer(entry("f", data=b"x", pax={"comment": "c" * 5000}))
    with pytest.raises(Invalid, match="more than 4000 bytes"):
        apply_layer(buf, root, budget=Budget(4000))


def test_sparse_files_are_refused(root: Path) -> None:
    old_gnu = io.BytesIO()
    with tarfile.open(fileobj=old_gnu, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(entry("sparse", tarfile.GNUTYPE_SPARSE)[0])
    old_gnu.seek(0)
    with pytest.raises(Invalid, match="sparse files are not supported in images: sparse"):
        apply_layer(old_gnu, root, budget=Budget(1 << 20))
    pax_10 = layer(
        entry(
            "GNUSparseFile.0/sparse",
            data=b"1\n0\n4\n" + b"\0" * 506 + b"data",
            pax={
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": "sparse",
                "GNU.sparse.realsize": "4",
            },
        )
    )
    with pytest.raises(Invalid, match=r"sparse files are not supported in images: sparse$"):
        apply_layer(pax_10, root, budget=Budget(1 << 20))
    assert os.listdir(root) == []


def test_global_pax_headers_are_harmless(root: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "git"}
    ) as tar:
        info, data = entry("f", data=b"x")
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    apply_layer(buf, root, budget=Budget(1 << 20))
    assert os.listdir(root) == ["f"]


def test_malformed_sparse_headers_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"GNU.sparse.map": "a,b", "GNU.sparse.size": "zz"}
        tar.addfile(info, io.BytesIO(b""))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(Invalid, match="malformed tar header"):
        apply_layer(io.BytesIO(buf.getvalue()), root, budget=Budget(1 << 20))
