"""Pulling an image from a registry into the node's store.

The order makes every step safe to interrupt: the manifest and config go in first (small,
verified), then each missing layer downloads into `partial/` under the store's per-blob lock
and is committed (verified) on its own, and only then is the image recorded under its names.
A pull that fails keeps every committed layer and the partial bytes of the others, and the next
pull fetches only what is still missing, resuming partial layers where they stopped. Two pulls
(in this process or another) that need the same layer download it once: the second waits for
the lock and then finds the layer in the store.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from hutch.images.layout import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG_BYTES,
    MAX_JSON_BYTES,
    Descriptor,
    parse_descriptor,
    parse_descriptors,
    parse_json_object,
    pick_platform,
)
from hutch.images.registry import Manifest, RegistryClient
from hutch.images.spool import disk_full_is_insufficient
from hutch.images.store import Allowance, ImageStore, StoredImage
from hutch.model.errors import Invalid, Unsupported
from hutch.model.image import ImageRef, parse_ref

_MAX_NESTING = 4  # index -> index -> ... -> manifest, as layout.py allows
_PROGRESS_BYTES = 256 << 10  # "downloading" events at most this often per layer...
_PROGRESS_SECONDS = 0.1  # ...or this, whichever comes first


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One event of a pull, about one layer; `done` never decreases and ends at `total`."""

    layer: str  # layer digest this event is about
    status: str  # "exists" (already in the store), "downloading", "resuming", "done"
    layer_done: int
    layer_total: int
    done: int  # bytes of all layers done so far (layers already present count as done)
    total: int  # bytes of all layers


async def pull(
    ref: str,
    store: ImageStore,
    client: RegistryClient,
    *,
    project: str,
    public: bool = False,
    progress: Callable[[PullProgress], None] | None = None,
    concurrency: int = 4,
    allowance: Allowance | None = None,
) -> StoredImage:
    """Pull the linux/amd64 image `ref` names into `store` and name it `ref` for `project`.

    Layers already in the store are not fetched; `concurrency` layers download at a time.
    Raises Invalid for a bad reference (before any network), NotFound if the registry has
    no such image, Unsupported for other platforms or formats, Invalid for corrupt content
    (nothing corrupt is kept), Unavailable when the registry cannot be reached or the
    connection breaks (what arrived is kept: pulling again resumes).
    """
    parsed = parse_ref(ref)
    if concurrency < 1:
        raise Invalid(f"pull concurrency must be at least 1, not {concurrency}")
    top = await client.manifest(parsed)
    manifest, index_digest = await _platform_manifest(client, parsed, top)
    doc = parse_json_object(manifest.data, what=f"manifest {manifest.digest} of {parsed}")
    config = parse_descriptor(doc.get("config"), where=f"manifest {manifest.digest} of {parsed}")
    if not store.has_blob(config.digest):
        if config.size > MAX_CONFIG_BYTES:
            raise Invalid(
                f"config {config.digest} of {parsed} is {config.size} bytes; "
                f"the limit is {MAX_CONFIG_BYTES}"
            )
        data = await client.read_blob(parsed, config.digest, config.size)
        await asyncio.to_thread(store.put_blob, data, config.digest)
    await asyncio.to_thread(store.put_blob, manifest.data, manifest.digest)
    # The store parses and checks what it now holds (layer types, platform, diff_ids) before
    # any layer is fetched, so an image hutch cannot run costs no download.
    image = await asyncio.to_thread(store.image, manifest.digest)
    layers = list({layer.digest: layer for layer in image.layers}.values())
    store.check_room(sum(layer.size for layer in layers if not store.has_blob(layer.digest)))
    await _fetch_layers(parsed, layers, store, client, callback=progress, concurrency=concurrency)
    names = [str(parsed)]
    if index_digest is not None and parsed.digest == index_digest:
        # Pinned by the index: keep that pin findable without the tag it may carry.
        names.append(f"{parsed.name}@{index_digest}")
    return await asyncio.to_thread(
        store.add_image,
        manifest.digest,
        names=list(dict.fromkeys(names)),
        project=project,
        public=public,
        allowance=allowance,
    )


async def _platform_manifest(
    client: RegistryClient, ref: ImageRef, top: Manifest
) -> tuple[Manifest, str | None]:
    """Follow indexes down to the linux/amd64 manifest; (it, the top index's digest or None)."""
    manifest, index_digest = top, None
    for _ in range(_MAX_NESTING):
        where = f"{ref} ({manifest.digest})"
        doc = parse_json_object(manifest.data, what=f"manifest of {where}")
        kind = manifest.media_type
        if kind in INDEX_TYPES or (kind not in MANIFEST_TYPES and "manifests" in doc):
            index_digest = index_digest or manifest.digest
            desc = pick_platform(
                parse_descriptors(doc.get("manifests"), where=f"index of {where}"), where
            )
            if desc.size > MAX_JSON_BYTES:
                raise Invalid(f"manifest {desc.digest} of {ref} is larger than {MAX_JSON_BYTES}")
            manifest = await client.manifest(ref, desc.digest)
            continue
        if kind in MANIFEST_TYPES or "layers" in doc:
            return manifest, index_digest
        raise Unsupported(f"{where} has media type {kind!r}, which is not an image")
    raise Invalid(f"image indexes of {ref} nest more than {_MAX_NESTING} deep")


async def _fetch_layers(
    ref: ImageRef,
    layers: list[Descriptor],
    store: ImageStore,
    client: RegistryClient,
    *,
    callback: Callable[[PullProgress], None] | None,
    concurrency: int,
) -> None:
    progress = _Progress(callback, layers)
    missing = []
    for layer in layers:
        if store.has_blob(layer.digest):
            progress.report(layer, "exists", layer.size)
        else:
            missing.append(layer)
    if not missing:
        return
    slots = asyncio.Semaphore(concurrency)

    async def fetch(layer: Descriptor) -> None:
        async with slots, _blob_locked(store, layer.digest):
            if store.has_blob(layer.digest):  # another pull committed it while we waited
                progress.report(layer, "exists", layer.size)
                return
            part = store.partial_path(layer.digest)
            have = part.stat().st_size if part.exists() else 0
            if 0 < have <= layer.size:
                progress.report(layer, "resuming", have)
            else:
                progress.report(layer, "downloading", 0)
            with disk_full_is_insufficient():
                await client.fetch_blob(
                    ref,
                    layer.digest,
                    layer.size,
                    part,
                    on_bytes=lambda n: progress.report(layer, "downloading", n, throttle=True),
                )
            await asyncio.to_thread(store.commit_partial, layer.digest, layer.size)
            progress.report(layer, "done", layer.size)

    # Ordered by layer, so with concurrency 1 layers arrive lowest first. The first failure
    # cancels the rest (their bytes so far stay in partial/ for the next pull).
    tasks = [asyncio.create_task(fetch(layer)) for layer in missing]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


@contextlib.asynccontextmanager
async def _blob_locked(store: ImageStore, digest: str) -> AsyncIterator[None]:
    """`store.blob_lock(digest)` (a blocking flock), waited for without blocking the loop.

    The wait happens in a daemon thread of its own rather than in an executor: however many
    pulls wait, the pulls holding locks still find executor threads to commit and release,
    and a lock held forever by another process cannot hang interpreter exit.
    """
    lock = store.blob_lock(digest)
    loop = asyncio.get_running_loop()
    taken: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:  # on the loop
        if taken.cancelled():  # the pull gave up waiting: release what the thread took
            if error is None:
                lock.__exit__(None, None, None)
        elif error is None:
            taken.set_result(None)
        else:
            taken.set_exception(error)

    def wait() -> None:  # in the thread
        error: BaseException | None = None
        try:
            lock.__enter__()
        except BaseException as e:
            error = e
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: nobody will use the lock
            if error is None:
                lock.__exit__(None, None, None)

    threading.Thread(target=wait, name=f"hutch-lock-{digest[7:19]}", daemon=True).start()
    await taken
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


class _Progress:
    """Per-layer counts turned into PullProgress events with a monotonic overall `done`."""

    def __init__(self, callback: Callable[[PullProgress], None] | None, layers: list[Descriptor]):
        self._callback = callback
        self._layer_done = dict.fromkeys((layer.digest for layer in layers), 0)
        self._last: dict[str, tuple[int, float]] = {}  # per layer: bytes and time last reported
        self._done = 0
        self._total = sum(layer.size for layer in layers)

    def report(self, layer: Descriptor, status: str, n: int, *, throttle: bool = False) -> None:
        # A download that starts over reports fewer bytes than before; counting the most ever
        # seen keeps `done` monotonic (it catches up as the new download passes that point).
        old = self._layer_done[layer.digest]
        current = max(old, min(n, layer.size))
        self._layer_done[layer.digest] = current
        self._done += current - old
        if self._callback is None:
            return
        now = time.monotonic()
        if throttle:
            last_bytes, last_time = self._last.get(layer.digest, (0, 0.0))
            if current < layer.size and (
                current - last_bytes < _PROGRESS_BYTES and now - last_time < _PROGRESS_SECONDS
            ):
                return
        self._last[layer.digest] = (current, now)
        self._callback(
            PullProgress(
                layer=layer.digest,
                status=status,
                layer_done=current,
                layer_total=layer.size,
                done=self._done,
                total=self._total,
            )
        )
