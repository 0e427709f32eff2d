"""Warm pools (model/pool.py): the tenant's requests, and the leader keeping each pool filled.

The leader tends every pool when one changes or one of its machines does (notify POOLS), and
every few seconds besides. A pool without its template snapshot gets a template machine (booted
until its guest agent answers, `Assignment.template`), snapshotted by its node through the
machine snapshot path into a snapshot only the pool sees, then destroyed. A pool with one gets
machines restored from it and left paused on its node (`Desired.READY`) until `min_ready` are
there, each only from capacity and quota left over and while no machine waits for a node.
`Machines.create` takes a ready one atomically and a refill follows; a machine that cannot be
placed or would exceed its project's quota destroys pooled machines first (`Machines`).
"""

import asyncio
import builtins
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hutch.model.errors import Conflict, HutchError, Invalid, NotFound
from hutch.model.machine import ACTIVE, Machine, MachineState
from hutch.model.pool import MAX_POOLS, Pool, PoolShape, PoolState, check_min_ready
from hutch.model.tenancy import Principal, Project
from hutch.services.ids import new_id
from hutch.services.machines import Machines
from hutch.services.notify import POOLS, Notifier
from hutch.services.policy import Action, Policy
from hutch.services.snapshots import Snapshots
from hutch.store.base import Store, Tx

log = logging.getLogger("hutch.pools")
TEND_EVERY = 5.0  # seconds between looks when nothing wakes the leader's pools


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What a pool has now, for its views."""

    ready: int  # made and paused: a run takes one
    starting: int  # being made, or its template booting
    node: str | None  # the name of the node its machines are on (None: not known yet)


class Pools:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        notifier: Notifier,
        machines: Machines,
        snapshots: Snapshots,
    ) -> None:
        self.store = store
        self.policy = policy
        self.notifier = notifier
        self.machines = machines
        self.snapshots = snapshots

    # -- tenant requests --------------------------------------------------------------------------

    async def set(
        self, principal: Principal, project: Project, shape: PoolShape, min_ready: int
    ) -> Pool:
        """The project's pool of `shape` keeping `min_ready` machines ready, made or updated
        (a failed one tries again)."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        check_min_ready(min_ready)
        await self.machines.check_image_source(principal, project, shape.image)
        now = time.time()
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)
            pool = await tx.pools.by_shape(project.id, shape)
            if pool is None:
                if len(await tx.pools.list(project.id)) >= MAX_POOLS:
                    raise Conflict(
                        f"project {project.name} has {MAX_POOLS} pools, the most it may have: "
                        "remove one first (hutch pool rm)"
                    )
                pool = Pool(
                    id=new_id("w"), project_id=project.id, shape=shape, min_ready=min_ready,
                    state=PoolState.PREPARING, created_at=now, updated_at=now,
                )  # fmt: skip
                await tx.pools.create(pool)
            else:
                state = PoolState.READY if pool.snapshot_id else PoolState.PREPARING
                pool = await tx.pools.update(
                    replace(pool, min_ready=min_ready, state=state, error="", updated_at=now)
                )
        self.notifier.notify(POOLS)
        return pool

    async def list(
        self, principal: Principal, project: Project
    ) -> builtins.list[tuple[Pool, PoolStatus]]:
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        async with self.store.read() as tx:
            return await _status(tx, await tx.pools.list(project.id))

    async def get(
        self, principal: Principal, project: Project, ref: str
    ) -> tuple[Pool, PoolStatus]:
        self.policy.require(principal, Action.MACHINE_READ, project.id)
        async with self.store.read() as tx:
            return (await _status(tx, [await _pool(tx, project, ref)]))[0]

    async def delete(self, principal: Principal, project: Project, ref: str) -> None:
        """The pool goes: its machines are destroyed, then its template snapshot once no
        machine taken from it runs from it (the leader does it)."""
        self.policy.require(principal, Action.MACHINE_WRITE, project.id)
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)
            pool = await _pool(tx, project, ref)
            await tx.pools.update(
                replace(pool, state=PoolState.DELETING, min_ready=0, updated_at=time.time())
            )
        self.notifier.notify(POOLS)

    # -- the leader -------------------------------------------------------------------------------

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Waiting from before the look: a change made during it is looked at next.
            woken = asyncio.ensure_future(self.notifier.wait(POOLS, TEND_EVERY))
            await asyncio.sleep(0)
            if leading():
                try:
                    await self.tend()
                except Exception:  # a store or node that failed: the next look tries again
                    log.exception("tending the warm pools failed")
            if stop.is_set():
                woken.cancel()
            else:
                await woken

    async def tend(self) -> None:
        """One look at every pool: what each lacks is asked for, what it has too many of goes."""
        async with self.store.read() as tx:
            pools = await tx.pools.list()
            machines = await tx.machines.pooled()
        for pool in pools:
            mine = [m for m in machines if m.pool == pool.id]
            try:
                await self._tend(pool, mine)
            except HutchError as e:
                log.warning("pool %s: %s", pool.id, e.message)

    async def _tend(self, pool: Pool, mine: builtins.list[Machine]) -> None:
        project = await self._project(pool)
        ended = [m for m in mine if m.state.finished]
        live = [m for m in mine if not m.state.finished]
        if ended:
            failed = next((m for m in ended if m.state is not MachineState.LOST), None)
            await self._destroy(ended, "ended in its pool")
            if failed is not None and pool.state is not PoolState.DELETING:
                what = "template" if failed.template else "machine"
                why = failed.error or f"exit code {failed.exit_code}"
                pool = await self._update(pool, state=PoolState.FAILED, error=f"its {what} {why}")
        if pool.state is PoolState.DELETING:
            await self._remove(pool, live)
            return
        if pool.state is PoolState.FAILED:
            return
        template = next((m for m in live if m.template), None)
        if not pool.snapshot_id:
            if template is None:
                if pool.min_ready:  # none wanted yet: no boot for nothing
                    await self._add(pool, project)
            elif template.state is MachineState.RUNNING:
                await self._snapshot(pool, project, template)
            return
        pooled = [m for m in live if not m.template]
        if extra := len(pooled) - pool.min_ready:
            if extra > 0:  # fewer wanted now: the newest go (the oldest are the readiest)
                await self._destroy(pooled[-extra:], "its pool wants fewer")
            else:
                for _ in range(-extra):
                    if not await self._add(pool, project):
                        return
        if pool.error:
            await self._update(pool, error="")

    async def _add(self, pool: Pool, project: Project) -> bool:
        made = await self.machines.add_to_pool(pool, project)
        if isinstance(made, str):
            if pool.error != (why := f"not full: {made}"):
                await self._update(pool, error=why)
            return False
        return True

    async def _snapshot(self, pool: Pool, project: Project, template: Machine) -> None:
        async def find(tx: Tx) -> Machine:
            return await tx.machines.by_id(template.id)

        if not await self._remove_snapshots(pool):
            return  # a leftover (see _remove_snapshots) has clones still: not while they run
        try:
            # "." is in no name a project can give (a DNS label): none can take this one first.
            snap = await self.snapshots.take(project, find, f"{pool.id}.template", pool.id)
        except HutchError as e:
            await self._update(pool, state=PoolState.FAILED, error=f"its template: {e.message}")
        else:
            await self._update(
                pool, state=PoolState.READY, error="", snapshot_id=snap.id,
                image_digest=snap.image_digest, node_id=snap.node_id,
            )  # fmt: skip
        await self._destroy([template], "its pool's template is taken")
        self.notifier.notify(POOLS)

    async def _remove(self, pool: Pool, live: builtins.list[Machine]) -> None:
        await self._destroy(live, "its pool was removed")
        if not await self._remove_snapshots(pool):
            return  # machines taken from it run from it: it goes after them
        async with self.store.write() as tx:
            await tx.pools.delete(pool.id)

    async def _remove_snapshots(self, pool: Pool) -> bool:
        """The pool's template snapshots, each once no machine runs from it: whether all
        went. Beside its own, a leader that died while a node took one left that one behind
        (its name, which the next take needs, with it)."""
        async with self.store.read() as tx:
            snaps = await tx.snapshots.list(pool.project_id, pool.id)
        gone = [await self.snapshots.remove_template(s.id) for s in snaps]
        return all(gone)

    async def _destroy(self, machines: builtins.list[Machine], why: str) -> None:
        if not machines:
            return
        async with self.store.write() as tx:
            for m in machines:
                try:
                    fresh = await tx.machines.by_id(m.id)
                except NotFound:
                    continue
                if fresh.pool and fresh.state is not MachineState.DESTROYED:  # not taken since
                    await self.machines.destroy_pooled(tx, fresh, why)

    async def _update(self, pool: Pool, **changes: object) -> Pool:
        async with self.store.write() as tx:
            try:
                fresh = await tx.pools.get(pool.project_id, pool.id)
            except NotFound:
                return pool
            return await tx.pools.update(
                replace(fresh, **changes, updated_at=time.time())  # type: ignore[arg-type]
            )

    async def _project(self, pool: Pool) -> Project:
        async with self.store.read() as tx:
            return await tx.projects.get(pool.project_id)


async def _status(tx: Tx, pools: builtins.list[Pool]) -> builtins.list[tuple[Pool, PoolStatus]]:
    """The pools (of one project) with what each has now."""
    machines = await tx.machines.pooled(pools[0].project_id) if pools else []
    nodes = {n.id: n.name for n in await tx.nodes.list()} if pools else {}
    out = []
    for pool in pools:
        mine = [m for m in machines if m.pool == pool.id]
        ready = sum(m.state is MachineState.READY for m in mine)
        starting = sum(m.state in ACTIVE and m.state is not MachineState.READY for m in mine)
        out.append((pool, PoolStatus(ready, starting, nodes.get(pool.node_id))))
    return out


async def _pool(tx: Tx, project: Project, ref: str) -> Pool:
    """A pool by id, or by image when the project has one pool of it."""
    pools = await tx.pools.list(project.id)
    if found := [p for p in pools if p.id == ref]:
        return found[0]
    of_image = [p for p in pools if p.shape.image == ref]
    if len(of_image) > 1:
        ids = ", ".join(p.id for p in of_image)
        raise Invalid(
            f"project {project.name} has {len(of_image)} pools of {ref} ({ids}): give one's id"
        )
    if not of_image:
        raise NotFound(f"no pool {ref!r} in project {project.name} (hutch pool ls)")
    return of_image[0]
