"""Networks and security groups: list, create, delete; a group's rules added and removed."""

from typing import Annotated, Literal

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response

from hutch.model.addressing import Rule
from hutch.services.policy import Action
from hutch.web.render import page, pages, see_other
from hutch.web.visitor import Acting, Visiting, controller

router = pages()
Name = Annotated[str, Form(min_length=1, max_length=63)]


@router.get("/ui/networks")
async def networks(request: Request, v: Visiting) -> HTMLResponse:
    ctl = controller(request)
    found = await ctl.networks.list(v.principal, v.project)
    groups = await ctl.networks.groups(v.principal, v.project)
    names = {g.id: g.name for g in groups}  # a rule's remote group, by name
    return page(request, v, "networks.html", networks=found, groups=groups, names=names,
                writable=v.may(Action.NETWORK_WRITE))  # fmt: skip


@router.post("/ui/networks")
async def create_network(
    request: Request,
    v: Acting,
    name: Name,
    subnet: Annotated[str, Form(max_length=43)] = "",
    subnet6: Annotated[str, Form(max_length=43)] = "",
    egress: Annotated[Literal["nat", "deny", "allow-list"], Form()] = "nat",
    egress_allow: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    await controller(request).networks.create(
        v.principal, v.project, name.strip(), subnet=subnet.strip(), subnet6=subnet6.strip(),
        egress=egress, egress_allow=egress_allow.replace(",", " ").split(),
    )  # fmt: skip
    return see_other("/ui/networks")


@router.post("/ui/networks/{ref}/delete")
async def delete_network(request: Request, v: Acting, ref: str) -> Response:
    await controller(request).networks.delete(v.principal, v.project, ref)
    return see_other("/ui/networks")


@router.post("/ui/security-groups")
async def create_group(request: Request, v: Acting, name: Name) -> Response:
    await controller(request).networks.create_group(v.principal, v.project, name.strip())
    return see_other("/ui/networks")


@router.post("/ui/security-groups/{ref}/delete")
async def delete_group(request: Request, v: Acting, ref: str) -> Response:
    await controller(request).networks.delete_group(v.principal, v.project, ref)
    return see_other("/ui/networks")


@router.post("/ui/security-groups/{ref}/rules")
async def add_rule(
    request: Request,
    v: Acting,
    ref: str,
    direction: Annotated[Literal["ingress", "egress"], Form()],
    remote: Annotated[str, Form(min_length=1, max_length=63)],
    protocol: Annotated[Literal["tcp", "udp", "icmp", "any"], Form()] = "any",
    ports: Annotated[str, Form(max_length=11)] = "",
) -> Response:
    """`remote`: a CIDR (or address), or a security group of the project by name or id."""
    remote = remote.strip()
    cidr = any(c in remote for c in "./:")  # no group name holds these
    low, high = Rule.parse_ports(ports.strip())
    rule = Rule(direction, protocol, low, high, remote if cidr else "", "" if cidr else remote)
    await controller(request).networks.add_rule(v.principal, v.project, ref, rule)
    return see_other(f"/ui/networks#sg-{ref}")


@router.post("/ui/security-groups/{ref}/rules/{rule_id}/delete")
async def remove_rule(request: Request, v: Acting, ref: str, rule_id: str) -> Response:
    await controller(request).networks.remove_rule(v.principal, v.project, ref, rule_id)
    return see_other(f"/ui/networks#sg-{ref}")
