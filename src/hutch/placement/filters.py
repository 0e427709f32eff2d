"""Filters: whether a node can take a request at all. None passes; a string is the reason.

Every filter must pass; a node is rejected with the reason of the first that fails, in the
order of `FILTERS` (so the reason a user reads is the most basic one).
"""

from collections.abc import Callable, Mapping, Sequence

from hutch.model.machine import GroupPolicy, Node, NodeState
from hutch.placement.capacity import CPU_OVERCOMMIT, free, limit, need
from hutch.placement.request import Context, Request

Filter = Callable[[Request, Node, Context], str | None]


def pinned(request: Request, node: Node, context: Context) -> str | None:
    """A machine with volumes runs on their node, and nowhere else (the data is there)."""
    if not request.node or node.id == request.node:
        return None
    return request.node_why or "the machine runs on another node only"


def ready(request: Request, node: Node, context: Context) -> str | None:
    return None if node.state is NodeState.READY else f"node is {node.state}"


def schedulable(request: Request, node: Node, context: Context) -> str | None:
    return "node is cordoned" if node.cordoned else None


def has_runtime(request: Request, node: Node, context: Context) -> str | None:
    if request.runtime in node.runtimes:
        return None
    return f"no {request.runtime} runtime (has {', '.join(node.runtimes) or 'none'})"


def lacks_labels(wanted: Mapping[str, str], node: Node) -> str | None:
    """Why `node` cannot take a machine that needs the labels `wanted`, if it cannot."""
    if not wanted:  # most machines: every node is asked, at every placement
        return None
    missing = [f"{k}={v}" for k, v in wanted.items() if node.labels.get(k) != v]
    return f"lacks labels {', '.join(missing)}" if missing else None


def has_labels(request: Request, node: Node, context: Context) -> str | None:
    return lacks_labels(request.labels, node)


def too_big(request: Request, node: Node) -> str | None:
    """Why no node of this one's capacity can take the request, however empty: overcommit
    shares CPUs between machines, not within one (the runtime refuses more vCPUs than CPUs)."""
    if request.cpus > node.capacity.cpus:
        return f"{request.cpus} vCPUs asked, the node has {node.capacity.cpus} CPUs"
    return None


def fits(request: Request, node: Node, context: Context) -> str | None:
    # Against the limit: what is free is worked out only for the reason of a node that is full.
    want, most, a = need(request, node), limit(node), node.allocated
    if a.memory_mib + want.memory_mib > most.memory_mib:
        room = free(node).memory_mib
        return f"{want.memory_mib} MiB of memory asked (with overhead), {room} free"
    if a.disk_mib + want.disk_mib > most.disk_mib:
        return f"{want.disk_mib} MiB of disk asked, {free(node).disk_mib} free"
    if (why := too_big(request, node)) is not None:
        return why
    if a.cpus + want.cpus > most.cpus:
        room = free(node).cpus
        return f"{want.cpus} vCPUs asked, {room} free (at {CPU_OVERCOMMIT}x overcommit)"
    return None


def group_policy(request: Request, node: Node, context: Context) -> str | None:
    here = context.members.get(node.id, 0)
    if request.group_policy is GroupPolicy.ANTI_AFFINITY and here:
        return f"runs a machine of group {request.group} already (anti-affinity)"
    if request.group_policy is GroupPolicy.AFFINITY and not here and context.members:
        return f"group {request.group} runs on another node (affinity)"
    return None


def ports_free(request: Request, node: Node, context: Context) -> str | None:
    """Host ports are a resource: one node publishes a port and protocol for one machine."""
    if not request.ports:
        return None
    taken = sorted(request.ports & set(context.ports.get(node.id, ())))
    if not taken:
        return None
    return "host port " + ", ".join(f"{p}/{proto}" for p, proto in taken) + " published already"


FILTERS: tuple[Filter, ...] = (
    pinned,  # first: what other nodes could offer does not matter
    ready,
    schedulable,
    has_runtime,
    has_labels,
    fits,
    group_policy,
    ports_free,
)


def first_reason(
    request: Request, node: Node, context: Context, filters: Sequence[Filter] = FILTERS
) -> str | None:
    """Why `node` cannot take `request` (the first filter that fails), or None. The node a
    request is pinned to says, besides, that the machine waits for it."""
    for f in filters:  # a loop, not next() over a generator: called for every node weighed
        why = f(request, node, context)
        if why is not None:
            if request.node == node.id and request.node_why:
                why += f" ({request.node_why}: the machine runs nowhere else)"
            return why
    return None
