"""Preparing a sandbox's root: a directory used in place, or an OCI image unpacked once by digest.

The cache directory holds, by content key:
    rootfs/<hex>/             unpacked images (the parent is 0700: their setuid files must not
                              be reachable by host users)
    rootdisks/<hex>.<format>  read-only file system images of a root
    treekeys/<hash>.json      per-file content hashes of plain directories, to avoid rehashing
    locks/<name>.lock         one builder per key across processes
Everything is built under a temporary name and renamed into place when complete, so whatever
exists under its final name is complete and is reused as is.
"""

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hutch.images.layout import Image, OciLayout, is_oci_layout
from hutch.images.rootdisk import FORMATS, build_root_disk
from hutch.images.staging import Staging, StagingFull
from hutch.images.unpack import Budget, OutOfSpace, apply_layer
from hutch.images.users import copy_user_files
from hutch.model.errors import Invalid, Unavailable
from hutch.model.image import ImageConfig, digest_hex
from hutch.model.units import format_bytes

log = logging.getLogger(__name__)

# A file whose ctime is this close to when it was hashed may change again without its ctime
# moving (timestamps are coarse), so its hash is not remembered (git's "racy" rule).
RACY_NS = 2_000_000_000
_TREEKEYS_VERSION = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PreparedRoot:
    rootfs: Path  # unpacked root directory; shared and must be treated read-only
    disk: Path | None  # read-only filesystem image of rootfs, when requested
    config: ImageConfig  # ImageConfig() for a plain directory
    key: str  # content key, "sha256:<hex>"


def prepare_root(
    source: Path,
    cache_dir: Path,
    *,
    disk: bool,
    disk_format: str = "erofs",
    max_unpacked_bytes: int = 8 << 30,
    ref: str | None = None,
    staging: Staging | None = None,
) -> PreparedRoot:
    """A root for `source`: a root file system directory, or an OCI image layout directory.

    A plain directory is used in place and keyed by a hash of its content. An OCI layout's
    linux/amd64 image (the one annotated `ref`, else the first) is verified, unpacked once into
    the cache and keyed by its manifest digest. With `disk`, a `disk_format` image of the root
    is built once per key. Repeated calls reuse what is cached; concurrent calls (threads or
    processes) build each key once. On failure nothing partial is left under a final name.
    """
    if disk_format not in FORMATS:
        raise Invalid(
            f"root disk format {disk_format!r} is unknown: use one of {', '.join(FORMATS)}"
        )
    if not source.exists():
        raise Invalid(f"rootfs {source} does not exist")
    if not source.is_dir():
        raise Invalid(
            f"rootfs {source} is not a directory: give a root file system directory "
            "or an OCI image layout directory"
        )
    if is_oci_layout(source):
        layout = OciLayout(source)
        return prepare_image(
            layout,
            layout.image(ref),
            cache_dir,
            disk=disk,
            disk_format=disk_format,
            max_unpacked_bytes=max_unpacked_bytes,
            staging=staging,
        )
    else:
        if ref is not None:
            raise Invalid(f"{source} is not an OCI image layout, so it has no image {ref!r}")
        rootfs, key = source, tree_key(source, cache_dir)
    disk_path = _root_disk(rootfs, key, cache_dir, disk_format) if disk else None
    return PreparedRoot(rootfs=rootfs, disk=disk_path, config=ImageConfig(), key=key)


def prepare_image(
    layout: OciLayout,
    image: Image,
    cache_dir: Path,
    *,
    disk: bool,
    disk_format: str = "erofs",
    max_unpacked_bytes: int = 8 << 30,
    staging: Staging | None = None,
) -> PreparedRoot:
    """The root of `image` (from an OCI layout, the image store among them), once per digest.

    Without `disk`, the image is unpacked into the cache (containers run on that tree). With
    `disk`, a tree already in the cache is used to build the disk; otherwise the tree is only
    scaffolding for the disk (a micro-VM boots from the disk alone): it is unpacked under
    `staging`, ideally a tmpfs, where making files costs a tenth of what a journaling file
    system charges; the disk is built from it; and only the image's /etc/passwd and /etc/group
    are kept beside the disk, in the directory returned as `rootfs` (users are resolved from
    them). The space is reserved in `staging` first, and grown as the image unpacks: an image
    that does not fit there now (beside the other preparations on the host) is unpacked in the
    cache directory instead.
    """
    key = image.manifest_digest
    name = digest_hex(key)
    tree = cache_dir / "rootfs" / name
    if not disk or tree.is_dir():
        tree = _unpacked(layout, image, cache_dir, max_unpacked_bytes)
        disk_path = _root_disk(tree, key, cache_dir, disk_format) if disk else None
        return PreparedRoot(rootfs=tree, disk=disk_path, config=image.config, key=key)
    out = cache_dir / "rootdisks" / f"{name}.{disk_format}"
    users = cache_dir / "rootdisks" / f"{name}.users"
    if not (out.is_file() and users.is_dir()):
        with _locked(cache_dir, out.name):
            if not (out.is_file() and users.is_dir()):
                _disk_from_scaffold(
                    layout, image, out, users, max_bytes=max_unpacked_bytes, staging=staging
                )
    return PreparedRoot(rootfs=users, disk=out, config=image.config, key=key)


def _disk_from_scaffold(
    layout: OciLayout,
    image: Image,
    out: Path,
    users: Path,
    *,
    max_bytes: int,
    staging: Staging | None,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if staging is not None:
        # A quarter more for the pages of small files; the reservation grows if it must.
        layers = sum(layout.unpacked_size(layer) for layer in image.layers)
        expected = min(max_bytes, layers * 5 // 4)
        reservation = staging.reserve(expected)
        if reservation is None:
            log.info("unpacking %s on the cache's disk: %s has no room for %s now",
                     image.manifest_digest, staging.path, format_bytes(expected))  # fmt: skip
        else:
            with reservation:
                budget = reservation.budget(max_bytes)
                try:
                    _disk_from(layout, image, reservation.scaffold, budget, out=out, users=users)
                except (StagingFull, OutOfSpace) as e:
                    log.info("unpacking %s on the cache's disk: %s", image.manifest_digest,
                             e.message)  # fmt: skip
                else:
                    return
    scaffold = Path(tempfile.mkdtemp(prefix=".scaffold-", dir=_private_dir(out.parent)))
    try:
        os.chmod(scaffold, 0o755)
        _disk_from(layout, image, scaffold, Budget(max_bytes), out=out, users=users)
    finally:
        shutil.rmtree(scaffold, ignore_errors=True)


def _disk_from(
    layout: OciLayout, image: Image, scaffold: Path, budget: Budget, *, out: Path, users: Path
) -> None:
    """Unpack `image` into the empty `scaffold`, build the disk `out` from it, and keep its
    user files in `users`."""
    _apply_layers(layout, image, scaffold, budget)
    build_root_disk(scaffold, out, out.suffix.lstrip("."))
    tmp_users = Path(tempfile.mkdtemp(prefix=".users-", dir=out.parent))
    copy_user_files(scaffold, tmp_users)
    shutil.rmtree(users, ignore_errors=True)
    os.rename(tmp_users, users)


def drop_prepared(cache_dir: Path, key: str) -> int:
    """Remove the unpacked root and root disks cached for `key`; the bytes freed.

    The caller makes sure no sandbox runs on them (a running container's overlay or a VM's
    open disk would lose its lower layer)."""
    name = digest_hex(key)
    freed = 0
    with _locked(cache_dir, name):
        tree = cache_dir / "rootfs" / name
        if tree.is_dir():
            freed += sum(p.lstat().st_size for p in tree.rglob("*"))
            shutil.rmtree(tree)
    for fmt in FORMATS:
        disk_file = cache_dir / "rootdisks" / f"{name}.{fmt}"
        with _locked(cache_dir, disk_file.name):
            if disk_file.exists():
                freed += disk_file.stat().st_size
                disk_file.unlink()
    shutil.rmtree(cache_dir / "rootdisks" / f"{name}.users", ignore_errors=True)
    return freed


def _unpacked(layout: OciLayout, image: Image, cache_dir: Path, max_bytes: int) -> Path:
    name = digest_hex(image.manifest_digest)
    parent = _private_dir(cache_dir / "rootfs")
    dest = parent / name
    if dest.is_dir():
        return dest
    with _locked(cache_dir, name):
        if dest.is_dir():
            return dest  # another process built it while we waited
        for stale in parent.glob(f".{name}.tmp-*"):  # left by a crash; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)  # the usual root mode; a layer's "./" entry may change it
            _apply_layers(layout, image, tmp, Budget(max_bytes))
            _syncfs(tmp)  # a power cut after the rename must not leave empty files behind
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _apply_layers(layout: OciLayout, image: Image, root: Path, budget: Budget) -> None:
    for i, layer in enumerate(image.layers):
        diff_id = image.diff_ids[i] if image.diff_ids else None
        with layout.open_layer(layer, diff_id) as stream:
            apply_layer(stream, root, budget=budget)
    if budget.skipped:
        log.warning("image %s: skipped %d device nodes and FIFOs (the sandbox provides /dev)",
                    image.manifest_digest, budget.skipped)  # fmt: skip


def _root_disk(rootfs: Path, key: str, cache_dir: Path, fmt: str) -> Path:
    out = cache_dir / "rootdisks" / f"{digest_hex(key)}.{fmt}"
    if out.is_file():
        return out
    with _locked(cache_dir, out.name):
        if not out.is_file():
            for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a crash
                stale.unlink(missing_ok=True)
            build_root_disk(rootfs, out, fmt)
    return out


# -- content keys of plain directories ----------------------------------------------------------


def tree_key(root: Path, cache_dir: Path | None = None) -> str:
    """The content key ("sha256:<hex>") of the tree: paths, types, modes, owners, symlink
    targets, device numbers and file contents, not times or hard links. Stable across runs.

    With `cache_dir`, file hashes are remembered by (device, inode, size, mtime, ctime) and
    reused while those are unchanged, so an unchanged tree costs one stat per entry.
    """
    cache_file = None
    known: dict[str, list[int | str]] = {}
    if cache_dir is not None:
        ident = hashlib.sha256(os.fsencode(str(root.resolve()))).hexdigest()
        cache_file = cache_dir / "treekeys" / f"{ident}.json"
        known = _load_tree_cache(cache_file)
    remember: dict[str, list[int | str]] = {}
    started = time.time_ns()
    total = hashlib.sha256()
    for rel, st, dir_fd, name in _walk(root):
        mode = st.st_mode
        extra = b""
        if stat.S_ISREG(mode):
            assert dir_fd is not None and name is not None
            rel_text = os.fsdecode(rel)
            sig: list[int | str] = [
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            ]
            cached = known.get(rel_text)
            if cached is not None and cached[:5] == sig:
                digest = str(cached[5])
            else:
                digest, stable = _hash_file(root, rel, dir_fd, name, st)
                if not stable:
                    sig = []
            if sig and st.st_ctime_ns < started - RACY_NS:
                remember[rel_text] = [*sig, digest]
            extra = digest.encode()
        elif stat.S_ISLNK(mode):
            assert dir_fd is not None and name is not None
            extra = os.fsencode(os.readlink(name, dir_fd=dir_fd))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            extra = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}".encode()
        # Every field ends in NUL, which no path or symlink target can contain: unambiguous.
        fields = (rel, b"%o" % mode, b"%d" % st.st_uid, b"%d" % st.st_gid, extra)
        total.update(b"".join(f + b"\0" for f in fields))
    if cache_file is not None and remember != known:
        _store_tree_cache(cache_file, remember)
    return "sha256:" + total.hexdigest()


def _walk(root: Path) -> Iterator[tuple[bytes, os.stat_result, int | None, str | None]]:
    """(relative path, lstat, parent dir fd, name) for the root and everything under it,
    depth first in byte order, without following symlinks."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Invalid(f"rootfs {root} cannot be read: {e.strerror}") from None
    yield b"", os.fstat(root_fd), None, None
    stack: list[tuple[int, bytes, list[str]]] = [(root_fd, b"", _sorted_names(root_fd))]
    try:
        while stack:
            fd, prefix, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            name = names.pop()
            rel = prefix + os.fsencode(name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walked
            yield rel, st, fd, name
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                stack.append((child, rel + b"/", _sorted_names(child)))
    except OSError as e:
        raise Unavailable(f"cannot read {root}: {e.strerror}") from None
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _sorted_names(fd: int) -> list[str]:
    # Reversed, so that popping from the end visits names in ascending byte order.
    return sorted(os.listdir(fd), key=os.fsencode, reverse=True)


def _hash_file(
    root: Path, rel: bytes, dir_fd: int, name: str, st: os.stat_result
) -> tuple[str, bool]:
    """(sha256 hex of the file's content, whether it was unchanged while being read)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        raise Unavailable(f"cannot read {root}/{os.fsdecode(rel)}: {e.strerror}") from None
    with open(fd, "rb") as f:
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        after = os.fstat(fd)
    stable = (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )
    return digest.hexdigest(), stable


def _load_tree_cache(path: Path) -> dict[str, list[int | str]]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}  # no cache (or a damaged one): hash everything
    if not isinstance(doc, dict) or doc.get("version") != _TREEKEYS_VERSION:
        return {}
    files = doc.get("files")
    if not isinstance(files, dict):
        return {}
    return {
        k: v
        for k, v in files.items()
        if isinstance(v, list) and len(v) == 6 and isinstance(v[5], str)
    }


def _store_tree_cache(path: Path, files: dict[str, list[int | str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w") as f:
            json.dump({"version": _TREEKEYS_VERSION, "files": files}, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- helpers ------------------------------------------------------------------------------------


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    locks = cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()  # no syncfs(2): flush everything, which is slower but as safe
    finally:
        os.close(fd)
