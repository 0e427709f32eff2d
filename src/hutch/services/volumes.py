"""Volumes and their snapshots, through the control plane: the store says what there is and
whose; the volume's node (its storage backend, through `agent/volumeapi.py`) holds the bytes.

Every change of a project's volumes is decided under the project's lock (names, quotas, who is
attached), written down (a volume being made or deleted is `creating`/`deleting`), then done by
the node, then written down again. A node's refusal is the caller's answer (a 4xx the node
phrased); a volume the node never made is forgotten, not left behind.

One operation at a time on a volume: extend, restore, snapshot (and deleting one), fork and
delete each take the volume (`Volume.operation`, under the project's lock) before their node call
and let it go after, on success or failure; another operation meanwhile is refused (409, "volume
X is being snapshotted"). The mark holds for OPERATION_SECONDS at most (the node call is given
less), so a controller that dies mid-operation leaves nothing taken for good.

Quotas: `volume_gib` bounds the sum of the project's volumes' sizes (forks and imports
included), `snapshot_gib` the sum of its snapshots' sizes (each counted at the size of its
volume when taken: an upper bound of what it may come to hold alone), its machine snapshots'
too (services/snapshots.py).
"""

import asyncio
import builtins
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from hutch.model.errors import (
    Conflict,
    Invalid,
    NoCapacity,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from hutch.model.machine import MachineState, Node, NodeState
from hutch.model.tenancy import Principal, Project, validate_name
from hutch.model.volume import (
    GIB,
    MAX_SIZE,
    Snapshot,
    Volume,
    VolumeState,
    check_fs,
    check_size,
)
from hutch.services.ids import new_id
from hutch.services.nodelink import NodeLink
from hutch.services.policy import Action, Policy
from hutch.services.refusals import missing
from hutch.storage.local import HEADER, read_header
from hutch.store.base import Store, Tx
from hutch.wire.volumes import NodeVolumeClone, NodeVolumeCreate

MAX_VOLUMES_PER_PROJECT = 256
MAX_SNAPSHOTS_PER_VOLUME = 64
OPERATION_SECONDS = 900.0  # how long an operation holds its volume at most
USAGE_SECONDS = 2.0  # how long `ls`/`inspect` wait for a node's current usage
RENEW_SECONDS = 60.0  # how often an import renews its volume's mark
NODE_SECONDS = 600.0  # how long its node call may take (less: the node's answer comes first)


class Volumes:
    def __init__(self, store: Store, link: NodeLink, policy: Policy) -> None:
        self.store = store
        self.link = link
        self.policy = policy

    # -- reading -------------------------------------------------------------------------------

    async def list(self, principal: Principal, project: Project) -> builtins.list[Volume]:
        self.policy.require(principal, Action.VOLUME_READ, project.id)
        async with self.store.read() as tx:
            volumes, nodes = await tx.volumes.list(project.id), await tx.nodes.list()
        return await self._current(volumes, nodes)

    async def get(self, principal: Principal, project: Project, ref: str) -> Volume:
        self.policy.require(principal, Action.VOLUME_READ, project.id)
        async with self.store.read() as tx:
            volume, nodes = await _volume(tx, project, ref), await tx.nodes.list()
        return (await self._current([volume], nodes))[0]

    async def snapshots(
        self, principal: Principal, project: Project, ref: str
    ) -> tuple[Volume, builtins.list[Snapshot]]:
        self.policy.require(principal, Action.VOLUME_READ, project.id)
        async with self.store.read() as tx:
            volume = await _volume(tx, project, ref)
            snaps = await tx.volumes.snapshots(volume.id)
            node = await tx.nodes.get(volume.node_id) if volume.node_id else None
        if snaps and node is not None and node.state is NodeState.READY:
            with contextlib.suppress(Exception):  # then as the node said last
                now = await self.link.snapshots_now(node, volume.id, USAGE_SECONDS)
                used = {s.id: s.used_bytes for s in now}
                snaps = [replace(s, used_bytes=used.get(s.id, s.used_bytes)) for s in snaps]
        return volume, snaps

    async def _current(
        self, volumes: builtins.list[Volume], nodes: builtins.list[Node]
    ) -> builtins.list[Volume]:
        """The volumes with their used bytes as their nodes say now: each node asked once,
        for at most USAGE_SECONDS; a node that does not answer leaves what it said last."""
        held: dict[str, builtins.list[str]] = {}
        for v in volumes:
            if v.node_id and v.state in (VolumeState.AVAILABLE, VolumeState.ATTACHED):
                held.setdefault(v.node_id, []).append(v.id)
        if not held:
            return volumes
        ready = {n.id: n for n in nodes if n.state is NodeState.READY}

        async def ask(node_id: str, ids: builtins.list[str]) -> dict[str, int]:
            if node_id not in ready:
                return {}
            try:
                now = await self.link.volumes_now(ready[node_id], ids, USAGE_SECONDS)
            except Exception:
                return {}
            return {i.id: i.used_bytes for i in now}

        used: dict[str, int] = {}
        for answer in await asyncio.gather(*(ask(n, ids) for n, ids in held.items())):
            used.update(answer)
        return [replace(v, used_bytes=used.get(v.id, v.used_bytes)) for v in volumes]

    async def counts(self, volume_ids: builtins.list[str]) -> dict[str, int]:
        """How many snapshots each volume has."""
        async with self.store.read() as tx:
            return {v: len(await tx.volumes.snapshots(v)) for v in volume_ids}

    async def names(self, volumes: builtins.list[Volume]) -> tuple[dict[str, str], dict[str, str]]:
        """The names of the volumes' nodes and machines, by id."""
        async with self.store.read() as tx:
            nodes = {n.id: n.name for n in await tx.nodes.list()}
            machines: dict[str, str] = {}
            for v in volumes:
                if v.machine_id and v.machine_id not in machines:
                    try:
                        machines[v.machine_id] = (await tx.machines.by_id(v.machine_id)).name
                    except NotFound:
                        machines[v.machine_id] = v.machine_id
            return nodes, machines

    async def usage(self, project: Project) -> tuple[int, int]:
        """(bytes of the project's volumes, bytes of its snapshots)."""
        async with self.store.read() as tx:
            return await tx.volumes.totals(project.id)

    # -- volumes -------------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        project: Project,
        name: str,
        size_bytes: int,
        *,
        fs: str = "ext4",
        node: str = "",
        source: str = "",
    ) -> Volume:
        """A new volume on `node` (name or id; default: the ready node with the most free space
        in its pool); with `source` (VOLUME or VOLUME@SNAPSHOT), a copy-on-write fork of it on
        its node, of its size (or `size_bytes`, when larger: grown after the fork)."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        validate_name(name, "volume")
        check_fs(fs)
        if source:
            return await self._fork(project, name, size_bytes, source, node)
        check_size(size_bytes)
        target = await self._node_for(node, size_bytes)
        volume = _making(Volume(
            id=new_id("v"), project_id=project.id, name=name, size_bytes=size_bytes, fs=fs,
            state=VolumeState.CREATING, node_id=target.id, created_at=time.time(),
        ))  # fmt: skip
        await self._reserve(project, volume)
        try:
            async with _node_call(target):
                info = await self.link.create_volume(
                    target,
                    NodeVolumeCreate(id=volume.id, size_bytes=size_bytes, fs=fs),  # type: ignore[arg-type]
                )
        except BaseException:
            await self._forget(volume, target)
            raise
        return await self._made(
            _free(volume, state=VolumeState.AVAILABLE, used_bytes=info.used_bytes), target
        )

    async def _fork(
        self, project: Project, name: str, size_bytes: int, source: str, node: str
    ) -> Volume:
        ref, _, snap_ref = source.partition("@")
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)
            origin = await _volume(tx, project, ref)
            snap = await _snapshot(tx, origin, snap_ref) if snap_ref else None
            target = await self._node_of(tx, origin)
            _ready(origin)
            origin = await _take(tx, origin, "forked")
        try:
            return await self._fork_of(project, name, size_bytes, node, (origin, snap, target))
        finally:
            await self._let_go(origin)

    async def _fork_of(
        self,
        project: Project,
        name: str,
        size_bytes: int,
        node: str,
        source: tuple[Volume, Snapshot | None, Node],
    ) -> Volume:
        origin, snap, target = source
        if node and node not in (target.id, target.name):
            raise Invalid(
                f"a fork is made on its source's node: volume {origin.name} is on node "
                f"{target.name}, not {node}"
            )
        base = snap.size_bytes if snap else origin.size_bytes
        if size_bytes and size_bytes < base:
            raise Invalid(
                f"a fork is at least as large as its source ({base} bytes), not {size_bytes}"
            )
        size = check_size(size_bytes or base)
        volume = _making(Volume(
            id=new_id("v"), project_id=project.id, name=name, size_bytes=size, fs=origin.fs,
            state=VolumeState.CREATING, node_id=target.id, created_at=time.time(),
            untrusted=snap.untrusted if snap else origin.untrusted,
        ))  # fmt: skip
        await self._reserve(project, volume)
        try:
            body = NodeVolumeClone(id=volume.id, snapshot=snap.id if snap else "")
            async with _node_call(target):
                info = await self.link.clone_volume(target, origin.id, body)
                if size > info.size_bytes:
                    info = await self.link.grow_volume(target, volume.id, size)
        except BaseException:
            await self._forget(volume, target)
            raise
        return await self._made(
            _free(volume, state=VolumeState.AVAILABLE, used_bytes=info.used_bytes), target
        )

    async def delete(self, principal: Principal, project: Project, ref: str) -> Volume:
        """Delete a detached volume and its snapshots (409 while a machine has it)."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)
            volume = await _volume(tx, project, ref)
            await _detached(tx, volume, "deleted")
            if volume.state is VolumeState.CREATING and volume.busy(time.time()):
                raise Conflict(f"volume {volume.name} is being made: delete it once it is made")
            # (one still `creating` once its mark lapsed: the controller making it died; what
            # its node made of it, if anything, goes with it)
            volume = await _take(tx, replace(volume, state=VolumeState.DELETING), "deleted")
            node = await self._node_of(tx, volume) if volume.node_id else None
        if node is not None:
            try:
                async with _node_call(node):
                    await self.link.delete_volume(node, volume.id)
            except BaseException as e:
                await self._write(_free(volume, state=VolumeState.ERROR, error=str(e)))
                raise
        async with self.store.write() as tx:
            await tx.volumes.delete(volume.id)
        return volume

    async def extend(
        self, principal: Principal, project: Project, ref: str, size_bytes: int
    ) -> Volume:
        """Grow a detached volume to `size_bytes` (the filesystem with it); never shrinks."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        check_size(size_bytes)
        async with self.store.write() as tx:
            locked = await tx.projects.lock(project.id)
            volume = await _volume(tx, project, ref)
            await _detached(tx, volume, "extended")
            _ready(volume)
            if size_bytes <= volume.size_bytes:
                raise Invalid(
                    f"volume {volume.name} is {volume.size_bytes} bytes: a volume only grows "
                    f"(asked for {size_bytes})"
                )
            total, _ = await tx.volumes.totals(project.id)
            within_quota(locked, "volume_gib", total - volume.size_bytes + size_bytes)
            node = await self._node_of(tx, volume)
            volume = await _take(tx, volume, "extended")
        async with self._operation(volume, node):
            info = await self.link.grow_volume(node, volume.id, size_bytes)
        return await self._write(
            _free(volume, size_bytes=info.size_bytes, used_bytes=info.used_bytes)
        )

    # -- snapshots -----------------------------------------------------------------------------

    async def snapshot(
        self, principal: Principal, project: Project, ref: str, name: str = ""
    ) -> tuple[Volume, Snapshot]:
        """A point-in-time, copy-on-write snapshot of the volume on its node."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        name = name or time.strftime("s-%Y%m%d-%H%M%S", time.gmtime())
        validate_name(name, "snapshot")
        async with self.store.write() as tx:
            locked = await tx.projects.lock(project.id)
            volume = await _volume(tx, project, ref)
            _ready(volume)
            taken = await tx.volumes.snapshots(volume.id)
            if len(taken) >= MAX_SNAPSHOTS_PER_VOLUME:
                raise Conflict(
                    f"volume {volume.name} has {len(taken)} snapshots, the most it may have: "
                    "delete some first"
                )
            _, total = await tx.volumes.totals(project.id)
            within_quota(locked, "snapshot_gib", total + volume.size_bytes)
            snap = Snapshot(
                id=new_id("vs"), volume_id=volume.id, project_id=project.id, name=name,
                size_bytes=volume.size_bytes, created_at=time.time(), untrusted=volume.untrusted,
            )  # fmt: skip
            node = await self._node_of(tx, volume)
            sandbox, target = await _writer(tx, volume)
            volume = await _take(tx, volume, "snapshotted")
            await tx.volumes.create_snapshot(snap)
        try:
            async with _node_call(node):
                info = await self.link.snapshot_volume(node, volume.id, snap.id, sandbox, target)
        except BaseException:
            async with self.store.write() as tx:
                await tx.volumes.delete_snapshot(snap.id)
            await self._let_go(volume)
            raise
        snap = replace(snap, used_bytes=info.used_bytes, frozen=info.frozen)
        async with self.store.write() as tx:
            await tx.volumes.delete_snapshot(snap.id)
            await tx.volumes.create_snapshot(snap)
        return await self._let_go(volume), snap

    async def delete_snapshot(
        self, principal: Principal, project: Project, ref: str, snap_ref: str
    ) -> Snapshot:
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)
            volume = await _volume(tx, project, ref)
            snap = await _snapshot(tx, volume, snap_ref)
            node = await self._node_of(tx, volume)
            volume = await _take(tx, volume, "cleared of a snapshot")
        async with self._operation(volume, node):
            await self.link.delete_snapshot(node, volume.id, snap.id)
        async with self.store.write() as tx:
            await tx.volumes.delete_snapshot(snap.id)
        await self._let_go(volume)
        return snap

    async def restore(
        self, principal: Principal, project: Project, ref: str, snap_ref: str
    ) -> Volume:
        """The detached volume's data as it was at the snapshot (its size too)."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)
            volume = await _volume(tx, project, ref)
            await _detached(tx, volume, "restored")
            _ready(volume)
            snap = await _snapshot(tx, volume, snap_ref)
            node = await self._node_of(tx, volume)
            volume = await _take(tx, volume, "restored")
        async with self._operation(volume, node):
            info = await self.link.restore_volume(node, volume.id, snap.id)
        return await self._write(
            _free(
                volume, size_bytes=info.size_bytes, used_bytes=info.used_bytes,
                untrusted=snap.untrusted,  # its data is the snapshot's now
            )
        )  # fmt: skip

    # -- backups -------------------------------------------------------------------------------

    async def export(
        self, principal: Principal, project: Project, ref: str, snap_ref: str = ""
    ) -> tuple[Volume, AsyncIterator[bytes]]:
        """The volume (or its snapshot) in the backend's export format, relayed from its node
        as it comes (never held whole). A volume attached read-write is refused: export a
        snapshot of it instead."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        async with self.store.read() as tx:
            volume = await _volume(tx, project, ref)
            snap = await _snapshot(tx, volume, snap_ref) if snap_ref else None
            _ready(volume)
            if snap is None:
                await _detached(tx, volume, "exported (export a snapshot of it instead)")
            node = await self._node_of(tx, volume)
        return volume, self.link.export_volume(node, volume.id, snap.id if snap else "")

    async def import_(
        self,
        principal: Principal,
        project: Project,
        name: str,
        body: AsyncIterator[bytes],
        node: str = "",
    ) -> Volume:
        """A new volume from an export. Its header says its size: the volume is written down
        at that size (bounded by the quota, placed where it fits), then the node checks the
        rest as it arrives (and refuses an image larger than its header said)."""
        self.policy.require(principal, Action.VOLUME_WRITE, project.id)
        validate_name(name, "volume")
        header, rest = await _head(body, HEADER.size)
        size, fs = read_header(header)
        check_size(size)
        target = await self._node_for(node, size)
        volume = _making(Volume(
            id=new_id("v"), project_id=project.id, name=name, size_bytes=size, fs=fs,
            state=VolumeState.CREATING, node_id=target.id, created_at=time.time(),
            untrusted=True,  # whoever wrote the export may have crafted its file system
        ))  # fmt: skip
        await self._reserve(project, volume)
        try:
            body = self._renewing(volume, _chain(header, rest))
            info = await self.link.import_volume(target, volume.id, body, size)
        except BaseException:
            await self._forget(volume, target)
            raise
        return await self._made(
            _free(
                volume, size_bytes=info.size_bytes, fs=info.fs, used_bytes=info.used_bytes,
                state=VolumeState.AVAILABLE,
            ),
            target,
        )  # fmt: skip

    # -- helpers -------------------------------------------------------------------------------

    async def _reserve(self, project: Project, volume: Volume) -> int:
        """Write the new volume down (`creating`) if its name is free and the quota allows it:
        the bytes of volume quota left after it (MAX_SIZE when there is no quota)."""
        async with self.store.write() as tx:
            locked = await tx.projects.lock(project.id)
            have = await tx.volumes.list(project.id)
            if len(have) >= MAX_VOLUMES_PER_PROJECT:
                raise Conflict(
                    f"project {project.name} has {len(have)} volumes, the most it may have"
                )
            if any(v.name == volume.name for v in have):
                raise Conflict(f"project {project.name} already has a volume named {volume.name}")
            total, _ = await tx.volumes.totals(project.id)
            within_quota(locked, "volume_gib", total + volume.size_bytes)
            await tx.volumes.create(volume)
            limit = locked.quota.volume_gib
            return MAX_SIZE if limit is None else limit * GIB - total - volume.size_bytes

    async def _forget(self, volume: Volume, node: Node | None = None) -> None:
        """A volume whose making failed: gone from the node (if it got that far) and the store."""
        if node is not None:
            with contextlib.suppress(Exception):  # the first failure is the one to tell
                await self.link.delete_volume(node, volume.id)
        async with self.store.write() as tx:
            await tx.volumes.delete(volume.id)

    async def _made(self, volume: Volume, node: Node) -> Volume:
        """Write down a volume its node has made; Conflict (and gone from the node) if it was
        deleted meanwhile (its making outlasted its mark, and someone deleted it)."""
        try:
            return await self._write(volume)
        except NotFound:
            with contextlib.suppress(Exception):
                await self.link.delete_volume(node, volume.id)
            raise Conflict(
                f"volume {volume.name} was deleted while it was made (its making took more "
                f"than {OPERATION_SECONDS:.0f} s)"
            ) from None

    async def _renewing(self, volume: Volume, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`body`, renewing the volume's mark (`made`) while it flows: an import may take longer
        than a mark holds, and only a lapsed mark lets a volume still `creating` be deleted."""
        renewed = time.monotonic()
        async for chunk in body:
            if time.monotonic() - renewed > RENEW_SECONDS:
                async with self.store.write() as tx:
                    now = await tx.volumes.get(volume.project_id, volume.id)
                    await tx.volumes.update(
                        replace(now, operation_until=time.time() + OPERATION_SECONDS)
                    )
                renewed = time.monotonic()
            yield chunk

    async def _write(self, volume: Volume) -> Volume:
        async with self.store.write() as tx:
            return await tx.volumes.update(volume)

    @contextlib.asynccontextmanager
    async def _operation(self, volume: Volume, node: Node) -> AsyncIterator[None]:
        """The node's part of an operation that took `volume` (`_take`): bounded in time, and
        on failure the volume is let go (on success the caller's last write does that)."""
        try:
            async with _node_call(node):
                yield
        except BaseException:
            await self._let_go(volume)
            raise

    async def _let_go(self, volume: Volume) -> Volume:
        """The volume, free of the operation that took it (if no other took it since)."""
        async with self.store.write() as tx:
            try:
                now = await tx.volumes.get(volume.project_id, volume.id)
            except NotFound:
                return volume
            if (now.operation, now.operation_until) != (volume.operation, volume.operation_until):
                return now
            return await tx.volumes.update(_free(now))

    async def _node_of(self, tx: Tx, volume: Volume) -> Node:
        if volume.node_id is None:
            raise Conflict(f"volume {volume.name} is on no node")
        node = await tx.nodes.get(volume.node_id)
        if node.state is not NodeState.READY:
            raise Conflict(
                f"volume {volume.name} is on node {node.name}, which is {node.state}: its data "
                "is there, so it waits for that node"
            )
        return node

    async def _node_for(self, ref: str, size_bytes: int) -> Node:
        """The node a new volume goes to: `ref` (a ready node's name or id), else the ready,
        uncordoned node with the most free space in its volume pool that can hold it."""
        async with self.store.read() as tx:
            nodes = await tx.nodes.list()
        if ref:
            for n in nodes:
                if ref in (n.id, n.name):
                    if n.state is not NodeState.READY:
                        raise Conflict(f"node {n.name} is {n.state}: it takes no volumes now")
                    return n
            raise NotFound(f"no node {ref!r}")
        best: tuple[int, Node] | None = None
        reasons: builtins.list[str] = []
        for n in nodes:
            if n.state is not NodeState.READY or n.cordoned:
                continue
            try:
                cap = await self.link.volume_capacity(n)
            except Exception as e:
                reasons.append(f"{n.name}: {e}")
                continue
            free = cap.total_bytes - cap.promised_bytes
            if free < size_bytes:
                reasons.append(f"{n.name}: {free} bytes free in its volume pool")
                continue
            if best is None or free > best[0]:
                best = (free, n)
        if best is None:
            why = "; ".join(reasons) or "no node is ready"
            raise NoCapacity(f"no node can hold a volume of {size_bytes} bytes ({why})")
        return best[1]


def _making(volume: Volume) -> Volume:
    """A new volume, taken while its node makes it (`made`): a controller that dies meanwhile
    leaves it `creating`, and once the mark lapses it can be deleted."""
    return replace(volume, operation="made", operation_until=time.time() + OPERATION_SECONDS)


def _free(volume: Volume, **changes: Any) -> Volume:
    """The volume with `changes`, no operation holding it."""
    return replace(volume, operation="", operation_until=0.0, **changes)


async def _take(tx: Tx, volume: Volume, operation: str) -> Volume:
    """The volume, taken for `operation` (under the project's lock: 409 if another has it)."""
    now = time.time()
    _idle(volume, now)
    return await tx.volumes.update(
        replace(volume, operation=operation, operation_until=now + OPERATION_SECONDS)
    )


@contextlib.asynccontextmanager
async def _node_call(node: Node) -> AsyncIterator[None]:
    """A node call of an operation, given NODE_SECONDS (its volume is taken for longer)."""
    try:
        async with asyncio.timeout(NODE_SECONDS):
            yield
    except TimeoutError:
        raise Unavailable(
            f"node {node.name} did not finish within {NODE_SECONDS:.0f} s: try again"
        ) from None


async def _head(body: AsyncIterator[bytes], n: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first `n` bytes of `body` (fewer if it ends first), and the rest of it."""
    got = bytearray()
    rest = b""
    async for chunk in body:
        got += chunk
        if len(got) >= n:
            rest = bytes(got[n:])
            break
    return bytes(got[:n]), _chain(rest, body)


async def _chain(first: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in body:
        yield chunk


async def _volume(tx: Tx, project: Project, ref: str) -> Volume:
    with missing(f"no volume {ref!r} in project {project.name}"):
        return await tx.volumes.get(project.id, ref)


async def _snapshot(tx: Tx, volume: Volume, ref: str) -> Snapshot:
    with missing(f"volume {volume.name} has no snapshot {ref!r}"):
        return await tx.volumes.snapshot(volume.id, ref)


async def _writer(tx: Tx, volume: Volume) -> tuple[str, str]:
    """The running sandbox that has the volume read-write, and where it is mounted: a snapshot
    is taken inside its freeze of that file system. ("", "") when none is (a detached volume,
    a machine not running, read-only, or no file system: fs none)."""
    if volume.machine_id is None or volume.fs == "none":
        return "", ""
    try:
        m = await tx.machines.by_id(volume.machine_id)
    except NotFound:
        return "", ""
    if m.state is not MachineState.RUNNING or m.node_id != volume.node_id:
        return "", ""
    for a in m.spec.volumes:
        if a.volume == volume.id and not a.read_only:
            return m.sandbox_id, a.target
    return "", ""


async def _detached(tx: Tx, volume: Volume, what: str) -> None:
    if volume.machine_id is not None:
        try:
            holder = (await tx.machines.by_id(volume.machine_id)).name
        except NotFound:
            holder = volume.machine_id
        raise Conflict(
            f"volume {volume.name} is attached to machine {holder}: it can be {what} once that "
            "machine is destroyed"
        )


def _idle(volume: Volume, now: float) -> None:
    if volume.busy(now):
        raise Conflict(
            f"volume {volume.name} is being {volume.operation}: try again once that is done"
        )


def _ready(volume: Volume) -> None:
    _idle(volume, time.time())
    if volume.state not in (VolumeState.AVAILABLE, VolumeState.ATTACHED):
        raise Conflict(f"volume {volume.name} is {volume.state}" + (
            f": {volume.error}" if volume.error else ""
        ))  # fmt: skip


def within_quota(project: Project, field: str, total_bytes: int) -> None:
    """QuotaExceeded if `total_bytes` is over the project's `field` (volume_gib, snapshot_gib)."""
    limit = getattr(project.quota, field)
    if limit is not None and total_bytes > limit * GIB:
        what = "volumes" if field == "volume_gib" else "snapshots"
        raise QuotaExceeded(
            f"project {project.name}'s {what} would take {total_bytes / GIB:.2f} GiB, the quota "
            f"({field}) is {limit} GiB"
        )
