"""Machine snapshots (a running micro-VM's memory, devices and disk, kept on its node): list,
take, delete. A machine continues from one with `hutch run --from SNAPSHOT`."""

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response

from hutch.services.policy import Action
from hutch.web.render import page, pages, see_other
from hutch.web.visitor import Acting, Visiting, controller

router = pages()


@router.get("/ui/snapshots")
async def snapshots(request: Request, v: Visiting) -> HTMLResponse:
    ctl = controller(request)
    found = await ctl.snapshots.list(v.principal, v.project)
    nodes, clones = await ctl.snapshots.details(found)
    return page(request, v, "snapshots.html", snapshots=found, nodes=nodes, clones=clones,
                writable=v.may(Action.MACHINE_WRITE))  # fmt: skip


@router.post("/ui/snapshots")
async def take(
    request: Request,
    v: Acting,
    machine: Annotated[str, Form(min_length=1, max_length=63)],
    name: Annotated[str, Form(max_length=63)] = "",
) -> Response:
    """The machine's workload pauses for the copy, then runs on; `name` empty: by the time."""
    await controller(request).snapshots.create(
        v.principal, v.project, machine.strip(), name.strip()
    )
    return see_other("/ui/snapshots")


@router.post("/ui/snapshots/{ref}/delete")
async def delete(request: Request, v: Acting, ref: str) -> Response:
    await controller(request).snapshots.delete(v.principal, v.project, ref)
    return see_other("/ui/snapshots")
