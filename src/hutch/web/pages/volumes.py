"""Volumes and their snapshots: list, create (or fork), grow, delete, snapshot, restore."""

import time
from typing import Annotated, Any, Literal

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response

from hutch.controller import Controller
from hutch.model.volume import Volume, parse_size
from hutch.services.policy import Action
from hutch.web.render import page, pages, see_other
from hutch.web.visitor import Acting, Visiting, controller

router = pages()
Name = Annotated[str, Form(min_length=1, max_length=63)]


async def _context(ctl: Controller, volumes: list[Volume]) -> dict[str, Any]:
    """What the templates show beside each volume: node and machine names, snapshot counts,
    and the operation under way (a lapsed one holds nothing)."""
    nodes, machines = await ctl.volumes.names(volumes)
    now = time.time()
    return {
        "nodes": nodes, "machines": machines,
        "counts": await ctl.volumes.counts([v.id for v in volumes]),
        "busy": {v.id: v.operation for v in volumes if v.busy(now)},
    }  # fmt: skip


@router.get("/ui/volumes")
async def volumes(request: Request, v: Visiting) -> HTMLResponse:
    ctl = controller(request)
    found = await ctl.volumes.list(v.principal, v.project)
    return page(request, v, "volumes.html", volumes=found, writable=v.may(Action.VOLUME_WRITE),
                **await _context(ctl, found))  # fmt: skip


@router.get("/ui/volumes/{ref}")
async def volume(request: Request, v: Visiting, ref: str) -> HTMLResponse:
    ctl = controller(request)
    vol, snaps = await ctl.volumes.snapshots(v.principal, v.project, ref)
    return page(request, v, "volume.html", vol=vol, snapshots=snaps,
                writable=v.may(Action.VOLUME_WRITE), **await _context(ctl, [vol]))  # fmt: skip


@router.post("/ui/volumes")
async def create(
    request: Request,
    v: Acting,
    name: Name,
    size: Annotated[str, Form(max_length=32)] = "",
    fs: Annotated[Literal["ext4", "none"], Form()] = "ext4",
    source: Annotated[str, Form(max_length=127)] = "",
) -> Response:
    """`size` as the CLI takes it (10G, 512M; a bare number is GiB); with `source` (VOLUME or
    VOLUME@SNAPSHOT) a fork, its size the source's unless given."""
    size_bytes = parse_size(size.strip()) if size.strip() else 0
    vol = await controller(request).volumes.create(
        v.principal, v.project, name.strip(), size_bytes, fs=fs, source=source.strip()
    )
    return see_other(f"/ui/volumes/{vol.name}")


@router.post("/ui/volumes/{ref}/extend")
async def extend(
    request: Request, v: Acting, ref: str, size: Annotated[str, Form(min_length=1, max_length=32)]
) -> Response:
    """A detached volume grows (its ext4 with it) to `size`; it never shrinks."""
    vol = await controller(request).volumes.extend(v.principal, v.project, ref, parse_size(size))
    return see_other(f"/ui/volumes/{vol.name}")


@router.post("/ui/volumes/{ref}/delete")
async def delete(request: Request, v: Acting, ref: str) -> Response:
    await controller(request).volumes.delete(v.principal, v.project, ref)
    return see_other("/ui/volumes")


@router.post("/ui/volumes/{ref}/snapshots")
async def snapshot(
    request: Request, v: Acting, ref: str, name: Annotated[str, Form(max_length=63)] = ""
) -> Response:
    """`name` empty: the service names it by the time."""
    vol, _ = await controller(request).volumes.snapshot(v.principal, v.project, ref, name.strip())
    return see_other(f"/ui/volumes/{vol.name}")


@router.post("/ui/volumes/{ref}/snapshots/{snap}/restore")
async def restore(request: Request, v: Acting, ref: str, snap: str) -> Response:
    vol = await controller(request).volumes.restore(v.principal, v.project, ref, snap)
    return see_other(f"/ui/volumes/{vol.name}")


@router.post("/ui/volumes/{ref}/snapshots/{snap}/delete")
async def delete_snapshot(request: Request, v: Acting, ref: str, snap: str) -> Response:
    await controller(request).volumes.delete_snapshot(v.principal, v.project, ref, snap)
    return see_other(f"/ui/volumes/{ref}")
