"""Build small OCI image layouts for tests (OCI or Docker media types, gzip/zstd/plain layers)."""

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

REF_NAME = "org.opencontainers.image.ref.name"
_OCI = {
    "index": "application/vnd.oci.image.index.v1+json",
    "manifest": "application/vnd.oci.image.manifest.v1+json",
    "config": "application/vnd.oci.image.config.v1+json",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
_DOCKER = {
    "index": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifest": "application/vnd.docker.distribution.manifest.v2+json",
    "config": "application/vnd.docker.container.image.v1+json",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def tar_directory(path: Path) -> bytes:
    """An uncompressed tar of everything under `path` (not `path` itself), in sorted order,
    with owners, modes, times, symlinks and hard links as on disk."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(path.iterdir()):
            tar.add(child, arcname=child.name, recursive=True)
    return buf.getvalue()


def write_blob(dest: Path, data: bytes) -> str:
    """Store `data` under blobs/sha256 and return its digest."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}"


def blob_path(dest: Path, digest: str) -> Path:
    return dest / "blobs" / "sha256" / digest.removeprefix("sha256:")


def write_oci_layout(
    dest: Path,
    layers: list[bytes | Path],
    config: dict[str, Any],
    *,
    docker_media_types: bool = False,
    index_of_index: bool = False,
    ref: str | None = None,
    compression: str = "gzip",
    platform: tuple[str, str] = ("linux", "amd64"),
) -> str:
    """Write an image into the layout at `dest` and return its manifest digest.

    `layers` are uncompressed tar archives (bytes) or directories to tar (Path), lowest first.
    `config` is the image's runtime config (the "config" object: Entrypoint, Cmd, Env, ...).
    `compression` is "gzip", "zstd" or "none" (Docker media types always use gzip).
    With `index_of_index`, index.json points to an image index (manifest list) holding a
    linux/arm64 decoy first and then this image. If `dest` already has an index.json, the
    image is added to it, so several calls build a multi-image layout; `ref` sets the
    org.opencontainers.image.ref.name annotation.
    """
    types = _DOCKER if docker_media_types else _OCI
    if docker_media_types:
        compression = "gzip"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    layer_descs, diff_ids = [], []
    for layer in layers:
        raw = tar_directory(layer) if isinstance(layer, Path) else layer
        diff_ids.append(f"sha256:{hashlib.sha256(raw).hexdigest()}")
        blob = _compress(raw, compression)
        layer_descs.append(_desc(dest, types[compression], blob))

    manifest = _image_manifest(
        dest,
        types=types,
        layers=layer_descs,
        config=config,
        diff_ids=diff_ids,
        platform=platform,
    )
    digest = manifest["digest"]
    top = manifest
    if index_of_index:
        decoy = _image_manifest(
            dest,
            types=types,
            layers=[],
            config={"Cmd": ["decoy"]},
            diff_ids=[],
            platform=("linux", "arm64"),
        )
        decoy["platform"] = {"os": "linux", "architecture": "arm64"}
        manifest["platform"] = {"os": platform[0], "architecture": platform[1]}
        index = {"schemaVersion": 2, "mediaType": types["index"], "manifests": [decoy, manifest]}
        top = _desc(dest, types["index"], _json(index))
    if ref is not None:
        top = {**top, "annotations": {REF_NAME: ref}}

    index_path = dest / "index.json"
    if index_path.exists():
        doc = json.loads(index_path.read_text())
    else:
        doc = {"schemaVersion": 2, "mediaType": _OCI["index"], "manifests": []}
    doc["manifests"].append(top)
    index_path.write_text(json.dumps(doc, indent=2))
    return str(digest)


def _image_manifest(
    dest: Path,
    *,
    types: dict[str, str],
    layers: list[dict[str, Any]],
    config: dict[str, Any],
    diff_ids: list[str],
    platform: tuple[str, str],
) -> dict[str, Any]:
    config_doc = {
        "os": platform[0],
        "architecture": platform[1],
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": _desc(dest, types["config"], _json(config_doc)),
        "layers": layers,
    }
    return _desc(dest, types["manifest"], _json(manifest))


def _desc(dest: Path, media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": write_blob(dest, data), "size": len(data)}


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


def _compress(raw: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=raw, capture_output=True, check=True
        ).stdout
    if compression == "none":
        return raw
    raise ValueError(f"unknown compression {compression!r}")
