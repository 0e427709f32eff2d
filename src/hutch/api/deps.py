"""The controller's parts, and FastAPI dependencies: who is calling, in which project."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from hutch.model.machine import Node
from hutch.model.tenancy import Principal, Project
from hutch.services.health import Health
from hutch.services.images import Images
from hutch.services.leader import Leadership
from hutch.services.machines import Machines
from hutch.services.networks import Networks
from hutch.services.nodelink import NodeLink
from hutch.services.nodes import Nodes
from hutch.services.notify import Notifier
from hutch.services.retention import Retention
from hutch.services.scheduling import Scheduler
from hutch.services.streams import Streams
from hutch.services.tenancy import Tenancy
from hutch.store.base import Store


@dataclass
class Controller:
    store: Store
    notifier: Notifier
    link: NodeLink
    tenancy: Tenancy
    machines: Machines
    nodes: Nodes
    images: Images
    leadership: Leadership
    scheduler: Scheduler
    health: Health
    retention: Retention  # purges destroyed machines
    streams: Streams  # long-lived streams, ended when their token or project goes
    networks: Networks
    ca_pem: str | None = None  # when serving HTTPS


def controller(request: Request) -> Controller:
    ctl: Controller = request.app.state.controller
    return ctl


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


Ctl = Annotated[Controller, Depends(controller)]


async def principal(request: Request, ctl: Ctl) -> Principal:
    return await ctl.tenancy.authenticate(bearer(request))


Caller = Annotated[Principal, Depends(principal)]


@dataclass(frozen=True, slots=True)
class Scope:
    """Who calls, and the project the request acts in."""

    caller: Principal
    project: Project


async def scope(
    request: Request,
    ctl: Ctl,
    project: Annotated[
        str | None, Query(description="for system tokens: the project to act in")
    ] = None,
) -> Scope:
    return Scope(*await ctl.tenancy.scope(bearer(request), project))


Scoped = Annotated[Scope, Depends(scope)]


async def node(request: Request, ctl: Ctl) -> Node:
    return await ctl.nodes.authenticate(bearer(request))


CallingNode = Annotated[Node, Depends(node)]
