"""FastAPI dependencies: the controller, who is calling, in which project."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.requests import HTTPConnection

from hutch.controller import Controller
from hutch.model.machine import Node
from hutch.model.tenancy import Principal, Project


async def controller(request: Request) -> Controller:
    # async, although it awaits nothing: FastAPI runs a plain def dependency in a worker
    # thread, a hop per request for reading an attribute.
    ctl: Controller = request.app.state.controller
    return ctl


def bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
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
