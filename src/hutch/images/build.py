"""A one-layer OCI image from a root directory (what `docker import` does), as an OCI archive.

Deterministic: entries sorted, owners numeric, times kept; the same tree gives the same digests.
"""

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, BinaryIO

from hutch.model.errors import Invalid
from hutch.model.image import parse_ref

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def default_config(rootfs: Path) -> dict[str, object]:
    """What a plain root directory runs by default: its shell, with a usual PATH."""
    sh = rootfs / "bin" / "sh"
    shell = ["/bin/sh"] if sh.exists() or sh.is_symlink() else []
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"Cmd": shell, "Env": [path]}


def write_archive(
    rootfs: Path,
    out: BinaryIO,
    *,
    name: str | None = None,
    config: Mapping[str, object] | None = None,
) -> str:
    """Write an OCI archive of `rootfs` as one layer to `out`; the manifest digest."""
    if not rootfs.is_dir():
        raise Invalid(f"{rootfs} is not a directory")
    with tempfile.TemporaryFile() as layer:
        diff_id, size = _layer(rootfs, layer)
        runtime = dict(config if config is not None else default_config(rootfs))
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


def _layer(root: Path, out: IO[bytes]) -> tuple[str, int]:
    """The tree as an uncompressed tar in `out`; (its digest, its size)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uname = info.gname = ""
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISCHR(info.mode) or stat.S_ISBLK(info.mode) or info.isfifo():
                raise Invalid(f"{path}: device nodes and FIFOs cannot go into an image")
            else:
                tar.addfile(info)
    out.flush()
    size = out.tell()
    out.seek(0)
    h = hashlib.sha256()
    while chunk := out.read(1 << 20):
        h.update(chunk)
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
