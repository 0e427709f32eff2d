"""/node/v1/volumes: the node's volumes and snapshots, kept by its storage backend
(`hutch.storage.backend.Backend`, made by `NodeAgent.volumes`). Controllers call these after
checking who may do what, and where; the node keeps the bytes. Backend calls block (files,
mkfs, reflinks): each runs in a thread."""

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from hutch.agent.nodeapi import Agent, Auth, find_driver
from hutch.model.errors import Conflict, Invalid, NotFound
from hutch.storage.backend import Backend, SnapshotInfo, VolumeInfo
from hutch.storage.local import unmade_capacity
from hutch.wire.volumes import (
    NodeSnapshotCreate,
    NodeSnapshotInfo,
    NodeVolumeCapacity,
    NodeVolumeClone,
    NodeVolumeCreate,
    NodeVolumeInfo,
    VolumeExtend,
)

router = APIRouter(prefix="/node/v1/volumes")
T = TypeVar("T")
IMPORT_QUEUE = 8  # chunks between the request and the backend's import: memory stays bounded


async def _run(agent: Agent, work: Callable[[Backend], T]) -> T:
    def call() -> T:
        return work(agent.volumes())

    return await asyncio.to_thread(call)


def _info(v: VolumeInfo) -> NodeVolumeInfo:
    return NodeVolumeInfo(id=v.id, size_bytes=v.size_bytes, fs=v.fs, used_bytes=v.used_bytes)


def _snap(s: SnapshotInfo, frozen: bool = False) -> NodeSnapshotInfo:
    return NodeSnapshotInfo(
        id=s.id, volume_id=s.volume_id, size_bytes=s.size_bytes, used_bytes=s.used_bytes,
        frozen=frozen,
    )  # fmt: skip


@router.get("/capacity")
async def capacity(agent: Agent, _: Auth) -> NodeVolumeCapacity:
    """What the node's volumes are promised and what they may take. A node that never held a
    volume says what its backend would hold, without making it (no pool, no loop device:
    every node is asked when a volume is placed)."""
    if agent.volumes_made() is None:
        promised, total = await asyncio.to_thread(
            unmade_capacity, agent.volumes_root(), agent.volume_pool_bytes()
        )
    else:
        promised, total = await _run(agent, lambda b: b.capacity())
    return NodeVolumeCapacity(promised_bytes=promised, total_bytes=total)


@router.get("")
async def volumes(
    agent: Agent, _: Auth, ids: Annotated[str, Query(max_length=65 * 256)] = ""
) -> list[NodeVolumeInfo]:
    """The node's volumes as they are now (their used bytes too), or those of `ids`
    (comma-separated) it has."""
    if agent.volumes_made() is None and not agent.volumes_root().exists():
        return []  # it never held one
    wanted = {i for i in ids.split(",") if i}
    found = await _run(agent, lambda b: b.volumes())
    return [_info(v) for v in found if not wanted or v.id in wanted]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create(agent: Agent, _: Auth, body: NodeVolumeCreate) -> NodeVolumeInfo:
    return _info(await _run(agent, lambda b: b.create(body.id, body.size_bytes, body.fs)))


@router.get("/{volume}")
async def info(agent: Agent, _: Auth, volume: str) -> NodeVolumeInfo:
    return _info(await _run(agent, lambda b: b.info(volume)))


@router.delete("/{volume}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(agent: Agent, _: Auth, volume: str) -> Response:
    await _run(agent, lambda b: b.delete(volume))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{volume}/grow")
async def grow(agent: Agent, _: Auth, volume: str, body: VolumeExtend) -> NodeVolumeInfo:
    return _info(await _run(agent, lambda b: b.grow(volume, body.size_bytes)))


@router.post("/{volume}/clone", status_code=status.HTTP_201_CREATED)
async def clone(agent: Agent, _: Auth, volume: str, body: NodeVolumeClone) -> NodeVolumeInfo:
    return _info(await _run(agent, lambda b: b.clone(volume, body.id, body.snapshot)))


@router.get("/{volume}/snapshots")
async def snapshots(agent: Agent, _: Auth, volume: str) -> list[NodeSnapshotInfo]:
    return [_snap(s) for s in await _run(agent, lambda b: b.snapshots(volume))]


@router.post("/{volume}/snapshots", status_code=status.HTTP_201_CREATED)
async def snapshot(
    agent: Agent, _: Auth, volume: str, body: NodeSnapshotCreate
) -> NodeSnapshotInfo:
    """A snapshot; with `sandbox` and `target`, taken inside that sandbox's freeze of the file
    system mounted there (application-consistent), unless the sandbox is no longer running
    (then a point-in-time copy, as of a detached volume: `frozen` says which)."""

    def take(b: Backend) -> SnapshotInfo:
        return b.snapshot(volume, body.id)

    if body.sandbox and body.target:
        try:
            driver = await find_driver(agent, body.sandbox)
            spec = await driver.spec(body.sandbox)
            if not any(v.volume_id == volume and v.target == body.target for v in spec.volumes):
                raise Invalid(f"sandbox {body.sandbox} has no volume {volume} at {body.target}")
            async with driver.freeze(body.sandbox, [body.target]):
                info = await _run(agent, take)
            return _snap(info, frozen=True)
        except (NotFound, Conflict):  # it ended meanwhile: nothing writes it now
            pass
    return _snap(await _run(agent, take))


@router.delete("/{volume}/snapshots/{snap}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(agent: Agent, _: Auth, volume: str, snap: str) -> Response:
    await _run(agent, lambda b: b.delete_snapshot(volume, snap))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{volume}/restore")
async def restore(agent: Agent, _: Auth, volume: str, body: NodeSnapshotCreate) -> NodeVolumeInfo:
    return _info(await _run(agent, lambda b: b.restore(volume, body.id)))


@router.get("/{volume}/export")
async def export(agent: Agent, _: Auth, volume: str, snapshot: str = "") -> StreamingResponse:
    """The backend's export format, chunk by chunk as the backend reads it."""
    chunks = await _run(agent, lambda b: b.export(volume, snapshot))
    idle = agent.settings.volume_export_idle
    turn = threading.Lock()  # the backend's iterator is pulled, or closed, by one at a time
    pulled = [time.monotonic()]

    def pull() -> bytes | None:
        with turn:
            pulled[0] = time.monotonic()
            return next(chunks, None)

    def close() -> None:
        with turn:
            end = getattr(chunks, "close", None)
            if end is not None:
                end()

    async def watch() -> None:
        """End an export its reader stopped reading for `idle` seconds: it holds a copy of its
        volume (promised in the pool) for as long as it lasts. The reader then gets a stream
        without its trailer, which no import takes."""
        while True:
            await asyncio.sleep(max(0.0, idle - (time.monotonic() - pulled[0])))
            if time.monotonic() - pulled[0] >= idle:
                await asyncio.to_thread(close)
                return

    async def body() -> AsyncIterator[bytes]:
        watchdog = asyncio.ensure_future(watch())
        try:
            while (chunk := await asyncio.to_thread(pull)) is not None:
                yield chunk
        finally:
            watchdog.cancel()
            await asyncio.to_thread(close)

    return StreamingResponse(body(), media_type="application/octet-stream")


@router.post("/import", status_code=status.HTTP_201_CREATED)
async def import_(
    agent: Agent,
    _: Auth,
    request: Request,
    id: Annotated[str, Query(min_length=1, max_length=64)],
    max_bytes: Annotated[int, Query(ge=0)],
) -> NodeVolumeInfo:
    """A volume from the backend's export format, checked by the backend as it arrives (never
    more than `max_bytes`: the project's quota); the request's chunks go through a small queue,
    so a large import takes no more memory than a few chunks."""
    if max_bytes <= 0:
        raise Invalid("an import needs room: the project's volume quota is used up")
    backend = await asyncio.to_thread(agent.volumes)
    handoff: queue.Queue[bytes | None] = queue.Queue(IMPORT_QUEUE)

    def chunks() -> Iterator[bytes]:
        while (chunk := handoff.get()) is not None:
            yield chunk

    work = asyncio.ensure_future(asyncio.to_thread(backend.import_, id, chunks(), max_bytes))

    async def give(item: bytes | None) -> bool:
        """Hand `item` to the import; False once the import has ended (it refused the data)."""
        while not work.done():
            try:
                handoff.put_nowait(item)
            except queue.Full:
                await asyncio.sleep(0.005)
            else:
                return True
        return False

    try:
        async for chunk in request.stream():
            if chunk and not await give(chunk):
                break
        await give(None)
    finally:
        # The client may have gone away mid-stream: the import sees its end, short of what the
        # format promised, and refuses it (cleaning up what it wrote).
        await give(None)
    return _info(await work)
