"""Machine snapshots, through the control plane: a running micro-VM's memory, devices and
scratch disk, kept on its node (`agent/snapshotapi.py` takes them with the driver); new machines
continue from one there (`MachineSpec.from_snapshot`, placed on its node by `pin_of`).

A snapshot is written down first (`creating`, so its name is taken), then taken by the node,
then written down `ready` with its size; a node's refusal removes the row. One that clones
continue from is not deleted (they start from it again at every restart); its machine may be.
Nor is one being taken: its node would finish it after the delete, and keep it for good.
"""

import builtins
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from hutch.model.errors import Conflict, HutchError, Invalid, NotFound
from hutch.model.machine import Desired, Machine, MachineState, check_suspendable
from hutch.model.snapshot import MachineSnapshot, SnapshotState
from hutch.model.tenancy import Principal, Project, validate_name
from hutch.services.ids import new_id
from hutch.services.nodelink import NodeLink
from hutch.services.policy import Action, Policy
from hutch.services.refusals import missing
from hutch.services.volumes import within_quota
from hutch.store.base import NewEvent, Store, Tx

# Longer than a node takes a snapshot: one `creating` for longer was left by a controller that
# died while its node took it, and may be deleted.
TAKE_MAX_S = 3600.0


class Snapshots:
    def __init__(self, store: Store, link: NodeLink, policy: Policy) -> None:
        self.store = store
        self.link = link
        self.policy = policy

    async def list(self, principal: Principal, project: Project) -> builtins.list[MachineSnapshot]:
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        async with self.store.read() as tx:
            return await tx.snapshots.list(project.id)

    async def get(self, principal: Principal, project: Project, ref: str) -> MachineSnapshot:
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        async with self.store.read() as tx:
            return await _snapshot(tx, project, ref)

    async def details(
        self, snaps: builtins.list[MachineSnapshot]
    ) -> tuple[dict[str, str], dict[str, builtins.list[str]]]:
        """For views of snapshots the caller may see: node names by id, clones by snapshot."""
        async with self.store.read() as tx:
            nodes = {n.id: n.name for n in await tx.nodes.list()}
            clones = {s.id: await tx.snapshots.clones(s.id) for s in snaps}
        return nodes, clones

    async def create(
        self, principal: Principal, project: Project, machine: str, name: str = ""
    ) -> MachineSnapshot:
        """A snapshot of the running micro-VM `machine`, taken by its node (the workload
        pauses for the copy, then runs on). Invalid for a container or a machine with volumes
        (their data is not in it); Conflict unless it runs; NotFound for another project's."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        name = (
            validate_name(name, "snapshot")
            if name
            else time.strftime("s-%Y%m%d-%H%M%S", time.gmtime())
        )

        async def find(tx: Tx) -> Machine:
            with missing(f"no machine {machine!r} in project {project.name}"):
                return await tx.machines.get(project.id, machine)

        return await self.take(project, find, name)

    async def take(
        self, project: Project, find: Callable[[Tx], Awaitable[Machine]], name: str, pool: str = ""
    ) -> MachineSnapshot:
        """A snapshot named `name` of the machine `find` gives (in the transaction that
        records it), taken by its node: for `create`, and for a warm pool's template (`pool`:
        the pool's id; only the pool sees the snapshot). The checks `create` says."""
        async with self.store.write() as tx:
            locked = await tx.projects.lock(project.id)
            m = await find(tx)
            check_suspendable(m.spec.runtime, "snapshotted")
            if m.spec.volumes:
                raise Invalid(
                    f"machine {m.name} has volumes, whose data a machine snapshot does not hold: "
                    "snapshot the volumes instead (hutch volume snapshot)"
                )
            if m.state is not MachineState.RUNNING or m.desired is not Desired.RUNNING:
                raise Conflict(
                    f"machine {m.name} is {m.state} (wanted {m.desired}): only a running "
                    "machine is snapshotted"
                )
            assert m.node_id is not None  # it runs
            # Its node's disk holds it: counted in snapshot_gib, at the most it may take.
            _, total = await tx.volumes.totals(project.id)
            most = (m.spec.memory_mib + m.spec.disk_mib) << 20
            within_quota(locked, "snapshot_gib", total + most)
            node = await tx.nodes.get(m.node_id)
            nics = (await tx.networks.addresses([m.id])).get(m.id, [])
            spec = m.spec
            snap = MachineSnapshot(
                id=new_id("s"), project_id=project.id, name=name, machine_id=m.id,
                node_id=node.id, image=spec.image, image_digest=m.image_digest, cpus=spec.cpus,
                memory_mib=spec.memory_mib, disk_mib=spec.disk_mib, runtime=spec.runtime,
                command=spec.command, entrypoint=spec.entrypoint, env=spec.env,
                workdir=spec.workdir, user=spec.user,
                networks=tuple(dict.fromkeys(a.network_id for a in nics)), size_bytes=0,
                state=SnapshotState.CREATING, created_at=time.time(), pool=pool,
            )  # fmt: skip
            await tx.snapshots.create(snap)
        try:
            taken = await self.link.snapshot_machine(node, m.sandbox_id, snap.id)
        except HutchError:
            async with self.store.write() as tx:
                await tx.snapshots.delete(snap.id)
            raise
        async with self.store.write() as tx:
            snap = await tx.snapshots.update(
                replace(snap, size_bytes=taken.size_bytes, state=SnapshotState.READY)
            )
            await tx.events.append([
                NewEvent(project.id, "machine.snapshotted", m.id, "snapshotted",
                         f"snapshot {snap.name} ({taken.size_bytes} bytes)", time.time())
            ])  # fmt: skip
        return snap

    async def delete(self, principal: Principal, project: Project, ref: str) -> None:
        """The snapshot and its files on its node; Conflict while machines continue from it."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        async with self.store.read() as tx:
            snap = await _snapshot(tx, project, ref)
            if snap.state is SnapshotState.CREATING and time.time() - snap.created_at < TAKE_MAX_S:
                raise Conflict(f"snapshot {snap.name} is being taken: delete it once it is ready")
            if clones := await tx.snapshots.clones(snap.id):
                raise Conflict(
                    f"snapshot {snap.name} is what machine(s) {', '.join(clones)} continue from "
                    "(each restart starts from it again): destroy them first"
                )
        await self._remove(snap)

    async def remove_template(self, snapshot_id: str) -> bool:
        """A warm pool's template snapshot and its files, once no machine runs from it:
        whether it is gone."""
        async with self.store.read() as tx:
            try:
                snap = await tx.snapshots.by_id(snapshot_id)
            except NotFound:
                return True
            if await tx.snapshots.clones(snap.id):
                return False
        await self._remove(snap)
        return True

    async def _remove(self, snap: MachineSnapshot) -> None:
        async with self.store.read() as tx:
            try:
                node = await tx.nodes.get(snap.node_id)
            except NotFound:
                node = None  # gone with its node
        if node is not None:
            with contextlib.suppress(NotFound):  # the node no longer has it
                await self.link.delete_machine_snapshot(node, snap.id)
        async with self.store.write() as tx:
            await tx.snapshots.delete(snap.id)


async def _snapshot(tx: Tx, project: Project, ref: str) -> MachineSnapshot:
    with missing(f"no snapshot {ref!r} in project {project.name} (hutch snapshot ls)"):
        return await tx.snapshots.get(project.id, ref)
