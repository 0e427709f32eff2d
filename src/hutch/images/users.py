"""Resolving an image's user string to numeric ids, from the image's own passwd and group files.

The files are read from inside the root: symlinks on the way (`/etc/passwd -> /usr/lib/passwd`,
or a hostile `-> /etc/shadow`) are resolved relative to the root, never against the host, and
every directory is then opened with O_NOFOLLOW so nothing can redirect the read outside.
"""

import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hutch.model.errors import Invalid, Unavailable
from hutch.model.sandbox import User

MAX_FILE_BYTES = 4 << 20  # a passwd or group file larger than this is not a real one
_MAX_SYMLINKS = 40  # Linux's limit (MAXSYMLINKS)
_NUMBER = re.compile(r"^[0-9]+$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


@dataclass(frozen=True, slots=True)
class _Passwd:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    gid: int
    members: tuple[str, ...]


def resolve_user(rootfs: Path, user: str) -> User:
    """The ids `user` ("", "name", "uid", "name:group", "uid:gid", ...) means in `rootfs`.

    Semantics are runc's (`GetExecUser`, used by Docker, containerd and Podman):
    - "" means uid 0, looked up like "0" (so root gets its supplementary groups as in Docker);
    - a numeric user is always a uid; if /etc/passwd has an entry with that uid it supplies the
      gid and the name used for supplementary groups, otherwise the gid is 0 and there are no
      supplementary groups;
    - a user name must be in /etc/passwd;
    - an explicit group (numeric gid, or a name that must be in /etc/group) replaces the
      passwd gid, and then there are no supplementary groups (runc only adds them for the
      implicit form);
    - otherwise the supplementary groups are the /etc/group entries listing the user's name.
    Malformed passwd/group lines are skipped. Raises Invalid for unknown names.
    """
    user_part, sep, group_part = user.partition(":")
    if ":" in group_part:
        raise Invalid(f"user {user!r} is invalid: use name, uid, name:group or uid:gid")
    if sep and not group_part:
        raise Invalid(f"user {user!r} has an empty group: use name:group or uid:gid")
    spec = user_part or "0"

    passwd = _read_in_root(rootfs, "/etc/passwd")
    entries = _parse_passwd(passwd) if passwd is not None else []
    if _NUMBER.match(spec):
        uid = _number(spec, "uid")
        match = next((e for e in entries if e.uid == uid), None)
    else:
        match = next((e for e in entries if e.name == spec), None)
        if match is None:
            missing = "" if passwd is not None else " (the image has no /etc/passwd)"
            raise Invalid(f"user {spec!r} is not in the image's /etc/passwd{missing}")
        uid = match.uid
    gid = match.gid if match is not None else 0

    if not group_part and match is None:
        return User(uid=uid, gid=gid)
    group_text = _read_in_root(rootfs, "/etc/group")
    groups = _parse_group(group_text) if group_text is not None else []
    if group_part:
        if _NUMBER.match(group_part):
            return User(uid=uid, gid=_number(group_part, "gid"))
        found = next((g for g in groups if g.name == group_part), None)
        if found is None:
            raise Invalid(f"group {group_part!r} is not in the image's /etc/group")
        return User(uid=uid, gid=found.gid)
    assert match is not None
    supplementary: list[int] = []
    for g in groups:
        if match.name in g.members and g.gid not in supplementary:
            supplementary.append(g.gid)
    return User(uid=uid, gid=gid, groups=tuple(supplementary))


USER_FILES = ("etc/passwd", "etc/group")  # all resolve_user reads from an image


def copy_user_files(rootfs: Path, dest: Path) -> None:
    """Copy what `resolve_user` reads from `rootfs` into `dest` as plain files, so users can
    be resolved after the tree itself is gone (a micro-VM keeps only its root disk)."""
    (dest / "etc").mkdir(parents=True, exist_ok=True)
    for rel in USER_FILES:
        text = _read_in_root(rootfs, rel)
        if text is not None:
            (dest / rel).write_text(text, "utf-8", "surrogateescape")


def _number(text: str, what: str) -> int:
    value = int(text)
    if value > 2**31 - 1:  # runc's limit
        raise Invalid(f"{what} {value} is out of range")
    return value


def _records(text: str, fields: int) -> Iterator[list[str]]:
    """The named, uncommented lines of a passwd or group file with at least `fields` fields."""
    for line in text.splitlines():
        record = line.split(":")
        if len(record) >= fields and record[0] and not line.startswith("#"):
            yield record


def _id(text: str) -> int | None:
    """A uid or gid, or None if `text` is not one (runc's limit: below 2**31)."""
    if not _NUMBER.match(text) or int(text) >= 2**31:
        return None
    return int(text)


def _parse_passwd(text: str) -> list[_Passwd]:
    out = []
    for fields in _records(text, 4):
        uid, gid = _id(fields[2]), _id(fields[3])
        if uid is not None and gid is not None:
            out.append(_Passwd(fields[0], uid, gid))
    return out


def _parse_group(text: str) -> list[_Group]:
    out = []
    for fields in _records(text, 3):
        if (gid := _id(fields[2])) is None:
            continue
        members = fields[3].split(",") if len(fields) > 3 else []
        out.append(_Group(fields[0], gid, tuple(m.strip() for m in members if m)))
    return out


def _read_in_root(rootfs: Path, path: str) -> str | None:
    """The text of `path` inside `rootfs` (symlinks resolved within it), or None if missing."""
    try:
        root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Invalid(f"rootfs {rootfs} cannot be opened: {e.strerror}") from None
    try:
        parts = _resolve(root_fd, path)
        if parts is None:
            return None
        parent = _open_dirs(root_fd, parts[:-1])
        try:
            # O_NONBLOCK: a FIFO planted as /etc/passwd must not hang us; it is refused below.
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        finally:
            os.close(parent)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        if e.errno in _MISSING:
            return None
        raise Unavailable(f"cannot read {path} in {rootfs}: {e.strerror}") from None
    finally:
        os.close(root_fd)
    if len(data) > MAX_FILE_BYTES:
        raise Invalid(f"{path} in the image is larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", "surrogateescape")


def _resolve(root_fd: int, path: str) -> list[str] | None:
    """`path` with every symlink resolved as if `root_fd` were "/"; None if it does not exist."""
    todo = [p for p in reversed(path.split("/")) if p]
    done: list[str] = []
    links = 0
    while todo:
        comp = todo.pop()
        if comp == ".":
            continue
        if comp == "..":
            if done:
                done.pop()
            continue  # ".." at the root stays at the root, as in the kernel
        parent = _open_dirs(root_fd, done)
        try:
            st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise Invalid(f"{path} in the image is a symlink loop")
                target = os.readlink(comp, dir_fd=parent)
                if target.startswith("/"):
                    done = []
                todo.extend(p for p in reversed(target.split("/")) if p)
                continue
        except OSError as e:
            if e.errno in _MISSING:
                return None
            raise
        finally:
            os.close(parent)
        done.append(comp)
    return done or None


def _open_dirs(root_fd: int, parts: list[str]) -> int:
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
