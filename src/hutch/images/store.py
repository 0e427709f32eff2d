"""The node's image store: an OCI image layout on disk and a small SQLite index beside it.

    root/oci-layout, index.json   a valid OCI image layout: skopeo and umoci can read the store
    root/blobs/sha256/<hex>       every blob once, shared by every image that uses it
    root/partial/<hex>            downloads in progress: resumed later, never used unverified
    root/store.db                 images, the blobs each uses, and their names per project

Blobs enter only verified (hashed while written, renamed into place), so a blob under its final
name is always whole and correct. An image is the manifest for this platform; names (repository
and tag, or a pinned digest) belong to a project, and a public name is visible to every project.
An image no name refers to is garbage, and so is a blob no image uses: `gc` removes both.
Whoever writes blobs for an image it has not added yet (a pull, an import) holds `session()`,
so a concurrent `gc` waits instead of taking those blobs away.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hutch.images.layout import REF_NAME, Image, OciLayout
from hutch.model.errors import Conflict, Invalid, NotFound
from hutch.model.image import ImageConfig, digest_hex, parse_ref

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,        -- the platform manifest's digest
    size INTEGER NOT NULL,          -- manifest + config + layers, as stored (compressed)
    layers INTEGER NOT NULL,        -- as the manifest lists them (a layer may repeat)
    created REAL NOT NULL,
    config TEXT NOT NULL            -- ImageConfig as JSON, for listings without reading blobs
);
CREATE TABLE IF NOT EXISTS image_blobs (
    image TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    blob TEXT NOT NULL,
    PRIMARY KEY (image, blob)
);
CREATE TABLE IF NOT EXISTS names (
    project TEXT NOT NULL,
    name TEXT NOT NULL,             -- canonical reference, or "@sha256:..." for a digest pin
    image TEXT NOT NULL REFERENCES images(digest),
    public INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE INDEX IF NOT EXISTS names_by_image ON names(image);
CREATE INDEX IF NOT EXISTS blobs_by_blob ON image_blobs(blob);
"""
_CHUNK = 1 << 20
_SHORT_ID = 12  # like docker: enough hex digits to name an image


@dataclass(frozen=True, slots=True)
class StoredImage:
    digest: str  # manifest digest: the image's identity
    names: tuple[str, ...]  # the references a project sees for it (canonical form)
    size: int
    created: float
    config: ImageConfig
    layers: int
    public: bool  # some name makes it visible to every project

    @property
    def short_id(self) -> str:
        return digest_hex(self.digest)[:_SHORT_ID]


@dataclass(frozen=True, slots=True)
class GcReport:
    images: tuple[str, ...]  # digests of the images removed
    blobs: int
    bytes: int


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        for d in (root, root / "blobs" / "sha256", root / "partial", root / "locks"):
            d.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # image contents are the tenants' own
        if not (root / "oci-layout").exists():
            _atomic_write(root / "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        if not (root / "index.json").exists():
            self._write_index([])
        with self._db() as db:
            db.executescript(_SCHEMA)

    # -- blobs ------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Held (shared) while blobs are written for images not added yet; gc waits for it."""
        with open(self.root / "locks" / ".session", "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield

    @contextlib.contextmanager
    def blob_lock(self, digest: str) -> Iterator[None]:
        """One writer per blob across threads and processes (two pulls sharing a layer)."""
        with open(self.root / "locks" / digest_hex(digest), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store a small blob held in memory; with `digest`, refuse data that does not match."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and actual != digest:
            raise Invalid(f"blob {digest} does not match its digest (got {actual})")
        if not self.has_blob(actual):
            _atomic_write(self.blob_path(actual), data)
        return actual

    def ingest(
        self, stream: BinaryIO, digest: str | None = None, limit: int | None = None
    ) -> tuple[str, int]:
        """Copy a stream into the store, hashing as it goes; (digest, size). With `digest`,
        a mismatch is refused; with `limit`, so is a stream longer than that."""
        fd, tmp = tempfile.mkstemp(dir=self.root / "partial", prefix=".ingest-")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise Invalid(f"blob is larger than the {limit}-byte limit")
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = f"sha256:{h.hexdigest()}"
            if digest is not None and actual != digest:
                raise Invalid(f"blob {digest} does not match its digest (got {actual})")
            os.replace(tmp, self.blob_path(actual))
            return actual, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def commit_partial(self, digest: str, size: int) -> None:
        """Move a finished download into place after checking it whole: size, then hash."""
        part = self.partial_path(digest)
        try:
            actual_size = part.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no download of blob {digest} to commit") from None
        if actual_size != size:
            part.unlink()
            raise Invalid(f"blob {digest} is {actual_size} bytes, its descriptor says {size}")
        h = hashlib.sha256()
        with part.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if h.hexdigest() != digest_hex(digest):
            part.unlink()
            raise Invalid(f"blob {digest} does not match its digest: the download was corrupt")
        with part.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(part, self.blob_path(digest))

    # -- images -----------------------------------------------------------------------------------

    def add_image(
        self, manifest_digest: str, *, names: Sequence[str], project: str, public: bool = False
    ) -> StoredImage:
        """Record the image whose manifest, config and layers are in the store, under `names`
        (references; a digest pin is recorded when there are none) for `project`."""
        canonical = [_canonical(n) for n in names] or [f"@{manifest_digest}"]
        image = self.image(manifest_digest)  # parses and checks manifest and config
        blobs = [manifest_digest, *_config_and_layers(self, image)]
        missing = [b for b in blobs if not self.has_blob(b)]
        if missing:
            raise Invalid(
                f"image {manifest_digest} is incomplete: missing blobs {', '.join(missing)}"
            )
        size = sum(self.blob_path(b).stat().st_size for b in blobs)
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR IGNORE INTO images (digest, size, layers, created, config) "
                "VALUES (?, ?, ?, ?, ?)",
                (manifest_digest, size, len(image.layers), now, _config_json(image.config)),
            )
            db.executemany(
                "INSERT OR IGNORE INTO image_blobs (image, blob) VALUES (?, ?)",
                [(manifest_digest, b) for b in blobs],
            )
            db.executemany(
                "INSERT OR REPLACE INTO names (project, name, image, public, created) "
                "VALUES (?, ?, ?, ?, ?)",
                [(project, n, manifest_digest, int(public), now) for n in canonical],
            )
            self._write_index([r[0] for r in db.execute("SELECT digest FROM images")])
        return self.resolve(manifest_digest, project)

    def layout(self) -> OciLayout:
        return OciLayout(self.root)

    def image(self, digest: str) -> Image:
        """The parsed image (manifest, config, layers) of a stored manifest digest."""
        try:
            return self.layout().image_by_digest(digest)
        except NotFound:
            raise NotFound(f"image {digest} is not in this store") from None

    def resolve(self, ref: str, project: str) -> StoredImage:
        """The image `ref` names for `project`: a reference, a digest, or a short id."""
        with self._db() as db:
            digest = self._lookup(db, ref, project)
            if digest is None:
                raise NotFound(f"no image {ref!r} in this store (pull or import it first)")
            return self._stored(db, digest, project)

    def images(self, project: str) -> list[StoredImage]:
        """The images `project` sees: its own names and every public one, newest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT DISTINCT images.digest FROM images "
                "JOIN names ON names.image = images.digest "
                "WHERE names.project = ? OR names.public = 1 ORDER BY images.created DESC",
                (project,),
            ).fetchall()
            return [self._stored(db, row[0], project) for row in rows]

    def untag(self, ref: str, project: str) -> StoredImage:
        """Drop `project`'s name `ref` (or, for a digest or id, all its names for that image).
        The image and its blobs stay until `gc` finds nothing names them."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            digest = self._lookup(db, ref, project)
            if digest is None:
                raise NotFound(f"no image {ref!r} in this store")
            image = self._stored(db, digest, project)
            if _is_digest_or_id(ref):
                deleted = db.execute(
                    "DELETE FROM names WHERE project = ? AND image = ?", (project, digest)
                ).rowcount
            else:
                deleted = db.execute(
                    "DELETE FROM names WHERE project = ? AND name = ?", (project, _canonical(ref))
                ).rowcount
            if not deleted:
                raise Conflict(f"image {ref!r} is public and belongs to another project")
        return image

    def gc(self, *, partials_older_than: float | None = None) -> GcReport:
        """Remove images nothing names and blobs no image uses; with `partials_older_than`
        (seconds), abandoned downloads too. Waits for writers' sessions to end."""
        with open(self.root / "locks" / ".session", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._gc(partials_older_than)

    def _gc(self, partials_older_than: float | None) -> GcReport:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            dead = [
                row[0]
                for row in db.execute(
                    "SELECT digest FROM images WHERE digest NOT IN (SELECT image FROM names)"
                )
            ]
            for digest in dead:
                db.execute("DELETE FROM image_blobs WHERE image = ?", (digest,))
                db.execute("DELETE FROM images WHERE digest = ?", (digest,))
            used = {row[0] for row in db.execute("SELECT DISTINCT blob FROM image_blobs")}
            removed = freed = 0
            for path in (self.root / "blobs" / "sha256").iterdir():
                if f"sha256:{path.name}" not in used:
                    with self.blob_lock(f"sha256:{path.name}"):
                        freed += path.stat().st_size
                        path.unlink()
                        removed += 1
            if dead:
                self._write_index([r[0] for r in db.execute("SELECT digest FROM images")])
        if partials_older_than is not None:
            cutoff = time.time() - partials_older_than
            for path in (self.root / "partial").iterdir():
                if path.stat().st_mtime < cutoff:
                    freed += path.stat().st_size
                    path.unlink()
        return GcReport(tuple(dead), removed, freed)

    # -- internals --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "store.db", timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _lookup(self, db: sqlite3.Connection, ref: str, project: str) -> str | None:
        visible = "(project = ? OR public = 1)"
        if _is_digest_or_id(ref):
            hexpart = ref.removeprefix("sha256:")
            rows = db.execute(
                f"SELECT DISTINCT image FROM names WHERE {visible} AND image LIKE ?",
                (project, f"sha256:{hexpart}%"),
            ).fetchall()
            if len(rows) > 1:
                raise Invalid(f"{ref!r} matches {len(rows)} images: give more of the digest")
            return rows[0][0] if rows else None
        parsed = parse_ref(ref)
        if parsed.digest:  # pinned: the image itself, or the index it was pulled by
            row = db.execute(
                f"SELECT image FROM names WHERE {visible} AND (image = ? OR name = ? OR name = ?) "
                "LIMIT 1",
                (project, parsed.digest, str(parsed), f"@{parsed.digest}"),
            ).fetchone()
            return row[0] if row else None
        row = db.execute(
            f"SELECT image FROM names WHERE {visible} AND name = ? "
            "ORDER BY project = ? DESC LIMIT 1",
            (project, str(parsed), project),
        ).fetchone()
        return row[0] if row else None

    def _stored(self, db: sqlite3.Connection, digest: str, project: str) -> StoredImage:
        size, layers, created, config = db.execute(
            "SELECT size, layers, created, config FROM images WHERE digest = ?", (digest,)
        ).fetchone()
        names = db.execute(
            "SELECT name, public FROM names WHERE image = ? AND (project = ? OR public = 1) "
            "ORDER BY name",
            (digest, project),
        ).fetchall()
        return StoredImage(
            digest=digest,
            names=tuple(n for n, _ in names if not n.startswith("@")),
            size=size,
            created=created,
            config=_config_from_json(config),
            layers=layers,
            public=any(p for _, p in names),
        )

    def _write_index(self, digests: Sequence[str]) -> None:
        """index.json lists every image, so other OCI tools can read the store."""
        manifests = []
        for digest in dict.fromkeys(digests):
            path = self.blob_path(digest)
            if not path.is_file():
                continue
            media_type = json.loads(path.read_bytes()).get("mediaType", "")
            manifests.append(
                {
                    "mediaType": media_type or "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "size": path.stat().st_size,
                    "annotations": {REF_NAME: digest},
                }
            )
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }
        _atomic_write(self.root / "index.json", json.dumps(index, indent=1).encode())


def _canonical(ref: str) -> str:
    return str(parse_ref(ref))


def _is_digest_or_id(ref: str) -> bool:
    hexpart = ref.removeprefix("sha256:")
    return (
        len(hexpart) >= _SHORT_ID
        and all(c in "0123456789abcdef" for c in hexpart)
        and (ref.startswith("sha256:") or len(hexpart) <= 64)
    )


def _config_and_layers(store: Store, image: Image) -> list[str]:
    manifest = json.loads(store.blob_path(image.manifest_digest).read_bytes())
    return [manifest["config"]["digest"], *(layer.digest for layer in image.layers)]


def _config_json(config: ImageConfig) -> str:
    return json.dumps({f: getattr(config, f) for f in ImageConfig.__dataclass_fields__})


def _config_from_json(text: str) -> ImageConfig:
    doc = json.loads(text)
    return ImageConfig(
        entrypoint=tuple(doc["entrypoint"]),
        cmd=tuple(doc["cmd"]),
        env=tuple(doc["env"]),
        working_dir=doc["working_dir"],
        user=doc["user"],
        stop_signal=doc["stop_signal"],
        exposed_ports=tuple(doc["exposed_ports"]),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
