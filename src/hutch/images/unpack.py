"""Applying one image layer (an uncompressed tar stream) onto a root directory, safely.

Layers are hostile input. Nothing is written outside the root: member names are split into
components (absolute names and `..` are refused, not rewritten), and every parent directory is
opened relative to the root with O_NOFOLLOW, so a symlink planted by an earlier entry or layer
is refused rather than followed. The stdlib's `extract` is not used: its safety depends on a
filter that does not know OCI whiteouts, and it follows symlinks in parents.

Device nodes and FIFOs (a debootstrap tree has /dev/null and friends) are skipped and counted
in the budget: the sandbox provides its own /dev, and an image never makes device nodes.

Semantics are OCI's (and Docker's): entries replace what is there (a directory merges with a
directory), `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` hides a directory's lower
contents, missing parents are created as root:root 0755, and directory modes and times are set
once the layer is complete so that adding entries cannot disturb them.
"""

import errno
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from hutch.model.errors import HutchError, Invalid, Unavailable
from hutch.model.units import format_bytes

MAX_ENTRIES = 1_000_000  # per image: stops inode bombs
MAX_NAME_BYTES = 4096  # PATH_MAX; longer names cannot be used inside the guest anyway
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
MAX_HEADER_BYTES = 1 << 20  # one pax header or GNU long name: the stdlib holds it in memory
MAX_GLOBAL_PAX_KEYS = 1000  # global pax headers accumulate for the rest of the layer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_AUFS_META = ".wh..wh."
_EXTENDED_HEADERS = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
# Extended attributes worth keeping: file capabilities (ping, ...) and user data. Others
# (trusted.*, security.selinux, ACLs) are host policy, not image content.
_XATTR_PREFIX = "SCHILY.xattr."
_XATTRS_KEPT = ("user.", "security.capability")
# Errors that mean the host is in trouble rather than the layer being bad.
_HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM})

Parts = tuple[str, ...]


class TooLarge(Invalid):
    """The image unpacks to more bytes than its budget allows."""


class OutOfSpace(Unavailable):
    """The file system unpacked into is full."""


class Budget:
    """Limits over a whole image, shared by its layers: file bytes written and entries made."""

    def __init__(self, max_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.entries = 0
        # Device nodes and FIFOs skipped: the sandbox provides /dev, and an image's own nodes
        # are never made (an image is content, not access to the host's devices).
        self.skipped = 0

    def check_bytes(self, n: int) -> None:
        """Raise Invalid if `n` more bytes would not fit."""
        if self.bytes + n > self.max_bytes:
            raise TooLarge(
                f"image unpacks to more than {self.max_bytes} bytes "
                f"({format_bytes(self.max_bytes)}), the limit for unpacked images"
            )

    def take_bytes(self, n: int) -> None:
        """Account for `n` more bytes; raises Invalid (taking nothing) past the limit."""
        self.check_bytes(n)
        self.bytes += n

    def take_entry(self) -> None:
        if self.entries >= self.max_entries:
            raise Invalid(f"image has more than {self.max_entries} files, the limit for images")
        self.entries += 1


def apply_layer(tar_stream: BinaryIO, root: Path, *, budget: Budget) -> None:
    """Apply one layer onto the directory `root`.

    Raises Invalid (and writes nothing outside `root`) for hostile or malformed layers, and
    Unavailable when the host runs out of space. On failure `root` is left partly written:
    the caller unpacks into a scratch directory and discards it.
    """
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as e:
        raise Invalid(f"cannot unpack into {root}: {e.strerror}") from None
    try:
        _Layer(root_fd, budget).apply(tar_stream)
    finally:
        os.close(root_fd)


class _Layer:
    def __init__(self, root_fd: int, budget: Budget) -> None:
        self.root_fd = root_fd
        self.budget = budget
        self.as_root = os.geteuid() == 0  # only root can give files their image owners
        self.created: set[Parts] = set()  # paths this layer made (whiteouts spare them)
        self.dirs: dict[Parts, tuple[int, int]] = {}  # path -> (mode, mtime ns), set at the end
        # The last parent directory opened: consecutive entries usually share it.
        self._cached: tuple[Parts, int] | None = None

    def apply(self, stream: BinaryIO) -> None:
        try:
            try:
                with _open_stream(stream, self.budget) as tar:
                    while (member := _next_member(tar)) is not None:
                        # Stream mode keeps every header read; a million entries add up.
                        tar.members.clear()  # type: ignore[attr-defined]
                        self._entry(tar, member)
            except (tarfile.TarError, EOFError) as e:
                raise Invalid(f"layer is not a valid tar archive: {e}") from None
            except RecursionError:
                raise Invalid("layer chains too many extended tar headers") from None
            self._finish_dirs()
        finally:
            self._forget()

    # -- one entry -------------------------------------------------------------------------------

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.budget.take_entry()
        name = m.name
        parts = _split(name, what="layer entry")
        try:
            if any(p.startswith(_AUFS_META) for p in parts[:-1]):
                # Inside AUFS metadata (.wh..wh.plnk/...): meaningless here, skipped as by Docker.
                if m.isreg():
                    self.budget.take_bytes(m.size)
            elif parts and parts[-1].startswith(WHITEOUT):
                if m.isreg():
                    self.budget.take_bytes(m.size)  # skipped, but it is still decompressed
                self._whiteout(parts, name)
            elif m.sparse is not None:
                raise Invalid(f"sparse files are not supported in images: {name}")
            elif m.ischr() or m.isblk() or m.isfifo():
                self.budget.skipped += 1  # as `docker import` of a debootstrap tree has them
            elif not parts:
                if not m.isdir():
                    raise Invalid(f"layer entry {name!r} would replace the root directory")
                self._root(m)
            elif m.isdir():
                self._dir(parts, m)
            elif m.isreg():
                self._file(tar, parts, m)
            elif m.issym():
                self._symlink(parts, m)
            elif m.islnk():
                self._hardlink(parts, m)
            else:
                raise Invalid(f"layer entry {name!r} has unsupported tar type {m.type!r}")
        except OSError as e:
            raise _os_error(name, e) from None
        except (OverflowError, ValueError) as e:
            raise Invalid(f"cannot unpack layer entry {name!r}: {e}") from None

    def _root(self, m: tarfile.TarInfo) -> None:
        fd = os.dup(self.root_fd)
        try:
            self._owner(fd, m)
            self._xattrs(fd, m)
        finally:
            os.close(fd)
        self.dirs[()] = (_mode(m), _mtime_ns(m))

    def _dir(self, parts: Parts, m: tarfile.TarInfo) -> None:
        parent = self._open_dir(parts[:-1], _entry(m), create=True)
        assert parent is not None
        try:
            leaf = parts[-1]
            if not self._clear(parent, leaf, keep_dir=True):
                # Owner-only until the layer ends and the real mode is set.
                os.mkdir(leaf, 0o700, dir_fd=parent)
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=parent)
            try:
                self._owner(fd, m)
                self._xattrs(fd, m)
            finally:
                os.close(fd)
        finally:
            os.close(parent)
        self.created.add(parts)
        self.dirs[parts] = (_mode(m), _mtime_ns(m))

    def _file(self, tar: tarfile.TarFile, parts: Parts, m: tarfile.TarInfo) -> None:
        # Refuse before writing anything if the header already says it is too big; the copy
        # below still counts what it really writes (sparse members expand).
        self.budget.check_bytes(m.size)
        source = tar.extractfile(m)
        assert source is not None  # regular members always have a file object
        parent = self._open_dir(parts[:-1], _entry(m), create=True)
        assert parent is not None
        try:
            self._clear(parent, parts[-1], keep_dir=False)
            # Mode 0 while it is written: never more permissive than the header says.
            fd = os.open(parts[-1], _FILE_FLAGS, 0, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            while chunk := source.read(_CHUNK):
                self.budget.take_bytes(len(chunk))
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            self._owner(fd, m)
            os.chmod(fd, _mode(m))  # after chown, which clears setuid/setgid
            self._xattrs(fd, m)  # after chown, which clears security.capability
            os.utime(fd, ns=(_mtime_ns(m), _mtime_ns(m)))
        finally:
            os.close(fd)
        self.created.add(parts)

    def _symlink(self, parts: Parts, m: tarfile.TarInfo) -> None:
        target = m.linkname
        if not target or "\0" in target:
            raise Invalid(f"symlink {m.name!r} has an empty or invalid target")
        parent = self._open_dir(parts[:-1], _entry(m), create=True)
        assert parent is not None
        try:
            leaf = parts[-1]
            self._clear(parent, leaf, keep_dir=False)
            # The target is stored, never followed here: absolute targets are normal in images
            # and mean "inside the root" once the image runs.
            os.symlink(target, leaf, dir_fd=parent)
            if self.as_root:
                os.chown(leaf, _id(m.uid), _id(m.gid), dir_fd=parent, follow_symlinks=False)
            ns = _mtime_ns(m)
            os.utime(leaf, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)
        self.created.add(parts)

    def _hardlink(self, parts: Parts, m: tarfile.TarInfo) -> None:
        what = f"hard link {m.name!r} -> {m.linkname!r}"
        if m.linkname.startswith("/"):
            raise Invalid(f"{what}: the target must be a relative path inside the image")
        target = _split(m.linkname, what=what)
        if not target:
            raise Invalid(f"{what}: the target is the root directory")
        source = self._open_dir(target[:-1], what, create=False)
        if source is None:
            raise Invalid(f"{what}: the target does not exist in the image")
        try:
            try:
                st = os.stat(target[-1], dir_fd=source, follow_symlinks=False)
            except FileNotFoundError:
                raise Invalid(f"{what}: the target does not exist in the image") from None
            if stat.S_ISDIR(st.st_mode):
                raise Invalid(f"{what}: the target is a directory")
            if target == parts:
                return  # a link to itself: already there
            parent = self._open_dir(parts[:-1], _entry(m), create=True)
            assert parent is not None
            try:
                self._clear(parent, parts[-1], keep_dir=False)
                # follow_symlinks=False: a link to a symlink links the symlink itself.
                os.link(
                    target[-1],
                    parts[-1],
                    src_dir_fd=source,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
            finally:
                os.close(parent)
        finally:
            os.close(source)
        self.created.add(parts)

    def _whiteout(self, parts: Parts, name: str) -> None:
        what = f"whiteout {name!r}"
        leaf, where = parts[-1], parts[:-1]
        if leaf == OPAQUE:
            fd = self._open_dir(where, what, create=True)
            assert fd is not None
            try:
                self._purge_lower(fd, where)
            finally:
                os.close(fd)
            return
        if leaf.startswith(_AUFS_META):
            return  # other AUFS metadata (.wh..wh.plnk, ...): meaningless here, as for Docker
        victim = leaf[len(WHITEOUT) :]
        if victim in ("", ".", ".."):
            raise Invalid(f"whiteout {name!r} names no file")
        if (*where, victim) in self.created:
            return  # whiteouts only hide lower layers, never their own layer's files
        fd = self._open_dir(where, what, create=False)
        if fd is None:
            return  # nothing there to hide
        try:
            self._clear(fd, victim, keep_dir=False)
        finally:
            os.close(fd)

    def _purge_lower(self, fd: int, where: Parts) -> None:
        """Remove everything under the directory `fd` that this layer did not make."""
        stack = [(os.dup(fd), where)]
        try:
            while stack:
                dir_fd, path = stack.pop()
                try:
                    for name in os.listdir(dir_fd):
                        if (*path, name) not in self.created:
                            self._clear(dir_fd, name, keep_dir=False)
                            continue
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            # Made by this layer, but possibly merged with a lower directory.
                            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                            stack.append((child, (*path, name)))
                finally:
                    os.close(dir_fd)
        finally:
            for dir_fd, _ in stack:
                os.close(dir_fd)

    # -- helpers ---------------------------------------------------------------------------------

    def _open_dir(self, parts: Parts, what: str, *, create: bool) -> int | None:
        """A new fd for the directory at `parts`, opened without following any symlink.

        Missing directories are created (root:root 0755) if `create`, else None is returned.
        A symlink or non-directory on the way is refused.
        """
        if self._cached is not None and self._cached[0] == parts:
            return os.dup(self._cached[1])
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    self.budget.take_entry()
                    os.mkdir(comp, 0o700, dir_fd=fd)
                    child = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.chmod(child, 0o755)
                    self.created.add(parts[: i + 1])
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    kind = (
                        "a symlink (images may not be written through symlinks)"
                        if stat.S_ISLNK(st.st_mode)
                        else "not a directory"
                    )
                    raise Invalid(
                        f"{what} goes through {'/'.join(parts[: i + 1])!r}, which is {kind}"
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._forget()
        self._cached = (parts, os.dup(fd))
        return fd

    def _clear(self, parent: int, leaf: str, *, keep_dir: bool) -> bool:
        """Remove `leaf` from `parent` (without following it); True if a kept directory is there."""
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self._forget()  # the cached directory may be inside what goes
            shutil.rmtree(leaf, dir_fd=parent)
        else:
            os.unlink(leaf, dir_fd=parent)
        return False

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _owner(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.as_root:
            os.chown(fd, _id(m.uid), _id(m.gid))

    def _xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            attr = key[len(_XATTR_PREFIX) :]
            if not attr.startswith(_XATTRS_KEPT):
                continue
            try:
                os.setxattr(fd, attr, value.encode("utf-8", "surrogateescape"))
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise

    def _finish_dirs(self) -> None:
        # Deepest first, so setting a directory's time is not undone by fixing a child.
        for parts, (mode, mtime_ns) in sorted(self.dirs.items(), key=lambda kv: -len(kv[0])):
            try:
                fd = self._open_dir(parts, "directory", create=False)
            except Invalid:
                continue  # replaced by a symlink later in this layer
            if fd is None:
                continue  # removed later in this layer
            try:
                os.chmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            except OSError as e:
                raise _os_error("/".join(parts) or ".", e) from None
            except OverflowError as e:
                raise Invalid(f"cannot set the time of {'/'.join(parts)!r}: {e}") from None
            finally:
                os.close(fd)


def _header_class(budget: Budget) -> type[tarfile.TarInfo]:
    """A TarInfo that parses headers within limits.

    The stdlib reads GNU long names, pax headers and sparse maps into memory whatever their
    size; `_proc_member` is the hook tarfile documents for subclasses. Extended headers count
    against the budget like file data, since they are decompressed all the same.
    """

    class Header(tarfile.TarInfo):
        def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise Invalid(f"sparse files are not supported in images: {self.name}")
            if self.type in _EXTENDED_HEADERS:
                if self.size > MAX_HEADER_BYTES:
                    raise Invalid(
                        f"layer has a {self.size}-byte extended tar header; "
                        f"the limit is {MAX_HEADER_BYTES}"
                    )
                if self.type == tarfile.XGLTYPE and len(tar.pax_headers) > MAX_GLOBAL_PAX_KEYS:
                    raise Invalid(f"layer has more than {MAX_GLOBAL_PAX_KEYS} global pax headers")
                budget.take_bytes(self.size)
            result: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
            return result

        def _proc_gnusparse_10(
            self, member: tarfile.TarInfo, pax_headers: dict[str, str], tar: object
        ) -> None:
            # Its map is read from the data area with no bound: refuse before reading it.
            name = pax_headers.get("GNU.sparse.name") or member.name
            raise Invalid(f"sparse files are not supported in images: {name}")

    return Header


def _split(name: str, *, what: str) -> Parts:
    """The components of a member name; absolute names and `..` are refused, not rewritten."""
    if "\0" in name:
        raise Invalid(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise Invalid(f"{what} {name!r} is an absolute path; layers must use relative paths")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise Invalid(f"{what} {name[:64]!r}... is longer than {MAX_NAME_BYTES} bytes")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Invalid(f"{what} {name!r} contains '..'; layers may not point outside the image")
    return parts


def _os_error(name: str, e: OSError) -> HutchError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"cannot unpack {name!r}: {e.strerror}")
    if e.errno in _HOST_ERRNOS:
        return Unavailable(f"cannot unpack {name!r}: {e.strerror}")
    return Invalid(f"cannot unpack layer entry {name!r}: {e.strerror or e}")


def _entry(m: tarfile.TarInfo) -> str:
    return f"layer entry {m.name!r}"


def _mode(m: tarfile.TarInfo) -> int:
    return m.mode & 0o7777


def _mtime_ns(m: tarfile.TarInfo) -> int:
    return round(m.mtime * 1_000_000_000)


def _id(value: int) -> int:
    if not 0 <= value <= MAX_ID:
        raise Invalid(f"owner id {value} is out of range")
    return value


# tarfile raises ValueError for malformed GNU sparse and pax numbers, and in stream mode it
# reads the first header while opening.


def _open_stream(stream: BinaryIO, budget: Budget) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|", tarinfo=_header_class(budget))
    except ValueError as e:
        raise Invalid(f"layer has a malformed tar header: {e}") from None


def _next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except ValueError as e:
        raise Invalid(f"layer has a malformed tar header: {e}") from None
