"""Projects, tokens and quotas: a project's quota and what it holds (everyone who may read it);
its tokens, created (the secret shown once) and revoked (its admins); every project, created,
deleted and given quotas (system tokens)."""

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response

from hutch.model.errors import Invalid
from hutch.model.tenancy import QUOTA_FIELDS, Project, Quota, Role
from hutch.model.volume import GIB
from hutch.services.policy import Action
from hutch.web.render import page, pages, see_other
from hutch.web.visitor import Acting, Visiting, Visitor, controller

router = pages()
MAX_EXPIRY_DAYS = 3650


def _roles(v: Visitor) -> list[str]:
    """The roles the visitor may give a new token: its own and below (any, for system)."""
    return [r.value for r in Role if v.system or v.principal.role.includes(r)]


@router.get("/ui/projects")
async def projects(request: Request, v: Visiting) -> HTMLResponse:
    ctl = controller(request)
    project, used = await ctl.tenancy.quota(v.principal, v.project.name)
    volume_bytes, snapshot_bytes = await ctl.volumes.usage(project)
    held = {
        "machines": used.machines, "vcpus": used.vcpus, "memory_mib": used.memory_mib,
        "disk_mib": used.disk_mib, "volume_gib": round(volume_bytes / GIB, 2),
        "snapshot_gib": round(snapshot_bytes / GIB, 2),
    }  # fmt: skip
    if (images := await ctl.images.usage(project)) is not None:
        held |= images.model_dump()
    tokens = None
    if v.may(Action.TOKEN_MANAGE):
        _, tokens = await ctl.tenancy.tokens(v.principal, project.name)
    every: list[Project] = await ctl.tenancy.projects(v.principal) if v.system else []
    return page(request, v, "projects.html", project=project, held=held, fields=QUOTA_FIELDS,
                tokens=tokens, roles=_roles(v), every=every)  # fmt: skip


@router.post("/ui/projects")
async def create_project(
    request: Request, v: Acting, name: Annotated[str, Form(min_length=1, max_length=63)]
) -> Response:
    project = await controller(request).tenancy.create_project(v.principal, name.strip(), Quota())
    return see_other(f"/ui/projects?project={project.name}")


@router.post("/ui/projects/{name}/delete")
async def delete_project(request: Request, v: Acting, name: str) -> Response:
    ctl = controller(request)
    project = await ctl.tenancy.delete_project(v.principal, name)
    await ctl.images.forget(project)  # as DELETE /v1/projects/{name} does
    return see_other("/ui/projects")


@router.post("/ui/projects/{name}/quota")
async def set_quota(request: Request, v: Acting, name: str) -> Response:
    """Each of QUOTA_FIELDS a whole number, or empty for no limit."""
    form = await request.form()
    limits: dict[str, int | None] = {}
    for field in QUOTA_FIELDS:
        text = str(form.get(field, "")).strip()
        if text and not (text.isascii() and text.isdigit() and len(text) <= 12):
            raise Invalid(f"quota {field}: {text!r} is not a whole number (empty: no limit)")
        limits[field] = int(text) if text else None
    await controller(request).tenancy.set_quota(v.principal, name, Quota(**limits))
    return see_other("/ui/projects")


@router.post("/ui/projects/{name}/tokens")
async def create_token(
    request: Request,
    v: Acting,
    name: str,
    role: Annotated[Role, Form()],
    label: Annotated[str, Form(max_length=63)] = "",
    days: Annotated[str, Form(max_length=5)] = "",
) -> HTMLResponse:
    """The new token's secret, on this page only: it is stored hashed and never shown again."""
    days = days.strip()
    # isascii: str.isdigit() is true of '²', which int() refuses.
    if days and not (days.isascii() and days.isdigit() and 0 < int(days) <= MAX_EXPIRY_DAYS):
        raise Invalid(f"expires in {days!r} days: a whole number from 1 to {MAX_EXPIRY_DAYS}, "
                      "or empty for never")  # fmt: skip
    expires = int(days) * 86400 if days else None
    project, token, secret = await controller(request).tenancy.create_token(
        v.principal, name, role, label.strip(), expires
    )
    return page(request, v, "token_created.html", token=token, secret=secret,
                project=project.name if project else "",
                headers={"Cache-Control": "no-store"})  # fmt: skip


@router.post("/ui/projects/{name}/tokens/{token_id}/revoke")
async def revoke_token(request: Request, v: Acting, name: str, token_id: str) -> Response:
    await controller(request).tenancy.revoke_token(v.principal, name, token_id)
    return see_other("/ui/projects")
