"""/v1/nodes for system tokens, and /agent/v1 for node agents (with node credentials)."""

import time
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse

from hutch.api import convert
from hutch.api.deps import Caller, CallingNode, Ctl, bearer
from hutch.http.polls import unless_gone
from hutch.http.problems import PROBLEMS
from hutch.model.errors import NotFound
from hutch.model.machine import Capacity, Report
from hutch.wire.common import INT32_MAX, Page
from hutch.wire.nodes import (
    Activity,
    Assignments,
    Heartbeat,
    JoinTokenRequest,
    JoinTokenView,
    MachineReport,
    NodeRegister,
    NodeRegistered,
    NodeView,
    Wake,
)
from hutch.wire.telemetry import Samples

public = APIRouter(prefix="/v1/nodes", tags=["nodes"], responses=PROBLEMS)
agents = APIRouter(prefix="/agent/v1", tags=["agents"], responses=PROBLEMS)


@public.get("")
async def list_nodes(ctl: Ctl, caller: Caller) -> Page[NodeView]:
    return Page(items=[convert.node_view(n) for n in await ctl.nodes.listing(caller)])


@public.post("/join-tokens", status_code=status.HTTP_201_CREATED)
async def join_token(ctl: Ctl, caller: Caller, body: JoinTokenRequest) -> JoinTokenView:
    """A short-lived token for `hutch agent --join-token` (system tokens)."""
    token = ctl.nodes.join_token(caller, body.ttl)
    return JoinTokenView(token=token.encode(), expires_at=token.expires, ca_pin=token.ca_pin)


@public.get("/{ref}")
async def get_node(ctl: Ctl, caller: Caller, ref: str) -> NodeView:
    """A node by name or id."""
    return convert.node_view(await ctl.nodes.find(caller, ref))


@public.post("/{ref}/cordon")
async def cordon(ctl: Ctl, caller: Caller, ref: str) -> NodeView:
    """Take nothing new; what the node runs stays."""
    return convert.node_view(await ctl.nodes.cordon(caller, ref, True))


@public.post("/{ref}/uncordon")
async def uncordon(ctl: Ctl, caller: Caller, ref: str) -> NodeView:
    return convert.node_view(await ctl.nodes.cordon(caller, ref, False))


@public.post("/{ref}/drain")
async def drain(ctl: Ctl, caller: Caller, ref: str) -> NodeView:
    """Cordon, then move every machine that should run to other nodes (a new generation each,
    placed by the scheduler; the node destroys the old sandboxes)."""
    node = await ctl.nodes.cordon(caller, ref, True)
    await ctl.machines.drain(node)
    return convert.node_view(await ctl.nodes.get(node.id))  # what the moves gave back


@public.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_node(ctl: Ctl, caller: Caller, ref: str) -> Response:
    """Forget a node that runs nothing (409 otherwise: drain it first). Its credential stops
    working; to come back, its agent joins again."""
    await ctl.nodes.remove(caller, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@agents.get("/ca", response_class=PlainTextResponse)
async def ca(ctl: Ctl) -> str:
    """The CA the controller's HTTPS certificate comes from (PEM), for agents to check
    against their join token's pin. 404 when the controller serves plain HTTP."""
    if ctl.ca_pem is None:
        raise NotFound("this controller does not serve HTTPS")
    return ctl.ca_pem


@agents.post("/nodes", status_code=status.HTTP_201_CREATED)
async def register(ctl: Ctl, request: Request, body: NodeRegister) -> NodeRegistered:
    """Join with the controller's join secret as the bearer token."""
    node, credential, key = await ctl.nodes.register(
        bearer(request) or "",
        name=body.name,
        address=body.address,
        runtimes=body.runtimes,
        accel=body.accel,
        capacity=Capacity(body.cpus, body.memory_mib, body.disk_mib),
        overhead_mib=body.overhead_mib,
        labels=body.labels,
        domain=body.domain,
    )
    return NodeRegistered(node_id=node.id, credential=credential, controller_key=key)


def _own(node_id: str, caller_id: str) -> None:
    # A node credential acts on its own node only; others do not exist for it.
    if node_id != caller_id:
        raise NotFound(f"no node {node_id}")


@agents.post("/nodes/{node_id}/heartbeat", status_code=status.HTTP_204_NO_CONTENT)
async def heartbeat(ctl: Ctl, node: CallingNode, node_id: str, body: Heartbeat) -> Response:
    _own(node_id, node.id)
    await ctl.nodes.heartbeat(node, body.address)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@agents.get("/nodes/{node_id}/assignments", response_model=Assignments)
async def assignments(
    ctl: Ctl,
    node: CallingNode,
    node_id: str,
    request: Request,
    after: Annotated[int, Query(ge=-1, le=INT32_MAX)] = -1,
    wait: Annotated[float, Query(ge=0, le=60)] = 0.0,
) -> Assignments | Response:
    _own(node_id, node.id)
    server = request.scope.get("server")  # (host, port) the agent connected to, if TCP
    reached_at = server[0] if server else ""
    got = await unless_gone(request, ctl.nodes.assignments(node, after, wait, reached_at))
    if got is None:
        return Response(status_code=499)  # nobody to read it (nginx's "client closed request")
    return convert.assignments(*got)


@agents.get(
    "/nodes/{node_id}/images/archive",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
async def image_archive(
    ctl: Ctl, node: CallingNode, node_id: str, project: str, ref: str
) -> StreamingResponse:
    """An image a machine placed on this node needs and the node lacks, from a peer that has
    it (an OCI archive, checked by digest as the node imports it). Only for a project that has
    a machine on the node."""
    _own(node_id, node.id)
    _, machines, _ = await ctl.nodes.assignments(node, -1, 0)
    if not any(m.project_id == project for m, _ in machines):
        raise NotFound(f"no machine of project {project} is on this node")
    archive = ctl.images.from_peers(node, project, ref)
    headers = await anext(archive)  # before the 200: no peer has it is a 404
    return StreamingResponse(
        _rest(archive), media_type="application/x-tar", headers=cast(dict[str, str], headers)
    )


async def _rest(archive: AsyncIterator[object]) -> AsyncIterator[bytes]:
    async for chunk in archive:
        yield cast(bytes, chunk)


@agents.post(
    "/nodes/{node_id}/machines/{machine_id}/report", status_code=status.HTTP_204_NO_CONTENT
)
async def report(
    ctl: Ctl, node: CallingNode, node_id: str, machine_id: str, body: MachineReport
) -> Response:
    _own(node_id, node.id)
    at = body.time or time.time()
    outcome = Report(
        body.generation, body.state, at, body.exit_code, body.oom_killed, body.error,
        body.image_digest, body.image_source, body.resumed,
    )  # fmt: skip
    await ctl.machines.report(node, machine_id, outcome)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@agents.post("/nodes/{node_id}/activity", status_code=status.HTTP_204_NO_CONTENT)
async def activity(ctl: Ctl, node: CallingNode, node_id: str, body: Activity) -> Response:
    """Connections the node saw to its machines' published ports: their idle clocks restart."""
    _own(node_id, node.id)
    await ctl.machines.activity(node, body.machines)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@agents.post("/nodes/{node_id}/samples", status_code=status.HTTP_204_NO_CONTENT)
async def samples(ctl: Ctl, node: CallingNode, node_id: str, body: Samples) -> Response:
    """What the node's sandboxes used (cumulative counters; a sample sent again keeps its seq
    and counts once): stored as metric history, and metered."""
    _own(node_id, node.id)
    await ctl.telemetry.ingest(node, body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@agents.post("/nodes/{node_id}/machines/{machine_id}/wake", status_code=status.HTTP_204_NO_CONTENT)
async def wake(ctl: Ctl, node: CallingNode, node_id: str, machine_id: str, body: Wake) -> Response:
    """A connection came to a published port of a machine that idled to suspended: resume it."""
    _own(node_id, node.id)
    await ctl.machines.wake(node, machine_id, body.generation, body.port)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
