"""Image archives: import a tar of images into the store, export one image as an OCI archive.

Three formats are read, from a single pass over a stream (a pipe or stdin is fine), plain or
compressed with gzip, bzip2 or xz:

    OCI archive        a tar of an OCI image layout (`skopeo copy ... oci-archive:FILE`)
    docker save        manifest.json, <id>/layer.tar, <config>.json (Docker 1.10 to 24, podman)
    docker save, 25+   an OCI layout plus manifest.json: read as OCI

Members arrive in any order (docker save writes manifest.json after the layers), so every member
that may be a blob goes into the store while it streams past, hashed as it is written, and the
references are resolved when the stream ends. Only the small metadata files are held in memory.

An archive is hostile until proven otherwise. Nothing is ever written under a member's name, only
into the store under the digest of what was read; an archive with absolute or `..` paths, links,
devices, a blob that does not match its name, two different members of one name, an oversized
header or JSON file, more than `max_bytes` uncompressed or too many members is refused. On any
refusal no image is recorded; blobs already verified may stay in the store, where `ImageStore.gc`
removes them.
"""

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Self, cast

from hutch.images.layout import (
    CONTAINERD_NAME,
    MAX_CONFIG_BYTES,
    MAX_JSON_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    PLATFORM,
    REF_NAME,
    Descriptor,
    Image,
    parse_descriptors,
    parse_json_object,
    pick_platform,
)
from hutch.images.store import Allowance, ImageStore, StoredImage
from hutch.images.streams import BZIP2_MAGIC, GZIP_MAGIC, XZ_MAGIC, ZSTD_MAGIC, Hashing, Through
from hutch.model.errors import Invalid, NotFound, Unsupported
from hutch.model.image import digest_hex, parse_ref

MAX_MEMBERS = 100_000
# tarfile reads a pax or GNU long-name header into memory whole; real ones are a few hundred bytes.
_MAX_HEADER_BYTES = 1 << 20
_MAX_NESTING = 4  # index -> index -> ... -> manifest, as layout.py follows them
_MAX_GLOBAL_PAX_KEYS = 1000  # global pax headers apply to, and are kept for, the rest
TAR_BUFSIZE = 64 << 10  # tarfile's read size in stream mode: how far it reads ahead
# What tarfile may read beyond a member's data: padding, the next member's headers, read-ahead.
SLACK = _MAX_HEADER_BYTES + 2 * TAR_BUFSIZE
_CHUNK = 1 << 20
_METADATA = frozenset({"oci-layout", "index.json", "manifest.json", "repositories"})
# Docker's v1 metadata beside each <id>/layer.tar: nothing reads it, so it is not stored.
_LEGACY_METADATA = frozenset({"json", "VERSION"})
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")  # distribution/reference's tag grammar
_EXTENDED_HEADERS = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}


def import_archive(
    stream: BinaryIO,
    store: ImageStore,
    *,
    project: str,
    public: bool = False,
    names: Sequence[str] = (),
    max_bytes: int = 8 << 30,
    allowance: Allowance | None = None,
) -> list[StoredImage]:
    """Read an image archive from `stream` (once, in order) and record its images for `project`.

    Names: `names` if given, which needs an archive of exactly one image; otherwise the
    archive's own. docker save's RepoTags are full references. In an OCI archive a manifest's
    `io.containerd.image.name` annotation is the full reference when present; otherwise its
    `org.opencontainers.image.ref.name` is used if it is a reference ("busybox:1.36",
    "registry.test/app:1"). A bare ref.name ("latest", "v1") is only a tag within a layout,
    with no repository to attach it to, so such an image is recorded unnamed, reachable by its
    digest, and can be named on import with `names`. An invalid name refuses the archive.

    Indexes resolve to the linux/amd64 manifest, which is what is recorded; top-level entries
    for other platforms are skipped. Every blob an image uses must be in the archive, even one
    the store already holds: a digest alone does not give a project another project's layer.
    Returns the images in archive order, each once. Raises Invalid (Unsupported for formats
    or platforms hutch does not run) and records nothing if any image is refused.
    """
    if isinstance(names, str):
        names = (names,)
    contents = _read(stream, store, max_bytes)
    found = _find_images(contents, store)
    if names:
        if len(found) != 1:
            raise Invalid(
                f"the archive holds {len(found)} images; names can only be given for an archive "
                "of one image (import without names to keep the archive's own)"
            )
        ((digest, image),) = found.items()
        found = {digest: _Found(image.digests, tuple(names), "the names given")}
    checked = {
        digest: _canonical_names(image.names, image.digests, image.where)
        for digest, image in found.items()
    }
    return [
        store.add_image(
            digest, names=list(image_names), project=project, public=public, allowance=allowance
        )
        for digest, image_names in checked.items()
    ]


def export_archive(
    store: ImageStore, digest: str, out: BinaryIO, *, name: str | None = None
) -> None:
    """Write the image `digest` (a manifest, or an index resolved to linux/amd64) to `out` as an
    OCI archive: oci-layout, an index.json of one manifest, and its blobs.

    `name` is a full reference or a bare tag: as containerd and Docker 25 do, a reference goes
    into `io.containerd.image.name` and its tag into `org.opencontainers.image.ref.name`, so
    `skopeo ... oci-archive:FILE:TAG` and importers that know either annotation find it.
    The tar is written in stream mode (`out` need not be seekable), in a fixed member order with
    zero times and owners, so exporting the same image twice gives the same bytes. Raises
    NotFound if the store has no such image, Invalid if a stored blob is corrupt; after a
    failure `out` holds part of an archive and must be discarded.
    """
    annotations = _export_annotations(name) if name is not None else {}
    digest_hex(digest)
    if not store.has_blob(digest):
        raise NotFound(f"no image {digest} in this store (pull or import it first)")
    image = store.image(digest)
    manifest_data = _read_stored(store, image.manifest_digest, MAX_JSON_BYTES)
    manifest = json.loads(manifest_data)
    blobs = dict(_image_blobs(store, image))
    for blob, size in blobs.items():
        if not store.has_blob(blob):
            raise NotFound(
                f"blob {blob} of image {digest} is missing from the store: "
                "pull or import the image again"
            )
        if store.blob_path(blob).stat().st_size != size:
            raise Invalid(f"blob {blob} in the store is not {size} bytes: the store is corrupt")
    descriptor: dict[str, Any] = {
        "mediaType": manifest.get("mediaType") or OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": len(manifest_data),
        "platform": {"architecture": PLATFORM[1], "os": PLATFORM[0]},
    }
    if annotations:
        descriptor["annotations"] = annotations
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        # Lexical order, as docker save and skopeo write it.
        _add_directory(tar, "blobs")
        _add_directory(tar, "blobs/sha256")
        for blob in sorted(blobs):
            _add_blob(tar, store, blob, blobs[blob])
        _add_bytes(tar, "index.json", _dumps(index))
        _add_bytes(tar, "oci-layout", _dumps({"imageLayoutVersion": "1.0.0"}))


# -- reading the stream -------------------------------------------------------------------------


@dataclass(slots=True)
class _Contents:
    """What the stream held: blobs (now in the store) by member path, metadata files."""

    paths: dict[str, str] = field(default_factory=dict)  # member path -> digest
    sizes: dict[str, int] = field(default_factory=dict)  # digest -> size, for every blob read
    metadata: dict[str, bytes] = field(default_factory=dict)  # index.json, manifest.json, ...


def _read(stream: BinaryIO, store: ImageStore, max_bytes: int) -> _Contents:
    contents = _Contents()
    count = 0
    source, compressed = decompressed(stream)
    reader = Budget(source, max_bytes, compressed)
    try:
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=_TarInfo, bufsize=TAR_BUFSIZE) as tar:
            while (member := tar.next()) is not None:
                # Stream mode keeps every header read, and global pax headers accumulate.
                tar.members.clear()  # type: ignore[attr-defined]
                count += 1
                if count > MAX_MEMBERS:
                    raise Invalid(f"the archive has more than {MAX_MEMBERS} members")
                if len(tar.pax_headers) > _MAX_GLOBAL_PAX_KEYS:
                    raise Invalid(f"the archive has more than {_MAX_GLOBAL_PAX_KEYS} pax headers")
                if member.offset_data + member.size > max_bytes:
                    raise Invalid(_too_large(max_bytes))
                reader.allow(member.size + SLACK)
                path = _member_path(member)
                if member.isdir():
                    continue
                if not member.isreg() or member.sparse is not None or not path:
                    kind = "sparse file" if member.sparse is not None else "special file"
                    kind = _KINDS.get(member.type, kind if path else "file without a name")
                    raise Invalid(
                        f"archive member {member.name!r} is a {kind}: an image archive holds "
                        "only files and directories"
                    )
                data = tar.extractfile(member)
                assert data is not None  # a regular file always has data
                _take(path, member.size, cast(BinaryIO, data), store, contents)
    except RecursionError:
        raise Invalid("the archive chains too many extended tar headers") from None
    except (tarfile.TarError, EOFError, ValueError) as e:  # ValueError: malformed pax values
        if count == 0:
            raise Invalid(f"not an image archive: {e}") from None
        raise Invalid(f"the archive is damaged or truncated: {e}") from None
    return contents


def _take(path: str, size: int, data: BinaryIO, store: ImageStore, contents: _Contents) -> None:
    """Keep one member: metadata in memory, anything that may be a blob in the store."""
    if path in _METADATA:
        if size > MAX_JSON_BYTES:
            raise Invalid(f"{path} in the archive is {size} bytes; the limit is {MAX_JSON_BYTES}")
        body = data.read()
        if contents.metadata.setdefault(path, body) != body:
            raise Invalid(f"the archive has two different members named {path!r}")
        return
    parts = path.split("/")
    if len(parts) == 2 and parts[1] in _LEGACY_METADATA:
        return  # skipped: tarfile reads past it (counted) before the next header
    named = _BLOB.match(path)
    if path.startswith("blobs/") and not named:
        raise Invalid(
            f"archive member {path!r} is not a blob: blobs are blobs/sha256/<64 hex digits>"
        )
    expected = f"sha256:{named[1]}" if named else None
    if expected is not None and store.has_blob(expected):
        digest, length = _hash_only(data, expected)  # already stored: check, don't rewrite
    else:
        digest, length = store.ingest(data, expected)
    if contents.paths.setdefault(path, digest) != digest:
        raise Invalid(f"the archive has two different members named {path!r}")
    contents.sizes[digest] = length


def _hash_only(data: IO[bytes], expected: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := data.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    actual = f"sha256:{h.hexdigest()}"
    if actual != expected:
        raise Invalid(f"blob {expected} does not match its digest (got {actual})")
    return actual, size


def _member_path(member: tarfile.TarInfo) -> str:
    return _clean_path(member.name, f"archive member {member.name!r}")


def _clean_path(name: str, what: str) -> str:
    """`name` relative to the archive's root, normalised ("./a//b" is "a/b")."""
    if name.startswith("/"):
        raise Invalid(f"{what} is an absolute path: an image archive's paths are relative")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Invalid(f"{what} has a '..' component: an image archive's paths stay inside it")
    return "/".join(parts)


def _too_large(max_bytes: int) -> str:
    return f"the archive is larger than {max_bytes} bytes uncompressed, the import limit"


class _TarInfo(tarfile.TarInfo):
    """tarfile's headers, refusing those it would buffer without bound: oversized pax and GNU
    long-name headers (read into memory whole) and old GNU sparse files (unbounded maps)."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXTENDED_HEADERS and info.size > _MAX_HEADER_BYTES:
            raise Invalid(
                f"the archive has a {info.size}-byte extended tar header; "
                f"the limit is {_MAX_HEADER_BYTES}"
            )
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise Invalid(f"archive member {info.name!r} is a sparse file: not an image archive")
        return info


def decompressed(stream: BinaryIO) -> tuple[IO[bytes], bool]:
    """The archive's tar stream, decompressed by its first bytes (the stream is read once)."""
    head = b""
    while len(head) < len(XZ_MAGIC) and (chunk := stream.read(len(XZ_MAGIC) - len(head))):
        head += chunk
    raw = io.BufferedReader(_Prefixed(head, stream), _CHUNK)
    if head.startswith(GZIP_MAGIC):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), True
    if head.startswith(BZIP2_MAGIC):
        return cast(IO[bytes], bz2.BZ2File(raw)), True
    if head.startswith(XZ_MAGIC):
        return cast(IO[bytes], lzma.LZMAFile(raw)), True
    if head.startswith(ZSTD_MAGIC):
        raise Unsupported("the archive is zstd-compressed: decompress it first (zstd -d)")
    return raw, False


class _Prefixed(Through):
    """`head`, then the rest of `rest`."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__(rest)
        self._head = head

    def pull(self, size: int) -> bytes:
        if not self._head:
            return super().pull(size)
        data, self._head = self._head[:size], self._head[size:]
        return data


class Budget(Through):
    """The uncompressed archive, counted: more than `limit` bytes in all is refused (a
    decompression bomb), and so is reading more than the last `allow` granted, which bounds what
    tarfile can read (and buffer) while it parses a member's headers."""

    def __init__(self, source: IO[bytes], limit: int, compressed: bool) -> None:
        super().__init__(source)
        self._limit = limit
        self._compressed = compressed
        self._window = SLACK  # the first member's headers
        self.total = 0

    def allow(self, size: int) -> None:
        self._window = size

    def pull(self, size: int) -> bytes:
        try:
            return super().pull(size)
        except (EOFError, zlib.error, lzma.LZMAError) as e:
            raise Invalid(f"the archive cannot be decompressed: {e}") from None
        except OSError as e:  # gzip and bz2 report corrupt data as OSError
            if not self._compressed:
                raise
            raise Invalid(f"the archive cannot be decompressed: {e}") from None

    def seen(self, data: bytes) -> None:
        self.total += len(data)
        self._window -= len(data)
        if self.total > self._limit:
            raise Invalid(_too_large(self._limit))
        if self._window < 0:
            raise Invalid("the archive has a tar header too large to be an image archive's")


# -- finding the images -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    digests: frozenset[str]  # the manifest and the index it was reached from, if any
    names: tuple[str, ...]  # as the archive (or caller) wrote them, not yet checked
    where: str  # where the names come from, for messages


def _find_images(contents: _Contents, store: ImageStore) -> dict[str, _Found]:
    """The archive's images by manifest digest (archive order), each checked complete."""
    meta = contents.metadata
    if "index.json" in meta and "oci-layout" in meta:
        index = _json_object(meta, "index.json")
        # Docker 25+ lists only tagged images in index.json; manifest.json has them all.
        if index.get("manifests") or "manifest.json" not in meta:
            return _oci_images(contents, store, index)
    if "manifest.json" in meta:
        return _docker_images(contents, store)
    raise Invalid(
        "not an image archive: it has neither oci-layout and index.json (an OCI archive) "
        "nor manifest.json (docker save)"
    )


def _oci_images(
    contents: _Contents, store: ImageStore, index: Mapping[str, Any]
) -> dict[str, _Found]:
    marker = _json_object(contents.metadata, "oci-layout")
    version = marker.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise Unsupported(f"the archive is OCI image layout version {version!r}; hutch reads 1.x")
    descriptors = parse_descriptors(index.get("manifests"), where="index.json in the archive")
    if not descriptors:
        raise Invalid("the archive's index.json lists no images")
    ours = [d for d in descriptors if d.platform in (None, PLATFORM)]
    if not ours:
        have = sorted({"/".join(d.platform) for d in descriptors if d.platform})
        raise Unsupported(
            f"the archive has no {'/'.join(PLATFORM)} image, only {', '.join(have)}; "
            f"hutch runs {'/'.join(PLATFORM)} images"
        )
    found: dict[str, list[str]] = {}
    reached: dict[str, set[str]] = {}
    for desc in ours:
        _check_references(contents, store, desc)
        image = store.image(desc.digest)  # an index resolves to its linux/amd64 manifest
        for blob, size in _image_blobs(store, image):
            _check_held(contents, blob, size, f"image {image.manifest_digest}")
        found.setdefault(image.manifest_digest, []).extend(_oci_names(desc.annotations))
        reached.setdefault(image.manifest_digest, {image.manifest_digest}).add(desc.digest)
    return {
        digest: _Found(frozenset(reached[digest]), tuple(names), "index.json in the archive")
        for digest, names in found.items()
    }


def _check_references(contents: _Contents, store: ImageStore, desc: Descriptor) -> None:
    """Check that the blobs `store.image` will read for `desc` came in the archive, following
    the same path (the linux/amd64 entry of each index). Only presence is checked here: a
    malformed document is left for `store.image` to refuse with its own reasons."""
    where = "index.json"
    for _ in range(_MAX_NESTING):
        _check_held(contents, desc.digest, desc.size, where)
        doc = parse_json_object(_read_stored(store, desc.digest, MAX_JSON_BYTES), desc.digest)
        where = f"{'index' if 'manifests' in doc else 'manifest'} {desc.digest}"
        if isinstance(doc.get("manifests"), list):
            desc = pick_platform(parse_descriptors(doc["manifests"], where=where), where)
            continue
        config, layers = doc.get("config"), doc.get("layers")
        for ref in [config, *(layers if isinstance(layers, list) else [])]:
            if isinstance(ref, dict) and isinstance(ref.get("digest"), str):
                _check_held(contents, ref["digest"], ref.get("size"), where)
        return


def _oci_names(annotations: Mapping[str, str]) -> list[str]:
    if full := annotations.get(CONTAINERD_NAME):
        return [full]
    ref = annotations.get(REF_NAME, "")
    if any(c in ref for c in "/:@"):
        return [ref]
    return []  # a bare tag names no repository: the image is pinned by its digest


def _docker_images(contents: _Contents, store: ImageStore) -> dict[str, _Found]:
    entries = _json(contents.metadata, "manifest.json")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise Invalid("manifest.json in the archive is not a list of objects")
    if not entries:
        raise Invalid("the archive's manifest.json lists no images")
    found: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        where = f"manifest.json entry {i}"
        config_path, layer_paths = entry.get("Config"), entry.get("Layers")
        tags = entry.get("RepoTags") or []
        if not isinstance(config_path, str):
            raise Invalid(f"{where} has no Config")
        if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
            raise Invalid(f"{where}: Layers must be a list of paths")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise Invalid(f"{where}: RepoTags must be a list of strings")
        config = _member(contents, config_path, where)
        layers = [_member(contents, p, where) for p in layer_paths]
        digest = _docker_manifest(contents, store, config, layers, where)
        found.setdefault(digest, []).extend(tags)
    return {
        digest: _Found(frozenset({digest}), tuple(tags), "manifest.json in the archive")
        for digest, tags in found.items()
    }


def _docker_manifest(
    contents: _Contents, store: ImageStore, config: str, layers: list[str], where: str
) -> str:
    """Store an OCI manifest for a docker save image (config and layers already stored), after
    checking uncompressed layers against the config's diff_ids; its digest."""
    config_size = contents.sizes[config]
    if config_size > MAX_CONFIG_BYTES:
        raise Invalid(f"config {config} is {config_size} bytes; the limit is {MAX_CONFIG_BYTES}")
    doc = parse_json_object(_read_stored(store, config, MAX_CONFIG_BYTES), f"config {config}")
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise Invalid(
            f"{where}: config {config} does not list one rootfs.diff_id per layer "
            f"({len(layers)} layers): the archive is corrupt"
        )
    descriptors = []
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        media_type = _layer_media_type(store, layer)
        if media_type == "application/vnd.oci.image.layer.v1.tar" and layer != diff_id:
            # Compressed layers are checked against their diff_id when they are unpacked.
            raise Invalid(
                f"{where}: layer {layer} does not match the diff_id {diff_id!r} its config "
                "lists: the archive is corrupt"
            )
        descriptors.append(
            {"mediaType": media_type, "digest": layer, "size": contents.sizes[layer]}
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": config_size},
        "layers": descriptors,
    }
    digest = store.put_blob(_dumps(manifest))
    store.image(digest)  # refuse it now (platform, config) rather than half-way through adding
    return digest


def _layer_media_type(store: ImageStore, digest: str) -> str:
    """As Docker does, the compression is read from the layer's first bytes."""
    with open(store.blob_path(digest), "rb") as f:
        magic = f.read(len(ZSTD_MAGIC))
    if magic.startswith(GZIP_MAGIC):
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if magic == ZSTD_MAGIC:
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


def _member(contents: _Contents, path: str, where: str) -> str:
    """The digest of the blob a manifest.json path names."""
    clean = _clean_path(path, f"{where}: path {path!r}")
    digest = contents.paths.get(clean)
    if digest is None:
        raise Invalid(f"{where} refers to {path!r}, which is not in the archive")
    return digest


def _check_held(contents: _Contents, digest: str, size: object, where: str) -> None:
    actual = contents.sizes.get(digest)
    if actual is None:
        raise Invalid(f"{where} refers to blob {digest}, which is not in the archive")
    if actual != size:
        raise Invalid(f"{where} says blob {digest} is {size} bytes; the archive's is {actual}")


def _image_blobs(store: ImageStore, image: Image) -> list[tuple[str, int]]:
    """(digest, size) of an image's manifest, config and layers; the manifest is verified."""
    manifest_data = _read_stored(store, image.manifest_digest, MAX_JSON_BYTES)
    config = json.loads(manifest_data)["config"]  # store.image has validated the manifest
    return [
        (image.manifest_digest, len(manifest_data)),
        (config["digest"], config["size"]),
        *((layer.digest, layer.size) for layer in image.layers),
    ]


def _canonical_names(names: Iterable[str], digests: frozenset[str], where: str) -> tuple[str, ...]:
    out = []
    for name in names:
        try:
            ref = parse_ref(name)
        except (Invalid, Unsupported) as e:
            raise Invalid(f"{where}: {name!r} is not a valid image name: {e.message}") from None
        if ref.digest and ref.digest not in digests:
            raise Invalid(
                f"{where}: {name!r} pins another image's digest; name the image by repository "
                "and tag (it stays reachable by its own digest)"
            )
        out.append(str(ref))
    return tuple(dict.fromkeys(out))


def _json(metadata: Mapping[str, bytes], name: str) -> object:
    try:
        return json.loads(metadata[name])
    except (ValueError, RecursionError) as e:
        raise Invalid(f"{name} in the archive is not valid JSON: {e}") from None


def _json_object(metadata: Mapping[str, bytes], name: str) -> dict[str, Any]:
    return parse_json_object(metadata[name], f"{name} in the archive")


def _read_stored(store: ImageStore, digest: str, limit: int) -> bytes:
    """A small blob from the store, checked against its digest again as it is read."""
    with open(store.blob_path(digest), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Invalid(f"blob {digest} is larger than {limit} bytes")
    if hashlib.sha256(data).hexdigest() != digest_hex(digest):
        raise Invalid(f"blob {digest} in the store does not match its digest: the store is corrupt")
    return data


# -- writing ------------------------------------------------------------------------------------


def _export_annotations(name: str) -> dict[str, str]:
    if not any(c in name for c in "/:@"):
        if not _TAG.match(name):
            raise Invalid(f"{name!r} is neither an image reference nor a tag")
        return {REF_NAME: name}
    ref = parse_ref(name)
    annotations = {CONTAINERD_NAME: str(ref)}
    if ref.tag:
        annotations[REF_NAME] = ref.tag
    return annotations


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _tarinfo(name: str, kind: bytes, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_directory(tar: tarfile.TarFile, name: str) -> None:
    tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0, 0o755))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, tarfile.REGTYPE, len(data), 0o644), io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, store: ImageStore, digest: str, size: int) -> None:
    """Copy a blob into the archive, hashing it on the way: a blob that rotted on disk fails
    the export instead of producing an archive that every reader refuses."""
    info = _tarinfo(f"blobs/sha256/{digest_hex(digest)}", tarfile.REGTYPE, size, 0o644)
    fd = os.open(store.blob_path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        hashing = Hashing(f)
        tar.addfile(info, hashing)
    if hashing.hash.hexdigest() != digest_hex(digest):
        raise Invalid(f"blob {digest} in the store does not match its digest: the store is corrupt")
