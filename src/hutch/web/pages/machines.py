"""Machines: the list (filter, sort, live states, bulk actions, a run form) and a machine's
page (state, spec, events, actions)."""

from fastapi import Request
from fastapi.responses import HTMLResponse

from hutch.services.policy import Action
from hutch.web.render import page, pages
from hutch.web.visitor import Visiting

router = pages()


@router.get("/ui/machines")
async def machines(request: Request, v: Visiting) -> HTMLResponse:
    ctl = request.app.state.controller
    listed, _ = await ctl.machines.page(v.principal, v.project, limit=1000)
    return page(request, v, "machines.html", machines=listed, writable=v.may(Action.MACHINE_WRITE))


@router.get("/ui/machines/{ref}")
async def machine(request: Request, v: Visiting, ref: str) -> HTMLResponse:
    ctl = request.app.state.controller
    m = await ctl.machines.get(v.principal, v.project, ref)
    return page(request, v, "machine.html", m=m, writable=v.may(Action.MACHINE_WRITE))
