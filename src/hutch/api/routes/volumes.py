"""/v1/volumes: a project's volumes (persistent disks on nodes) and their snapshots."""

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from hutch.api.deps import Ctl, Scoped
from hutch.controller import Controller
from hutch.http.problems import PROBLEMS
from hutch.model.tenancy import Project
from hutch.model.volume import Snapshot, Volume
from hutch.wire.common import Page
from hutch.wire.volumes import (
    SnapshotCreate,
    SnapshotView,
    VolumeCreate,
    VolumeExtend,
    VolumeView,
)

router = APIRouter(prefix="/v1/volumes", tags=["volumes"], responses=PROBLEMS)
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


async def _views(ctl: Controller, project: Project, volumes: list[Volume]) -> list[VolumeView]:
    nodes, machines = await ctl.volumes.names(volumes)
    counts = await ctl.volumes.counts([v.id for v in volumes])
    now = time.time()
    return [
        VolumeView.mirroring(
            v,
            project=project.name,
            state=v.state.value,
            node=nodes.get(v.node_id) if v.node_id else None,
            machine=machines.get(v.machine_id) if v.machine_id else None,
            snapshots=counts.get(v.id, 0),
            operation=v.operation if v.busy(now) else "",  # a lapsed one holds nothing
        )
        for v in volumes
    ]


async def _view(ctl: Controller, project: Project, volume: Volume) -> VolumeView:
    return (await _views(ctl, project, [volume]))[0]


def _snap(s: Snapshot, volume: Volume) -> SnapshotView:
    return SnapshotView.mirroring(s, volume=volume.name)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_volume(ctl: Ctl, s: Scoped, body: VolumeCreate) -> VolumeView:
    """A volume on a node: ext4 made at creation (`fs` none: a raw block device). With
    `source` (VOLUME or VOLUME@SNAPSHOT), a copy-on-write fork of it, on its node."""
    v = await ctl.volumes.create(
        s.caller, s.project, body.name, body.size_bytes, fs=body.fs, node=body.node,
        source=body.source,
    )  # fmt: skip
    return await _view(ctl, s.project, v)


@router.get("")
async def list_volumes(ctl: Ctl, s: Scoped) -> Page[VolumeView]:
    return Page(items=await _views(ctl, s.project, await ctl.volumes.list(s.caller, s.project)))


@router.post(
    "/import", status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": BINARY}},
)  # fmt: skip
async def import_volume(
    ctl: Ctl,
    s: Scoped,
    request: Request,
    name: Annotated[str, Query(min_length=1, max_length=63)],
    node: str = "",
) -> VolumeView:
    """A new volume from `GET /v1/volumes/{ref}/export`'s bytes, streamed to its node, which
    checks them as they arrive; at most what is left of the project's volume quota."""
    v = await ctl.volumes.import_(s.caller, s.project, name, request.stream(), node)
    return await _view(ctl, s.project, v)


@router.get("/{ref}")
async def get_volume(ctl: Ctl, s: Scoped, ref: str) -> VolumeView:
    return await _view(ctl, s.project, await ctl.volumes.get(s.caller, s.project, ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_volume(ctl: Ctl, s: Scoped, ref: str) -> Response:
    """The volume and its snapshots; 409 while a machine has it attached."""
    await ctl.volumes.delete(s.caller, s.project, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/extend")
async def extend_volume(ctl: Ctl, s: Scoped, ref: str, body: VolumeExtend) -> VolumeView:
    """Grow a detached volume (and its ext4) to `size_bytes`; a volume never shrinks."""
    v = await ctl.volumes.extend(s.caller, s.project, ref, body.size_bytes)
    return await _view(ctl, s.project, v)


@router.get(
    "/{ref}/export", response_class=StreamingResponse,
    responses={200: {"content": BINARY}},
)  # fmt: skip
async def export_volume(ctl: Ctl, s: Scoped, ref: str, snapshot: str = "") -> StreamingResponse:
    """The volume (detached), or one of its snapshots, as a sparse, checksummed stream (the
    node's backend's export format), relayed as the node reads it."""
    volume, chunks = await ctl.volumes.export(s.caller, s.project, ref, snapshot)
    first = await anext(chunks, b"")  # the node's refusal becomes problem+json

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    disposition = f'attachment; filename="{volume.name}.hvol"'
    return StreamingResponse(
        body(), media_type="application/octet-stream",
        headers={"Content-Disposition": disposition},
    )  # fmt: skip


@router.get("/{ref}/snapshots")
async def list_snapshots(ctl: Ctl, s: Scoped, ref: str) -> Page[SnapshotView]:
    volume, snaps = await ctl.volumes.snapshots(s.caller, s.project, ref)
    return Page(items=[_snap(x, volume) for x in snaps])


@router.post("/{ref}/snapshots", status_code=status.HTTP_201_CREATED)
async def create_snapshot(ctl: Ctl, s: Scoped, ref: str, body: SnapshotCreate) -> SnapshotView:
    """A point-in-time, copy-on-write snapshot (crash-consistent)."""
    volume, snap = await ctl.volumes.snapshot(s.caller, s.project, ref, body.name)
    return _snap(snap, volume)


@router.delete("/{ref}/snapshots/{snap}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(ctl: Ctl, s: Scoped, ref: str, snap: str) -> Response:
    await ctl.volumes.delete_snapshot(s.caller, s.project, ref, snap)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/snapshots/{snap}/restore")
async def restore_snapshot(ctl: Ctl, s: Scoped, ref: str, snap: str) -> VolumeView:
    """The detached volume's data (and size) as at the snapshot; the snapshot stays."""
    v = await ctl.volumes.restore(s.caller, s.project, ref, snap)
    return await _view(ctl, s.project, v)
