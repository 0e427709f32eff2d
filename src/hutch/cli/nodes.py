"""`hutch node`: the hosts that run machines (system tokens)."""

from typing import Annotated

import typer

from hutch.cli.remote import OutputOpt, act, connect, fields, listed, show, when
from hutch.model.units import format_bytes, parse_duration
from hutch.placement import CPU_OVERCOMMIT
from hutch.wire.nodes import NodeView

app = typer.Typer(help="Nodes: the hosts that run machines.", no_args_is_help=True)


def _used(n: NodeView, what: str) -> str:
    """Allocated/total as the scheduler counts them: vCPUs up to the overcommit, e.g.
    '3/32 (8x4)' for 3 vCPUs held on a host with 8 CPUs."""
    used, total = getattr(n.allocated, what), getattr(n.capacity, what)
    if what == "cpus":
        return f"{used}/{total * CPU_OVERCOMMIT} ({total}x{CPU_OVERCOMMIT})"
    return f"{format_bytes(used << 20)}/{format_bytes(total << 20)}"


@app.command("ls")
def ls(output: OutputOpt = "table") -> None:
    """List nodes (system token).

    Each one's state, runtimes, and how much of its capacity machines hold, as the scheduler
    counts it: vCPUs up to the host's CPUs times the overcommit, memory and disk as they are.
    """
    columns = [
        *fields("name", "id"),
        ("STATE", lambda n: f"{n.state},cordoned" if n.cordoned else n.state),
        ("DOMAIN", lambda n: n.domain or "-"),
        *fields("accel"),
        ("RUNTIMES", lambda n: ",".join(n.runtimes)),
        ("VCPUS", lambda n: _used(n, "cpus")),
        ("MEMORY", lambda n: _used(n, "memory_mib")),
        ("DISK", lambda n: _used(n, "disk_mib")),
        when("last_seen", "SEEN"),
    ]
    listed(lambda client: client.nodes.list(), columns, output)


Ref = Annotated[str, typer.Argument(metavar="NODE", help="A node's name or id.")]


@app.command()
def inspect(ref: Ref, output: OutputOpt = "json") -> None:
    """Show a node: capacity, allocation, labels, failure domain, state."""
    show(lambda client: client.nodes.get(ref), output)


@app.command()
def cordon(ref: Ref) -> None:
    """Take no new machines on the node; what it runs stays."""
    act(lambda client: client.nodes.cordon(ref), f"node {ref} is cordoned")


@app.command()
def uncordon(ref: Ref) -> None:
    """Let the node take new machines again."""
    act(lambda client: client.nodes.uncordon(ref), f"node {ref} takes machines again")


@app.command()
def drain(ref: Ref) -> None:
    """Cordon the node and move its machines elsewhere (each restarts on another node)."""
    act(
        lambda client: client.nodes.drain(ref),
        f"node {ref} is cordoned and its machines are moving to other nodes",
    )


@app.command("rm")
def rm(ref: Ref) -> None:
    """Forget a node that runs nothing (drain it first). Its agent must join again."""
    act(lambda client: client.nodes.remove(ref), f"node {ref} is removed")


@app.command("join-token")
def join_token(
    ttl: Annotated[
        str, typer.Option(help="How long it can be used: 30m, 2h (at most 24h).")
    ] = "1h",
) -> None:
    """Print a short-lived token for another host to join with (system token).

    On that host: hutch agent --controller URL --join-token-file FILE (or HUTCH_JOIN_TOKEN in
    its environment: a command line is visible to every user). When the controller serves
    HTTPS, the token pins its CA: the agent trusts that CA and no other.
    """
    with connect() as client:
        made = client.nodes.join_token(parse_duration(ttl))
    typer.echo(made.token)
