"""`hutch node`: the hosts that run machines (system tokens)."""

import typer

from hutch.cli.remote import OutputOpt, ago, connect, emit
from hutch.model.units import format_bytes
from hutch.wire.nodes import NodeView

app = typer.Typer(help="Nodes: the hosts that run machines.", no_args_is_help=True)


def _used(n: NodeView, what: str) -> str:
    used, total = getattr(n.allocated, what), getattr(n.capacity, what)
    if what == "cpus":
        return f"{used}/{total}"
    return f"{format_bytes(used << 20)}/{format_bytes(total << 20)}"


@app.command("ls")
def ls(output: OutputOpt = "table") -> None:
    """List nodes (system token).

    Each one's state, runtimes, and how much of its capacity machines hold.
    """
    with connect() as client:
        nodes = list(client.nodes.list())
    emit(
        nodes,
        [
            ("NAME", lambda n: n.name),
            ("ID", lambda n: n.id),
            ("STATE", lambda n: n.state),
            ("ACCEL", lambda n: n.accel),
            ("RUNTIMES", lambda n: ",".join(n.runtimes)),
            ("CPUS", lambda n: _used(n, "cpus")),
            ("MEMORY", lambda n: _used(n, "memory_mib")),
            ("DISK", lambda n: _used(n, "disk_mib")),
            ("SEEN", lambda n: ago(n.last_seen)),
        ],
        output,
    )
