"""/v1/projects: projects, their quotas and tokens."""

from fastapi import APIRouter, Response, status

from hutch.api import convert
from hutch.api.deps import Caller, Ctl
from hutch.controller import Controller
from hutch.http.problems import PROBLEMS
from hutch.model.tenancy import Project, Usage
from hutch.model.volume import GIB
from hutch.wire import tenancy as wire
from hutch.wire.common import Page

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=PROBLEMS)


@router.get("")
async def list_projects(ctl: Ctl, caller: Caller) -> Page[wire.ProjectView]:
    return Page(items=[convert.project_view(p) for p in await ctl.tenancy.projects(caller)])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_project(ctl: Ctl, caller: Caller, body: wire.ProjectCreate) -> wire.ProjectView:
    project = await ctl.tenancy.create_project(
        caller, body.name, convert.quota_of(body.quota), body.strategy
    )
    return convert.project_view(project)


@router.get("/{name}")
async def get_project(ctl: Ctl, caller: Caller, name: str) -> wire.ProjectView:
    return convert.project_view(await ctl.tenancy.project_for(caller, name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(ctl: Ctl, caller: Caller, name: str) -> Response:
    project = await ctl.tenancy.delete_project(caller, name)
    await ctl.images.forget(project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{name}/quota")
async def get_quota(ctl: Ctl, caller: Caller, name: str) -> wire.QuotaReport:
    return await _report(ctl, *await ctl.tenancy.quota(caller, name))


@router.put("/{name}/quota")
async def set_quota(ctl: Ctl, caller: Caller, name: str, body: wire.QuotaSpec) -> wire.QuotaReport:
    return await _report(ctl, *await ctl.tenancy.set_quota(caller, name, convert.quota_of(body)))


@router.put("/{name}/strategy")
async def set_strategy(
    ctl: Ctl, caller: Caller, name: str, body: wire.StrategySpec
) -> wire.ProjectView:
    """How the project's machines are placed when they do not say: spread or pack."""
    return convert.project_view(await ctl.tenancy.set_strategy(caller, name, body.strategy))


@router.get("/{name}/tokens")
async def list_tokens(ctl: Ctl, caller: Caller, name: str) -> Page[wire.TokenView]:
    project, tokens = await ctl.tenancy.tokens(caller, name)
    return Page(items=[convert.token_view(t, project.name) for t in tokens])


@router.post("/{name}/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(
    ctl: Ctl, caller: Caller, name: str, body: wire.TokenCreate
) -> wire.TokenCreated:
    project, token, secret = await ctl.tenancy.create_token(
        caller, name, body.role, body.name, body.expires_in
    )
    view = convert.token_view(token, project.name if project else None)
    return wire.TokenCreated(**view.model_dump(), secret=secret)


@router.delete("/{name}/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(ctl: Ctl, caller: Caller, name: str, token_id: str) -> Response:
    await ctl.tenancy.revoke_token(caller, name, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _report(ctl: Controller, project: Project, usage: Usage) -> wire.QuotaReport:
    """The quota beside what the machines hold and, asked of a node, what the images take."""
    view = convert.usage_view(usage)
    if (images := await ctl.images.usage(project)) is not None:
        view = view.model_copy(update=images.model_dump())
    volumes, snapshots = await ctl.volumes.usage(project)
    view = view.model_copy(update={"volume_gib": volumes / GIB, "snapshot_gib": snapshots / GIB})
    return wire.QuotaReport(quota=convert.quota_view(project.quota), usage=view)
