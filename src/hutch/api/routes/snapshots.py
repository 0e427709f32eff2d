"""/v1/snapshots: machine snapshots (a running micro-VM's memory, devices and disk, kept on its
node), which `POST /v1/machines` with `from_snapshot` continues from."""

from fastapi import APIRouter, Response, status

from hutch.api import convert
from hutch.api.deps import Ctl, Scoped
from hutch.controller import Controller
from hutch.http.problems import PROBLEMS
from hutch.model.snapshot import MachineSnapshot
from hutch.model.tenancy import Project
from hutch.wire.common import Page
from hutch.wire.snapshots import MachineSnapshotCreate, MachineSnapshotView

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"], responses=PROBLEMS)


async def _views(
    ctl: Controller, project: Project, snaps: list[MachineSnapshot]
) -> list[MachineSnapshotView]:
    nodes, clones = await ctl.snapshots.details(snaps)
    return [convert.snapshot_view(s, project.name, nodes, clones[s.id]) for s in snaps]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_snapshot(ctl: Ctl, s: Scoped, body: MachineSnapshotCreate) -> MachineSnapshotView:
    """A snapshot of a running micro-VM: its workload pauses for the copy, then runs on."""
    snap = await ctl.snapshots.create(s.caller, s.project, body.machine, body.name)
    return (await _views(ctl, s.project, [snap]))[0]


@router.get("")
async def list_snapshots(ctl: Ctl, s: Scoped) -> Page[MachineSnapshotView]:
    return Page(items=await _views(ctl, s.project, await ctl.snapshots.list(s.caller, s.project)))


@router.get("/{ref}")
async def get_snapshot(ctl: Ctl, s: Scoped, ref: str) -> MachineSnapshotView:
    snap = await ctl.snapshots.get(s.caller, s.project, ref)
    return (await _views(ctl, s.project, [snap]))[0]


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(ctl: Ctl, s: Scoped, ref: str) -> Response:
    await ctl.snapshots.delete(s.caller, s.project, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
