"""The node's image store: an OCI image layout on disk and a small SQLite index beside it.

    root/oci-layout, index.json   a valid OCI image layout: skopeo and umoci can read the store
    root/blobs/sha256/<hex>       every blob once, shared by every image that uses it
    root/partial/<hex>            downloads in progress: resumed later, never used unverified
    root/store.db                 images, the blobs each uses, and their names per project

Blobs enter only verified (hashed while written, renamed into place), so a blob under its final
name is always whole and correct. An image is the manifest for this platform; names (repository
and tag, or a pinned digest) belong to a project (keyed by its id, so a later project of the same
name sees nothing of a deleted one's) or to the operator's catalogue (`CATALOGUE`, written only
by system callers). A project sees its own names first, then the catalogue's: never another
project's.
An image no name refers to is garbage, and so is a blob no image uses: `gc` removes both.
Whoever writes blobs for an image it has not added yet (a pull, an import) holds `session()`,
so a concurrent `gc` waits instead of taking those blobs away.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hutch.images.layout import REF_NAME, Image, OciLayout
from hutch.images.spool import check_room, disk_full_is_insufficient
from hutch.images.unpack import TooLarge
from hutch.model.errors import (
    Forbidden,
    HutchError,
    Invalid,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from hutch.model.image import ImageConfig, digest_hex, parse_ref
from hutch.model.units import format_bytes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,        -- the platform manifest's digest
    size INTEGER NOT NULL,          -- manifest + config + layers, as stored (compressed)
    layers INTEGER NOT NULL,        -- as the manifest lists them (a layer may repeat)
    created REAL NOT NULL,
    config TEXT NOT NULL,           -- ImageConfig as JSON, for listings without reading blobs
    unpacked INTEGER NOT NULL DEFAULT 0  -- its layers' tar streams, uncompressed
);
CREATE TABLE IF NOT EXISTS image_blobs (
    image TEXT NOT NULL REFERENCES images(digest) ON DELETE CASCADE,
    blob TEXT NOT NULL,
    PRIMARY KEY (image, blob)
);
CREATE TABLE IF NOT EXISTS names (
    project TEXT NOT NULL,          -- a project's id, or '' for the catalogue
    name TEXT NOT NULL,             -- canonical reference, or "@sha256:..." for a digest pin
    image TEXT NOT NULL REFERENCES images(digest),
    public INTEGER NOT NULL DEFAULT 0,  -- unused since names are keyed by owner
    created REAL NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE INDEX IF NOT EXISTS names_by_image ON names(image);
CREATE INDEX IF NOT EXISTS blobs_by_blob ON image_blobs(blob);
"""
_CHUNK = 1 << 20
log = logging.getLogger("hutch.images")
_COLLECTING: set[Path] = set()  # stores with a collection pending
_COLLECTING_LOCK = threading.Lock()
CATALOGUE = ""  # the owner of the operator's published names: every project sees them
_SHORT_ID = 12  # like docker: enough hex digits to name an image


@dataclass(frozen=True, slots=True)
class StoredImage:
    digest: str  # manifest digest: the image's identity
    names: tuple[str, ...]  # the references a project sees for it (canonical form)
    size: int
    created: float
    config: ImageConfig
    layers: int
    public: bool  # in the catalogue: every project sees it
    unpacked: int = 0  # bytes its layers unpack to
    source: str = "project"  # where the name it was found by lives: "project" or "catalogue"

    @property
    def short_id(self) -> str:
        return digest_hex(self.digest)[:_SHORT_ID]


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one owner's images may hold in the store, in bytes (None: no limit)."""

    stored: int | None = None  # blobs as stored (compressed)
    unpacked: int | None = None  # what their layers unpack to

    @classmethod
    def of(cls, limits: Mapping[str, int]) -> "Allowance":
        """From the project's limits as the controller sends them (Quota.image_limits)."""
        return cls(stored=limits.get("max_stored"), unpacked=limits.get("max_unpacked"))


@dataclass(frozen=True, slots=True)
class Usage:
    stored: int
    unpacked: int


@dataclass(frozen=True, slots=True)
class GcReport:
    images: tuple[str, ...]  # digests of the images removed
    blobs: int
    bytes: int


class ImageStore:
    def __init__(
        self, root: Path, *, free_floor: int = 0, max_unpacked_bytes: int | None = None
    ) -> None:
        """`free_floor`: bytes an image may not take the disk below; `max_unpacked_bytes`:
        what one image's layers may unpack to."""
        self.root = root
        self.free_floor = free_floor
        self.max_unpacked_bytes = max_unpacked_bytes
        for d in (root, root / "blobs" / "sha256", root / "partial", root / "locks"):
            d.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # image contents are the tenants' own
        if not (root / "oci-layout").exists():
            _atomic_write(root / "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        if not (root / "index.json").exists():
            self._write_index([])
        with self._db() as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            if "unpacked" not in columns:  # a store made before images had sizes unpacked
                db.execute("ALTER TABLE images ADD COLUMN unpacked INTEGER NOT NULL DEFAULT 0")

    # -- blobs ------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Held (shared) while blobs are written for images not added yet; gc waits for it.
        A session that ends refused (not cut off: a pull resumes) has what it wrote collected
        soon after, so that refused imports cannot fill the disk outside every quota."""
        try:
            with open(self.root / "locks" / ".session", "a") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                yield
        except HutchError as e:
            if not isinstance(e, Unavailable):
                self.collect_soon()
            raise

    def collect_soon(self) -> None:
        """`gc` in a thread of its own, once the sessions open now have ended; one at a time."""
        with _COLLECTING_LOCK:
            if self.root in _COLLECTING:
                return
            _COLLECTING.add(self.root)

        def collect() -> None:
            try:
                self.gc()
            except Exception:
                log.exception("collecting %s failed", self.root)
            finally:
                with _COLLECTING_LOCK:
                    _COLLECTING.discard(self.root)

        threading.Thread(target=collect, name="image-gc", daemon=True).start()

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
            with disk_full_is_insufficient(), os.fdopen(fd, "wb") as out:
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

    def check_room(self, incoming: int) -> None:
        """Refuse (507) what would leave the disk with less than the free-space floor."""
        check_room(self.root, incoming, self.free_floor, f"an image of {format_bytes(incoming)}")

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
        self,
        manifest_digest: str,
        *,
        names: Sequence[str],
        project: str,
        public: bool = False,
        allowance: Allowance | None = None,
    ) -> StoredImage:
        """Record the image whose manifest, config and layers are in the store, under `names`
        (references; a digest pin is recorded when there are none) for `project`, or for the
        catalogue if `public`. Refused if it would take the owner's images beyond `allowance`,
        the disk below the free-space floor, or if its layers unpack to more than the limit."""
        owner = CATALOGUE if public else project
        canonical = [_canonical(n) for n in names] or [f"@{manifest_digest}"]
        image = self.image(manifest_digest)  # parses and checks manifest and config
        blobs = [manifest_digest, *_config_and_layers(self, image)]
        missing = [b for b in blobs if not self.has_blob(b)]
        if missing:
            raise Invalid(
                f"image {manifest_digest} is incomplete: missing blobs {', '.join(missing)}"
            )
        size = sum(self.blob_path(b).stat().st_size for b in blobs)
        with self._db() as db:
            row = db.execute(
                "SELECT unpacked FROM images WHERE digest = ?", (manifest_digest,)
            ).fetchone()
        unpacked = row[0] if row and row[0] else self._unpacked_size(image)
        if self.max_unpacked_bytes is not None and unpacked > self.max_unpacked_bytes:
            raise self._too_large(image)
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            named = db.execute(
                "SELECT 1 FROM names WHERE project = ? AND image = ?", (owner, manifest_digest)
            ).fetchone()
            if not named:
                if allowance is not None:
                    _check_allowance(self._usage(db, owner), allowance, size, unpacked)
                self.check_room(unpacked)
            db.execute(
                "INSERT INTO images (digest, size, layers, created, config, unpacked) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET unpacked = ?",
                (
                    manifest_digest,
                    size,
                    len(image.layers),
                    now,
                    _config_json(image.config),
                    unpacked,
                    unpacked,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO image_blobs (image, blob) VALUES (?, ?)",
                [(manifest_digest, b) for b in blobs],
            )
            # A name is its owner's alone: retagging replaces only the owner's own row.
            db.executemany(
                "INSERT OR REPLACE INTO names (project, name, image, public, created) "
                "VALUES (?, ?, ?, ?, ?)",
                [(owner, n, manifest_digest, int(public), now) for n in canonical],
            )
            self._write_index([r[0] for r in db.execute("SELECT digest FROM images")])
        return self.resolve(manifest_digest, owner)

    def usage(self, project: str) -> Usage:
        """What the images `project` names take: each image once, shared blobs in each."""
        with self._db() as db:
            return self._usage(db, project)

    def _usage(self, db: sqlite3.Connection, owner: str) -> Usage:
        stored, unpacked = db.execute(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(unpacked), 0) FROM images "
            "WHERE digest IN (SELECT image FROM names WHERE project = ?)",
            (owner,),
        ).fetchone()
        return Usage(stored, unpacked)

    def _unpacked_size(self, image: Image) -> int:
        """Read every layer through (verifying it): what it unpacks to, within the limit."""
        total = 0
        layout = self.layout()
        for i, layer in enumerate(image.layers):
            diff_id = image.diff_ids[i] if image.diff_ids else None
            with layout.open_layer(layer, diff_id) as tar:
                while chunk := tar.read(_CHUNK):
                    total += len(chunk)
                    if self.max_unpacked_bytes is not None and total > self.max_unpacked_bytes:
                        raise self._too_large(image)
        return total

    def _too_large(self, image: Image) -> TooLarge:
        return TooLarge(
            f"image {image.manifest_digest} unpacks to more than "
            f"{format_bytes(self.max_unpacked_bytes or 0)}, this node's limit per image "
            "(max_unpacked_bytes)"
        )

    def layout(self) -> OciLayout:
        return OciLayout(self.root)

    def image(self, digest: str) -> Image:
        """The parsed image (manifest, config, layers) of a stored manifest digest."""
        try:
            return self.layout().image_by_digest(digest)
        except NotFound:
            raise NotFound(f"image {digest} is not in this store") from None

    def resolve(self, ref: str, project: str) -> StoredImage:
        """The image `ref` names for `project`: a reference, a digest, or a short id; the
        project's own names first, then the catalogue's."""
        with self._db() as db:
            found = self._lookup(db, ref, project)
            if found is None:
                raise NotFound(f"no image {ref!r} in this store (pull or import it first)")
            return self._stored(db, found[0], project, found[1])

    def images(self, project: str) -> list[StoredImage]:
        """The images `project` sees: its own and the catalogue's, newest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT images.digest, MAX(names.project = ?) FROM images "
                "JOIN names ON names.image = images.digest "
                "WHERE names.project IN (?, ?) GROUP BY images.digest "
                "ORDER BY MIN(names.created) DESC",
                (project, project, CATALOGUE),
            ).fetchall()
            return [self._stored(db, digest, project, bool(own)) for digest, own in rows]

    def untag(self, ref: str, project: str, *, public: bool = False) -> StoredImage:
        """Drop `project`'s name `ref` (or, for a digest or id, all its names for that image);
        with `public`, the catalogue's. The image and its blobs stay until `gc` finds nothing
        names them."""
        owner = CATALOGUE if public else project
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            found = self._lookup(db, ref, owner)
            if found is None:
                raise NotFound(f"no image {ref!r} in this store")
            digest, own = found
            if not own:
                raise Forbidden(
                    f"image {ref!r} is in the operator's catalogue: a system token removes it "
                    "(hutch image rm --public)"
                )
            image = self._stored(db, digest, owner, own)
            if is_digest_or_id(ref):
                db.execute("DELETE FROM names WHERE project = ? AND image = ?", (owner, digest))
            else:
                db.execute(
                    "DELETE FROM names WHERE project = ? AND name = ?", (owner, _canonical(ref))
                )
        return image

    def forget(self, project: str) -> int:
        """Drop every name of a project (deleted): how many. `gc` then frees what they held."""
        if project == CATALOGUE:
            raise Invalid("the catalogue is not a project")
        with self._db() as db:
            return db.execute("DELETE FROM names WHERE project = ?", (project,)).rowcount

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

    def _lookup(self, db: sqlite3.Connection, ref: str, project: str) -> tuple[str, bool] | None:
        """(digest, whether `project` itself names it) for `ref`, its own names first."""
        visible = "project IN (?, ?)"
        first = "ORDER BY project = ? DESC LIMIT 1"
        if is_digest_or_id(ref):
            hexpart = ref.removeprefix("sha256:")
            rows = db.execute(
                f"SELECT image, MAX(project = ?) FROM names WHERE {visible} AND image LIKE ? "
                "GROUP BY image",
                (project, project, CATALOGUE, f"sha256:{hexpart}%"),
            ).fetchall()
            if len(rows) > 1:
                raise Invalid(f"{ref!r} matches {len(rows)} images: give more of the digest")
            return (rows[0][0], bool(rows[0][1])) if rows else None
        parsed = parse_ref(ref)
        if parsed.digest:  # pinned: the image itself, or the index it was pulled by
            row = db.execute(
                f"SELECT image, project = ? FROM names WHERE {visible} "
                f"AND (image = ? OR name = ? OR name = ?) {first}",
                (project, project, CATALOGUE, parsed.digest, str(parsed), f"@{parsed.digest}",
                 project),
            ).fetchone()  # fmt: skip
        else:
            row = db.execute(
                f"SELECT image, project = ? FROM names WHERE {visible} AND name = ? {first}",
                (project, project, CATALOGUE, str(parsed), project),
            ).fetchone()
        return (row[0], bool(row[1])) if row else None

    def _stored(self, db: sqlite3.Connection, digest: str, project: str, own: bool) -> StoredImage:
        size, layers, created, config, unpacked = db.execute(
            "SELECT size, layers, created, config, unpacked FROM images WHERE digest = ?",
            (digest,),
        ).fetchone()
        names = db.execute(
            "SELECT name, project, created FROM names WHERE image = ? AND project IN (?, ?) "
            "ORDER BY name",
            (digest, project, CATALOGUE),
        ).fetchall()
        return StoredImage(
            digest=digest,
            names=tuple(dict.fromkeys(n for n, _, _ in names if not n.startswith("@"))),
            size=size,
            # When a name the caller sees was given: not when another project first brought
            # the same bytes, which would tell it that someone holds them, and since when.
            created=min((at for _, _, at in names), default=created),
            config=_config_from_json(config),
            layers=layers,
            public=any(owner == CATALOGUE for _, owner, _ in names),
            unpacked=unpacked,
            source="project" if own and project != CATALOGUE else "catalogue",
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


def is_digest_or_id(ref: str) -> bool:
    hexpart = ref.removeprefix("sha256:")
    return (
        len(hexpart) >= _SHORT_ID
        and all(c in "0123456789abcdef" for c in hexpart)
        and (ref.startswith("sha256:") or len(hexpart) <= 64)
    )


def _check_allowance(usage: Usage, allowance: Allowance, stored: int, unpacked: int) -> None:
    for what, used, adding, limit in (
        ("stored", usage.stored, stored, allowance.stored),
        ("unpacked", usage.unpacked, unpacked, allowance.unpacked),
    ):
        if limit is not None and used + adding > limit:
            raise QuotaExceeded(
                f"the project's images would take {format_bytes(used + adding)} {what} "
                f"({format_bytes(used)} held, {format_bytes(adding)} for this one); "
                f"its quota is {format_bytes(limit)}: remove images (hutch image rm) or ask "
                "an operator to raise it (hutch quota set --images/--images-unpacked)"
            )


def _config_and_layers(store: ImageStore, image: Image) -> list[str]:
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
