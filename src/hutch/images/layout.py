"""Reading an OCI image layout directory: index -> manifest -> config and layers, all verified.

Both OCI and Docker v2 schema 2 media types are understood. Every blob is checked against its
descriptor's sha256 and size: JSON blobs before they are parsed, layers while they stream (so a
layer is read once and cannot change between the check and the use); `open_layer` raises after
the body if the layer did not match, and the caller must then discard what it unpacked.
"""

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from hutch.images.streams import GZIP_MAGIC, ZSTD_MAGIC, Hashing
from hutch.model.errors import Invalid, NotFound, Unavailable, Unsupported
from hutch.model.image import ImageConfig, digest_hex

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
# containerd and nerdctl record the full image name here as well.
CONTAINERD_NAME = "io.containerd.image.name"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# What a layer may be. The actual compression is read from the blob's first bytes, as Docker
# does, because mislabelled layers exist in the wild; the type only says "this is a layer".
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

# Micro-VMs and containers here run x86-64 Linux; other platforms would fail at exec time
# with an obscure error, so they are refused up front.
PLATFORM = ("linux", "amd64")

MAX_JSON_BYTES = 4 << 20  # containerd's limit for manifests and indexes
MAX_CONFIG_BYTES = 8 << 20  # configs carry history, so allow a little more
MAX_TRAILING_BYTES = 16 << 20  # data after a tar's end-of-archive marker (normally padding)
_MAX_NESTING = 4  # index -> index -> ... -> manifest
_CHUNK = 1 << 16
_GZIP_MIN_BYTES = 18  # header and trailer; the trailer's last 4 bytes are the size (ISIZE)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A pointer to a blob in the layout."""

    media_type: str
    digest: str  # "sha256:<hex>", validated
    size: int
    platform: tuple[str, str] | None = None  # (os, architecture) when the descriptor says
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    """One resolved image manifest: what to unpack and how to run it."""

    manifest_digest: str
    config: ImageConfig
    layers: tuple[Descriptor, ...]  # lowest first
    diff_ids: tuple[str, ...]  # digests of the uncompressed layers; () if the config has none


def is_oci_layout(path: Path) -> bool:
    return (path / "oci-layout").is_file()


class OciLayout:
    """An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        marker = _load_json_file(root / "oci-layout", what=f"{root}/oci-layout")
        version = marker.get("imageLayoutVersion")
        if not isinstance(version, str) or not version.startswith("1."):
            raise Unsupported(
                f"{root} is OCI image layout version {version!r}; hutch reads version 1.x"
            )

    def image(self, ref: str | None = None) -> Image:
        """The linux/amd64 image named `ref` (or the first image) with its parsed config."""
        index = _load_json_file(self.root / "index.json", what=f"{self.root}/index.json")
        manifests = parse_descriptors(index.get("manifests"), where=f"{self.root}/index.json")
        if ref is not None:
            named = [d for d in manifests if ref in _names(d)]
            if not named:
                known = sorted({n for d in manifests for n in _names(d)})
                raise NotFound(
                    f"image {ref!r} is not in {self.root}/index.json; "
                    + (f"it has: {', '.join(known)}" if known else "it names no images")
                )
            manifests = named
        return self._resolve(pick_platform(manifests, where=f"{self.root}/index.json"))

    def image_by_digest(self, digest: str) -> Image:
        """The linux/amd64 image of the manifest or index stored as blob `digest`."""
        try:
            size = os.lstat(self.root / "blobs" / "sha256" / digest_hex(digest)).st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in {self.root}") from None
        return self._resolve(Descriptor(media_type="", digest=digest, size=size))

    def _resolve(self, desc: Descriptor) -> Image:
        """Follow indexes down to this platform's manifest."""
        for _ in range(_MAX_NESTING):
            doc = self.read_json(desc, MAX_JSON_BYTES)
            kind = doc.get("mediaType") or desc.media_type
            if not isinstance(kind, str):
                raise Invalid(f"{desc.digest}: 'mediaType' must be a string")
            if kind in INDEX_TYPES or (not kind and "manifests" in doc):
                desc = pick_platform(
                    parse_descriptors(doc.get("manifests"), where=desc.digest), desc.digest
                )
                continue
            if kind in MANIFEST_TYPES or (not kind and "layers" in doc):
                return self._image(desc.digest, doc)
            if doc.get("schemaVersion") == 1:
                raise Unsupported(
                    f"manifest {desc.digest} is Docker schema 1, which is obsolete; "
                    "re-push or convert the image (e.g. with skopeo) first"
                )
            raise Unsupported(f"{desc.digest} has media type {kind!r}, which is not an image")
        raise Invalid(f"image indexes in {self.root} nest more than {_MAX_NESTING} deep")

    def _image(self, digest: str, manifest: dict[str, Any]) -> Image:
        config_desc = parse_descriptor(manifest.get("config"), where=f"manifest {digest}")
        layers = tuple(
            parse_descriptor(d, where=f"manifest {digest}")
            for d in _list(manifest, "layers", digest)
        )
        for layer in layers:
            if layer.media_type not in LAYER_TYPES:
                raise Unsupported(
                    f"layer {layer.digest} has media type {layer.media_type!r}, "
                    "which hutch cannot unpack"
                )
        doc = self.read_json(config_desc, MAX_CONFIG_BYTES)
        os_name, arch = doc.get("os"), doc.get("architecture")
        if os_name not in (None, "", PLATFORM[0]) or arch not in (None, "", PLATFORM[1]):
            raise Unsupported(
                f"image {digest} is for {os_name}/{arch}; hutch runs {'/'.join(PLATFORM)} images"
            )
        rootfs = doc.get("rootfs") or {}
        diff_ids: tuple[str, ...] = ()
        if isinstance(rootfs, dict) and rootfs.get("diff_ids") is not None:
            diff_ids = tuple(_strings(rootfs, "diff_ids", f"config {config_desc.digest}"))
            for diff_id in diff_ids:
                digest_hex(diff_id)
            if len(diff_ids) != len(layers):
                raise Invalid(
                    f"image {digest} has {len(layers)} layers but its config lists "
                    f"{len(diff_ids)} diff_ids"
                )
        return Image(digest, parse_image_config(doc, config_desc.digest), layers, diff_ids)

    def read_json(self, desc: Descriptor, limit: int) -> dict[str, Any]:
        """A JSON object blob, verified against `desc` before it is parsed."""
        if desc.size > limit:
            raise Invalid(f"blob {desc.digest} is {desc.size} bytes; the limit is {limit}")
        with self._open_blob(desc) as f:
            data = f.read(desc.size + 1)
        _verify(data, desc)
        return parse_json_object(data, what=f"blob {desc.digest}")

    @contextlib.contextmanager
    def open_layer(self, desc: Descriptor, diff_id: str | None = None) -> Iterator[BinaryIO]:
        """The layer as an uncompressed tar stream.

        After the body: the rest of the layer is read, and Invalid is raised unless the blob
        matched `desc` (and the uncompressed stream matched `diff_id`, if given). If the body
        raises, the stream is abandoned without those checks.
        """
        with self._open_blob(desc) as f:
            blob = _HashingReader(f, desc.digest, limit=desc.size, layer=desc.digest)
            buffered = io.BufferedReader(blob, _CHUNK)
            magic = buffered.peek(len(ZSTD_MAGIC))[: len(ZSTD_MAGIC)]
            with _decompressed(buffered, magic, desc.digest) as plain:
                tar = _HashingReader(plain, diff_id or desc.digest, limit=None, layer=desc.digest)
                yield cast(BinaryIO, tar)
                if tar.drain(MAX_TRAILING_BYTES):
                    raise Invalid(
                        f"layer {desc.digest} has more than {MAX_TRAILING_BYTES} bytes "
                        "after the end of its tar archive"
                    )
            while buffered.read(_CHUNK):
                pass
            blob.verify(desc.size)
            if diff_id is not None:
                tar.verify(None)

    def unpacked_size(self, desc: Descriptor) -> int:
        """About what the layer decompresses to, found without decompressing it: a gzip blob's
        trailer (the size modulo 4 GiB), an uncompressed blob's size, else four times the
        blob's. An estimate: the blob is not verified here, and a hostile one may say anything.
        """
        with self._open_blob(desc) as f:
            magic = f.read(len(ZSTD_MAGIC))
            if magic.startswith(GZIP_MAGIC) and desc.size >= _GZIP_MIN_BYTES:
                f.seek(-4, os.SEEK_END)
                return int.from_bytes(f.read(4), "little")
            if not magic.startswith(GZIP_MAGIC) and magic != ZSTD_MAGIC:
                return desc.size
        return 4 * desc.size

    def _open_blob(self, desc: Descriptor) -> IO[bytes]:
        path = self.root / "blobs" / "sha256" / digest_hex(desc.digest)
        try:
            # A blob that is a symlink could point anywhere on the host: refuse to follow it.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Invalid(
                f"blob {desc.digest} is missing from the image layout {self.root}"
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Invalid(f"blob {desc.digest} in {self.root} is a symlink") from None
            raise Unavailable(f"cannot read blob {desc.digest}: {e.strerror}") from None
        return open(fd, "rb")


def parse_image_config(doc: Mapping[str, Any], digest: str = "") -> ImageConfig:
    """The runtime part of an image config document; missing and null fields are empty."""
    where = f"image config {digest}" if digest else "image config"
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise Invalid(f"{where}: 'config' must be an object")
    user = config.get("User") or ""
    ports = config.get("ExposedPorts") or {}
    if not isinstance(ports, dict):
        raise Invalid(f"{where}: ExposedPorts must be an object")
    return ImageConfig(
        entrypoint=tuple(_strings(config, "Entrypoint", where)),
        cmd=tuple(_strings(config, "Cmd", where)),
        env=tuple(_strings(config, "Env", where)),
        working_dir=_string(config, "WorkingDir", where),
        user=str(user) if isinstance(user, int) else _string(config, "User", where),
        stop_signal=_string(config, "StopSignal", where),
        exposed_ports=tuple(sorted(str(p) for p in ports)),
    )


# -- descriptors and selection ------------------------------------------------------------------


def _names(desc: Descriptor) -> tuple[str, ...]:
    return tuple(desc.annotations[k] for k in (REF_NAME, CONTAINERD_NAME) if k in desc.annotations)


def pick_platform(descs: list[Descriptor], where: str) -> Descriptor:
    """The first descriptor for our platform; descriptors that name no platform qualify."""
    if not descs:
        raise Invalid(f"{where} lists no manifests")
    for desc in descs:
        if desc.platform is None or desc.platform == PLATFORM:
            return desc
    have = sorted({"/".join(d.platform) for d in descs if d.platform})
    raise Unsupported(
        f"{where} has no {'/'.join(PLATFORM)} image, only {', '.join(have)}; "
        f"hutch runs {'/'.join(PLATFORM)} images"
    )


def parse_descriptors(value: object, where: str) -> list[Descriptor]:
    if not isinstance(value, list):
        raise Invalid(f"{where}: 'manifests' must be a list")
    return [parse_descriptor(v, where) for v in value]


def parse_descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise Invalid(f"{where}: a descriptor must be an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(digest, str):
        raise Invalid(f"{where}: a descriptor has no digest")
    digest_hex(digest)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Invalid(f"{where}: descriptor {digest} has no valid size")
    platform = value.get("platform")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise Invalid(f"{where}: annotations of {digest} must be an object")
    return Descriptor(
        media_type=media_type if isinstance(media_type, str) else "",
        digest=digest,
        size=size,
        platform=(str(platform.get("os")), str(platform.get("architecture")))
        if isinstance(platform, dict)
        else None,
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def _list(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"{where}: {key!r} must be a list")
    return value


def _strings(doc: Mapping[str, Any], key: str, where: str) -> list[str]:
    values = doc.get(key)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise Invalid(f"{where}: {key} must be a list of strings")
    return values


def _string(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Invalid(f"{where}: {key} must be a string")
    return value


# -- JSON and verification ----------------------------------------------------------------------


def _load_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise Invalid(f"{what} is missing: not a complete OCI image layout") from None
    except OSError as e:
        raise Invalid(f"cannot read {what}: {e.strerror}") from None
    if len(data) > MAX_JSON_BYTES:
        raise Invalid(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    return parse_json_object(data, what)


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise Invalid(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Invalid(f"{what} is not a JSON object")
    return doc


def _verify(data: bytes, desc: Descriptor) -> None:
    if len(data) != desc.size:
        raise Invalid(
            f"blob {desc.digest} does not match its descriptor: "
            f"{'more' if len(data) > desc.size else 'fewer'} than {desc.size} bytes"
        )
    if hashlib.sha256(data).hexdigest() != digest_hex(desc.digest):
        raise Invalid(f"blob {desc.digest} does not match its digest: the image is corrupt")


class _HashingReader(Hashing):
    """Reads through `source`, hashing (and optionally size-limiting) everything read.

    Decompression errors from `source` become Invalid naming the layer.
    """

    def __init__(self, source: IO[bytes], digest: str, limit: int | None, layer: str) -> None:
        super().__init__(source)
        self._digest = digest
        self._layer = layer
        self._limit = limit

    def pull(self, size: int) -> bytes:
        try:
            return super().pull(size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise Invalid(f"layer {self._layer} cannot be decompressed: {e}") from None

    def seen(self, data: bytes) -> None:
        if self._limit is not None and self.count + len(data) > self._limit:
            raise Invalid(
                f"blob {self._digest} does not match its descriptor: more than {self._limit} bytes"
            )
        super().seen(data)

    def drain(self, limit: int) -> bool:
        """Read to the end; True if more than `limit` bytes were left (reading stops there)."""
        left = 0
        while chunk := self.read(_CHUNK):
            left += len(chunk)
            if left > limit:
                return True
        return False

    def verify(self, size: int | None) -> None:
        if size is not None and self.count != size:
            raise Invalid(
                f"blob {self._digest} does not match its descriptor: {self.count} bytes, not {size}"
            )
        if self.hash.hexdigest() != digest_hex(self._digest):
            what = "blob" if size is not None else "uncompressed layer"
            raise Invalid(f"{what} {self._digest} does not match its digest: the image is corrupt")


@contextlib.contextmanager
def _decompressed(raw: IO[bytes], magic: bytes, digest: str) -> Iterator[IO[bytes]]:
    if magic.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            yield cast(IO[bytes], gz)
    elif magic == ZSTD_MAGIC:
        with _zstd(raw, digest) as stream:
            yield stream
    else:
        yield raw


@contextlib.contextmanager
def _zstd(raw: IO[bytes], digest: str) -> Iterator[IO[bytes]]:
    """Decompress through the `zstd` tool (the stdlib has no zstd before Python 3.14)."""
    tool = shutil.which("zstd")
    if tool is None:
        raise Unsupported(
            f"layer {digest} is zstd-compressed and the zstd tool is not installed: install zstd"
        )
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [tool, "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        assert proc.stdin is not None and proc.stdout is not None
        failure: list[BaseException] = []
        stdin = proc.stdin

        def feed() -> None:
            try:
                while chunk := raw.read(_CHUNK):
                    stdin.write(chunk)
            except BrokenPipeError:
                pass  # zstd stopped (or was stopped); its exit status tells why
            except BaseException as e:  # re-raised in the caller's thread
                failure.append(e)
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()

        feeder = threading.Thread(target=feed, name=f"zstd-feed-{digest[7:19]}", daemon=True)
        feeder.start()
        body_error: BaseException | None = None
        try:
            yield proc.stdout
        except BaseException as e:
            body_error = e
            proc.kill()
        finally:
            proc.stdout.close()
            rc = proc.wait()
            feeder.join()
        # A failure reading the blob (e.g. it is larger than its descriptor) is the cause of
        # whatever the truncated stream did to the body, so it wins.
        if failure:
            raise failure[0] from body_error
        if body_error is not None:
            raise body_error
        if rc != 0:
            stderr.seek(0)
            lines = stderr.read().decode(errors="replace").strip().splitlines()
            raise Invalid(
                f"layer {digest} is not valid zstd: {lines[-1] if lines else f'exit status {rc}'}"
            )
