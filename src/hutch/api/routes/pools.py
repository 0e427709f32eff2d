"""/v1/pools: warm pools, micro-VMs kept ready for `POST /v1/machines` of their image and shape."""

from fastapi import APIRouter, Response, status

from hutch.api import convert
from hutch.api.deps import Ctl, Scoped
from hutch.http.problems import PROBLEMS
from hutch.model.pool import PoolShape
from hutch.wire.common import Page
from hutch.wire.pools import PoolSet, PoolView

router = APIRouter(prefix="/v1/pools", tags=["pools"], responses=PROBLEMS)


async def _set(ctl: Ctl, s: Scoped, body: PoolSet) -> PoolView:
    shape = PoolShape(body.image, body.cpus, body.memory_mib, body.disk_mib, body.runtime)
    pool = await ctl.pools.set(s.caller, s.project, shape, body.min_ready)
    return convert.pool_view(*await ctl.pools.get(s.caller, s.project, pool.id), s.project.name)


@router.put("")
async def set_pool(ctl: Ctl, s: Scoped, body: PoolSet) -> PoolView:
    """The project's pool of this image and shape, made or updated: it keeps `min_ready`
    machines ready (the leader fills it from capacity and quota left over)."""
    return await _set(ctl, s, body)


@router.post("")
async def set_pool_post(ctl: Ctl, s: Scoped, body: PoolSet) -> PoolView:
    """As `PUT /v1/pools`."""
    return await _set(ctl, s, body)


@router.get("")
async def list_pools(ctl: Ctl, s: Scoped) -> Page[PoolView]:
    pools = await ctl.pools.list(s.caller, s.project)
    return Page(items=[convert.pool_view(p, st, s.project.name) for p, st in pools])


@router.get("/{ref}")
async def get_pool(ctl: Ctl, s: Scoped, ref: str) -> PoolView:
    """A pool by id, or by image when the project has one pool of it."""
    return convert.pool_view(*await ctl.pools.get(s.caller, s.project, ref), s.project.name)


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_pool(ctl: Ctl, s: Scoped, ref: str) -> Response:
    """The pool and its machines go (its template snapshot once no machine taken from it
    runs from it)."""
    await ctl.pools.delete(s.caller, s.project, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
