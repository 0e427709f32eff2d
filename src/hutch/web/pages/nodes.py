"""Nodes (system tokens only, as in the API): each with its capacity and what is allocated,
a node's machines across projects, cordon, uncordon and removal."""

from typing import Literal

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from hutch.placement import CPU_OVERCOMMIT
from hutch.web.render import page, pages, see_other
from hutch.web.visitor import Acting, Visiting, controller

router = pages()


@router.get("/ui/nodes")
async def nodes(request: Request, v: Visiting) -> HTMLResponse:
    found = await controller(request).nodes.listing(v.principal)
    return page(request, v, "nodes.html", nodes=found, overcommit=CPU_OVERCOMMIT)


@router.get("/ui/nodes/{ref}")
async def node(request: Request, v: Visiting, ref: str) -> HTMLResponse:
    ctl = controller(request)
    n, machines = await ctl.nodes.machines(v.principal, ref)
    projects = {p.id: p.name for p in await ctl.tenancy.projects(v.principal)}
    return page(
        request, v, "node.html", n=n, machines=machines, projects=projects,
        overcommit=CPU_OVERCOMMIT,
    )  # fmt: skip


@router.post("/ui/nodes/{ref}/{action}")
async def act(
    request: Request, v: Acting, ref: str, action: Literal["cordon", "uncordon", "remove"]
) -> Response:
    """Cordoned, a node runs what it has and takes nothing new; removed (only once it runs
    nothing), it is forgotten and its credential stops working."""
    nodes = controller(request).nodes
    if action == "remove":
        await nodes.remove(v.principal, ref)
        return see_other("/ui/nodes")
    n = await nodes.cordon(v.principal, ref, action == "cordon")
    return see_other(f"/ui/nodes/{n.name}")
