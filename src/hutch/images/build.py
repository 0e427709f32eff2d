"""A one-layer OCI image from a root directory or a plain root filesystem tarball (what
`docker import` does), as an OCI archive.

Deterministic: entries sorted (a directory's) or in the tarball's order, owners numeric, times
kept; the same tree gives the same digests. Device nodes and FIFOs (debootstrap makes /dev/null
and friends) are left out and counted: the sandbox provides /dev. Symlinks are kept as they are,
pointing wherever they point: they are resolved inside the image when it runs, never here.
"""

import contextlib
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from hutch.images.archive import SLACK, TAR_BUFSIZE, Budget, decompressed
from hutch.images.spool import check_room
from hutch.model.errors import HutchError, Invalid, QuotaExceeded
from hutch.model.image import parse_ref
from hutch.model.units import format_bytes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


# What marks a tar as an image archive (OCI or docker save) rather than a root filesystem.
_IMAGE_ARCHIVE_FILES = frozenset({"oci-layout", "index.json", "manifest.json", "repositories"})
_SHELLS = ("bin/sh", "usr/bin/sh")  # /bin is a symlink to usr/bin in merged-/usr trees


@dataclass(frozen=True, slots=True)
class Packed:
    digest: str  # the manifest's
    skipped: int  # device nodes and FIFOs left out

    def note(self, source: object) -> str | None:
        """The one warning line for what was left out, if anything was."""
        if not self.skipped:
            return None
        return (
            f"left out {self.skipped} device node{'s' if self.skipped != 1 else ''} and FIFOs "
            f"of {source}: the sandbox provides /dev"
        )


def default_config(has_shell: bool) -> dict[str, object]:
    """What a plain root filesystem runs by default: its shell, with a usual PATH."""
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"Cmd": ["/bin/sh"] if has_shell else [], "Env": [path]}


def write_archive(
    rootfs: Path,
    out: BinaryIO,
    *,
    name: str | None = None,
    config: Mapping[str, object] | None = None,
) -> Packed:
    """Write an OCI archive of the directory `rootfs` as one layer to `out`."""
    if not rootfs.is_dir():
        raise Invalid(f"{rootfs} is not a directory")
    with tempfile.TemporaryFile() as layer:
        diff_id, size, skipped = _layer(rootfs, layer)
        has_shell = any((rootfs / sh).exists() or (rootfs / sh).is_symlink() for sh in _SHELLS)
        digest = _write(
            out,
            layer,
            diff_id,
            size,
            config=config if config is not None else default_config(has_shell),
            name=name,
        )
    return Packed(digest, skipped)


def is_rootfs_tarball(source: Path | IO[bytes], max_bytes: int | None = None) -> bool:
    """Whether the file (a path, or a seekable binary file read from its current position) is
    a tar (plain or compressed) of a root filesystem: a tar with entries, none of them an image
    archive's files. Anything else (not a tar, damaged, empty: zeros read as an empty tar) is
    left to the importer.

    With `max_bytes` (an upload), no more than that is decompressed: a tar whose entries reach
    beyond it is taken for a root filesystem, which `write_archive_of_tarball` then refuses at
    once (a decompression bomb costs what a root filesystem of the limit would, no more), and a
    header larger than a real one, or a corrupt compressed stream, is refused (Invalid) as it is
    read, not held in memory first."""
    try:
        with _open_tar(source, max_bytes) as (tar, budget):
            empty = True
            for member in _members(tar, budget, max_bytes):
                empty = False
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if parts[:1] == ["blobs"] or "/".join(parts) in _IMAGE_ARCHIVE_FILES:
                    return False
                if len(parts) == 2 and parts[1] == "layer.tar":  # docker save, before 25
                    return False
            return not empty
    except _Beyond:
        return True
    except (tarfile.TarError, EOFError, OSError, ValueError):
        return False


def write_archive_of_tarball(
    tarball: Path | IO[bytes],
    out: BinaryIO,
    *,
    name: str | None = None,
    max_bytes: int | None = None,
    quota: bool = False,
    floor: int = 0,
    tmp_dir: Path | None = None,
) -> Packed:
    """Write an OCI archive of the root filesystem tarball `tarball` (a path, or a seekable
    binary file read from its current position) as one layer to `out`: its entries as they are
    (symlinks included), less device nodes and FIFOs. Absolute names and `..` are refused, as
    the nodes would refuse them when unpacking.

    For a tarball from someone else (an upload): a layer of more than `max_bytes` is refused
    while it is written, not after (QuotaExceeded when `quota`, the project's limit; else
    Invalid), and so is taking the disk of `tmp_dir` (where the layer is held) below `floor`."""
    shown = str(tarball) if isinstance(tarball, Path) else "the root filesystem's tar"
    skipped = 0
    names: set[str] = set()
    with tempfile.TemporaryFile(dir=tmp_dir) as layer:
        try:
            with (
                _open_tar(tarball, max_bytes) as (source, budget),
                tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for member in _members(source, budget, max_bytes):
                    if member.ischr() or member.isblk() or member.isfifo():
                        skipped += 1
                        continue
                    _check_name(member.name, shown)
                    if member.islnk():
                        _check_name(member.linkname, shown)
                    names.add("/".join(p for p in member.name.split("/") if p not in ("", ".")))
                    data = source.extractfile(member) if member.isreg() else None
                    incoming = member.size if member.isreg() else 0
                    if max_bytes is not None and layer.tell() + incoming > max_bytes:
                        raise _too_large(max_bytes, quota)
                    if floor:
                        check_room(layer.fileno(), incoming, floor, "a root filesystem's layer")
                    tar.addfile(member, data)
        except _Beyond:
            raise _too_large(max_bytes or 0, quota) from None
        except (tarfile.TarError, EOFError, ValueError) as e:
            raise Invalid(f"{shown} is not a readable tar archive: {e}") from None
        layer_digest, size = _digest_written(layer)
        has_shell = any(sh in names for sh in _SHELLS)
        config = default_config(has_shell)
        digest = _write(out, layer, layer_digest, size, config=config, name=name)
    return Packed(digest, skipped)


class _Beyond(Exception):
    """The tar's entries reach beyond the bytes it may unpack to."""


@contextlib.contextmanager
def _open_tar(
    source: Path | IO[bytes], max_bytes: int | None
) -> Iterator[tuple[tarfile.TarFile, Budget | None]]:
    """The tar, and for an upload (`max_bytes` given) the budget its reading is counted by: read
    once, in stream mode, so that no header or data beyond what was granted is decompressed or
    held (tarfile reads a pax header into memory whole; seeking over a compressed member
    decompresses it all)."""
    if max_bytes is None:  # a local file: seek over data where it can
        with (
            tarfile.open(source, "r:*")
            if isinstance(source, Path)
            else tarfile.open(fileobj=source, mode="r:*")
        ) as tar:
            yield tar, None
        return
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        stream, compressed = decompressed(cast(BinaryIO, raw))
        budget = Budget(stream, max_bytes + SLACK, compressed)
        yield (
            stack.enter_context(tarfile.open(fileobj=budget, mode="r|", bufsize=TAR_BUFSIZE)),
            budget,
        )


def _too_large(max_bytes: int, quota: bool) -> HutchError:
    if quota:
        return QuotaExceeded(
            f"the root filesystem unpacks to more than the project's unpacked image quota "
            f"({format_bytes(max_bytes)}): ask an operator to raise it (hutch quota set "
            "--images-unpacked)"
        )
    return Invalid(
        f"the root filesystem unpacks to more than {format_bytes(max_bytes)}, the most an image "
        "may unpack to here (max_unpacked_bytes)"
    )


def _members(
    tar: tarfile.TarFile, budget: Budget | None = None, max_bytes: int | None = None
) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]  # a tree has many entries
        if max_bytes is not None and member.offset_data + member.size > max_bytes:
            raise _Beyond
        if budget is not None:
            budget.allow(member.size + SLACK)  # its data, then the next one's headers
        yield member


def _check_name(name: str, tarball: str) -> None:
    if name.startswith("/"):
        raise Invalid(f"{tarball}: {name!r} is an absolute path; a root filesystem's are relative")
    if ".." in name.split("/"):
        raise Invalid(f"{tarball}: {name!r} contains '..'; it would point outside the image")


def _write(
    out: BinaryIO,
    layer: IO[bytes],
    diff_id: str,
    size: int,
    *,
    config: Mapping[str, object],
    name: str | None,
) -> str:
    """The OCI archive of the one layer in `layer` (`size` bytes, digest `diff_id`) to `out`;
    the manifest digest."""
    runtime = dict(config)
    config_blob = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": _digest(config_blob),
                "size": len(config_blob),
            },
            "layers": [{"mediaType": OCI_LAYER, "digest": diff_id, "size": size}],
        }
    )
    digest = _digest(manifest)
    annotations = {}
    if name:  # as containerd and skopeo write them: the full name, and the tag alone
        ref = parse_ref(name)
        annotations = {CONTAINERD_NAME: str(ref), REF_NAME: ref.tag or "latest"}
    index = _json(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    **({"annotations": annotations} if annotations else {}),
                }
            ],
        }
    )
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", io.BytesIO(_json({"imageLayoutVersion": "1.0.0"})))
        _add(tar, "index.json", io.BytesIO(index))
        for blob in (manifest, config_blob):
            _add(tar, f"blobs/sha256/{_digest(blob)[7:]}", io.BytesIO(blob))
        layer.seek(0)
        _add(tar, f"blobs/sha256/{diff_id[7:]}", layer, size)
    return digest


def _layer(root: Path, out: IO[bytes]) -> tuple[str, int, int]:
    """The tree as an uncompressed tar in `out`; (its digest, its size, entries left out)."""
    skipped = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            mode = path.lstat().st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                skipped += 1
                continue
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uname = info.gname = ""
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym() or info.islnk():
                tar.addfile(info)
            else:  # a socket: tarfile cannot store one, and it means nothing in an image
                skipped += 1
    digest, size = _digest_written(out)
    return digest, size, skipped


def _digest_written(f: IO[bytes]) -> tuple[str, int]:
    """The digest and size of what was written to `f`, which is left at its start to be read."""
    f.flush()
    size = f.tell()
    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    f.seek(0)
    return f"sha256:{h.hexdigest()}", size


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        found.extend(base / d for d in dirnames)
        found.extend(base / f for f in sorted(filenames))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    if size is None:
        content = data.read()
        size, data = len(content), io.BytesIO(content)
    info.size = size
    info.mode = 0o644
    tar.addfile(info, data)


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
