"""/v1/networks and /v1/security-groups: a project's networks and security groups."""

from fastapi import APIRouter, Response, status

from hutch.api import convert
from hutch.api.deps import Ctl, Scoped
from hutch.http.problems import PROBLEMS
from hutch.wire.common import Page
from hutch.wire.networks import (
    NetworkCreate,
    NetworkView,
    RuleCreate,
    SecurityGroupCreate,
    SecurityGroupView,
)

router = APIRouter(tags=["networks"], responses=PROBLEMS)


@router.post("/v1/networks", status_code=status.HTTP_201_CREATED)
async def create_network(ctl: Ctl, s: Scoped, body: NetworkCreate) -> NetworkView:
    """A network of the project: dual-stack, its IPv4 subnet given or from the pool, its IPv6
    /64 given or from the controller's ULA /48."""
    n = await ctl.networks.create(
        s.caller, s.project, body.name, subnet=body.subnet, subnet6=body.subnet6,
        egress=body.egress, egress_allow=body.egress_allow,
    )  # fmt: skip
    return convert.network_view(n, s.project.name)


@router.get("/v1/networks")
async def list_networks(ctl: Ctl, s: Scoped) -> Page[NetworkView]:
    found = await ctl.networks.list(s.caller, s.project)
    return Page(items=[convert.network_view(n, s.project.name, count) for n, count in found])


@router.get("/v1/networks/{ref}")
async def get_network(ctl: Ctl, s: Scoped, ref: str) -> NetworkView:
    n, count = await ctl.networks.get(s.caller, s.project, ref)
    return convert.network_view(n, s.project.name, count)


@router.delete("/v1/networks/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_network(ctl: Ctl, s: Scoped, ref: str) -> Response:
    """409 while machines hold addresses on it."""
    await ctl.networks.delete(s.caller, s.project, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/security-groups", status_code=status.HTTP_201_CREATED)
async def create_group(ctl: Ctl, s: Scoped, body: SecurityGroupCreate) -> SecurityGroupView:
    rules = [convert.rule_of(r) for r in body.rules]
    g = await ctl.networks.create_group(s.caller, s.project, body.name, rules)
    return convert.group_view(g, s.project.name)


@router.get("/v1/security-groups")
async def list_groups(ctl: Ctl, s: Scoped) -> Page[SecurityGroupView]:
    groups = await ctl.networks.groups(s.caller, s.project)
    return Page(items=[convert.group_view(g, s.project.name) for g in groups])


@router.get("/v1/security-groups/{ref}")
async def get_group(ctl: Ctl, s: Scoped, ref: str) -> SecurityGroupView:
    return convert.group_view(await ctl.networks.group(s.caller, s.project, ref), s.project.name)


@router.delete("/v1/security-groups/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(ctl: Ctl, s: Scoped, ref: str) -> Response:
    """409 while live machines are in it, or other groups' rules name it."""
    await ctl.networks.delete_group(s.caller, s.project, ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/security-groups/{ref}/rules", status_code=status.HTTP_201_CREATED)
async def add_rule(ctl: Ctl, s: Scoped, ref: str, body: RuleCreate) -> SecurityGroupView:
    """The group with the rule added (its id is the last rule's); nodes apply it at once."""
    g, _ = await ctl.networks.add_rule(s.caller, s.project, ref, convert.rule_of(body))
    return convert.group_view(g, s.project.name)


@router.delete("/v1/security-groups/{ref}/rules/{rule_id}")
async def remove_rule(ctl: Ctl, s: Scoped, ref: str, rule_id: str) -> SecurityGroupView:
    g = await ctl.networks.remove_rule(s.caller, s.project, ref, rule_id)
    return convert.group_view(g, s.project.name)
