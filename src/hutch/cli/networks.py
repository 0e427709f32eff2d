"""`hutch network` and `hutch sg`: a project's private networks and security groups."""

from typing import Annotated

import typer

from hutch.cli.remote import OutputOpt, act, connect, fields, listed, progress, show, when
from hutch.model.errors import Invalid
from hutch.wire.networks import RuleView, SecurityGroupView

network_app = typer.Typer(help="Networks: a project's private networks.", no_args_is_help=True)
sg_app = typer.Typer(
    help="Security groups: named rules attached to machines (hutch run --sg NAME).",
    no_args_is_help=True,
)
rule_app = typer.Typer(help="Add or remove a security group's rules.", no_args_is_help=True)
sg_app.add_typer(rule_app, name="rule")

NetworkRef = Annotated[str, typer.Argument(metavar="NETWORK", help="A network's name or id.")]
GroupRef = Annotated[str, typer.Argument(metavar="GROUP", help="A security group's name or id.")]


def split_subnets(subnets: list[str]) -> tuple[str, str]:
    """`--subnet` given up to twice, as (IPv4, IPv6): one of each family at most (as Docker's
    `--subnet`); an address with a ':' is IPv6. Whether each is a good CIDR, the controller
    says."""
    four = [s for s in subnets if ":" not in s]
    six = [s for s in subnets if ":" in s]
    if len(four) > 1 or len(six) > 1:
        raise Invalid(
            f"--subnet is given {len(subnets)} times: once for IPv4 and once for IPv6 at most"
        )
    return (four or [""])[0], (six or [""])[0]


@network_app.command("create")
def network_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Unique in the project.")],
    subnet: Annotated[
        list[str] | None,
        typer.Option(
            "--subnet",
            help="IPv4 CIDR (/8 to /29, private, outside the controller's pool; default: a /24 "
            "of the pool) and/or IPv6 CIDR (a /64 of fd00::/8, outside the controller's ULA "
            "/48; default: a /64 of it); given twice for both.",
        ),
    ] = None,
    egress: Annotated[
        str, typer.Option(help="nat (default: out through the node), deny, or allow-list.")
    ] = "nat",
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="A CIDR machines may reach (egress allow-list); repeatable."),
    ] = None,
) -> None:
    """Make a network (dual-stack); machines join it with hutch run --network NAME.

    hutch network create back --subnet 192.168.10.0/24 --subnet fd12:3456:789a:1::/64
    """
    subnet4, subnet6 = split_subnets(subnet or [])
    with connect() as client:
        n = client.networks.create(name, subnet4, egress, allow or (), subnet6=subnet6)
    progress(f"network {n.name}: {n.subnet4}, {n.subnet6}")


@network_app.command("ls")
def network_ls(output: OutputOpt = "table") -> None:
    """List the project's networks."""
    columns = [
        *fields("name", "id", "subnet4", "subnet6", "egress", "machines"),
        when("created_at"),
    ]
    listed(lambda client: client.networks.list(), columns, output)


@network_app.command("inspect")
def network_inspect(ref: NetworkRef, output: OutputOpt = "json") -> None:
    """Show a network: subnets, gateways, VNI, egress, machines on it."""
    show(lambda client: client.networks.get(ref), output)


@network_app.command("rm")
def network_rm(ref: NetworkRef) -> None:
    """Delete a network no machine is on."""
    act(lambda client: client.networks.delete(ref), f"network {ref} is deleted")


@sg_app.command("create")
def sg_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Unique in the project.")],
) -> None:
    """Make a security group (no rules yet: hutch sg rule add)."""
    with connect() as client:
        g = client.security_groups.create(name)
    typer.echo(g.id)


def _rules(g: SecurityGroupView) -> str:
    return "; ".join(rule_text(r) for r in g.rules) or "-"


def rule_text(r: RuleView) -> str:
    ports = "" if (r.port_min, r.port_max) == (0, 0) else (
        f":{r.port_min}" if r.port_min == r.port_max else f":{r.port_min}-{r.port_max}"
    )  # fmt: skip
    return f"{r.direction} {r.protocol}{ports} {r.remote_cidr or r.remote_group}"


@sg_app.command("ls")
def sg_ls(output: OutputOpt = "table") -> None:
    """List the project's security groups and their rules."""
    columns = [*fields("name", "id"), ("RULES", _rules), when("created_at")]
    listed(lambda client: client.security_groups.list(), columns, output)


@sg_app.command("inspect")
def sg_inspect(ref: GroupRef, output: OutputOpt = "json") -> None:
    """Show a security group and its rules (with their ids, for hutch sg rule rm)."""
    show(lambda client: client.security_groups.get(ref), output)


@sg_app.command("rm")
def sg_rm(ref: GroupRef) -> None:
    """Delete a security group no live machine is in."""
    act(lambda client: client.security_groups.delete(ref), f"security group {ref} is deleted")


@rule_app.command("add")
def rule_add(
    ref: GroupRef,
    direction: Annotated[str, typer.Argument(metavar="DIRECTION", help="ingress or egress.")],
    protocol: Annotated[str, typer.Option(help="tcp, udp, icmp or any.")] = "any",
    port: Annotated[str, typer.Option(help="PORT or LOW-HIGH (tcp/udp); default: all.")] = "",
    remote: Annotated[
        str,
        typer.Option(
            help="Required: a CIDR (0.0.0.0/0, 10.0.0.5/32) or a security group of the "
            "project's (its machines' addresses)."
        ),
    ] = "",
) -> None:
    """Allow traffic; prints the rule's id. Nodes apply it to running machines at once.

    hutch sg rule add web ingress --protocol tcp --port 80 --remote 0.0.0.0/0
    """
    if not remote:
        raise Invalid("--remote is required: a CIDR (0.0.0.0/0 for anyone) or a security group")
    with connect() as client:
        g = client.security_groups.add_rule(ref, direction, protocol, port, remote)
    typer.echo(g.rules[-1].id)


@rule_app.command("rm")
def rule_rm(
    ref: GroupRef,
    rule: Annotated[str, typer.Argument(metavar="RULE", help="The rule's id (hutch sg inspect).")],
) -> None:
    """Remove a rule."""
    act(
        lambda client: client.security_groups.remove_rule(ref, rule),
        f"rule {rule} is removed from {ref}",
    )
