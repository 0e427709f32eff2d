"""/node/v1: machine snapshots on this node, taken of its sandboxes by their driver
(`RuntimeDriver.snapshot`) and kept under its state directory (`NodeAgent.snapshot_files`),
where machines that continue from one restore it (`SandboxSpec.restore_from`)."""

import asyncio
import shutil

from fastapi import APIRouter, Response, status

from hutch.agent.nodeapi import Agent, Auth, find_driver
from hutch.model.errors import Conflict, NotFound
from hutch.wire.snapshots import NodeMachineSnapshot, NodeMachineSnapshotTaken

router = APIRouter()


@router.post("/node/v1/sandboxes/{sandbox}/snapshot", status_code=status.HTTP_201_CREATED)
async def take(
    agent: Agent, _: Auth, sandbox: str, body: NodeMachineSnapshot
) -> NodeMachineSnapshotTaken:
    """Snapshot the running sandbox (its workload pauses for the copy, then runs on)."""
    driver = await find_driver(agent, sandbox)
    dest = agent.snapshot_files(body.snapshot_id)
    if dest.exists():
        raise Conflict(f"snapshot {body.snapshot_id} exists on this node")
    dest.parent.mkdir(mode=0o700, exist_ok=True)
    files = await driver.snapshot(sandbox, dest)
    return NodeMachineSnapshotTaken(size_bytes=files.size_bytes)


@router.delete("/node/v1/snapshots/{snapshot}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(agent: Agent, _: Auth, snapshot: str) -> Response:
    path = agent.snapshot_files(snapshot)
    if not path.exists():
        raise NotFound(f"no snapshot {snapshot} on this node")
    await asyncio.to_thread(shutil.rmtree, path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
