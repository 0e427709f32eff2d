"""Placement: which node runs a machine. Pure and deterministic over a snapshot of nodes.

The pipeline: every filter must pass (a node failing one is rejected with that filter's reason),
then weighers score the survivors, normalised to 0..1 across them and summed with their weights;
the best score wins, ties broken by node name. Claiming the node's capacity is the caller's
separate, compare-and-set step.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from hutch.model.machine import Capacity, Node, NodeState

CPU_OVERCOMMIT = 4  # vCPUs per host CPU: idle guests are the rule


@dataclass(frozen=True, slots=True)
class Request:
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    labels: Mapping[str, str] = field(default_factory=dict)  # the node must carry all of them


@dataclass(frozen=True, slots=True)
class Placement:
    node: Node


@dataclass(frozen=True, slots=True)
class Rejection:
    reasons: Mapping[str, str]  # node name -> why it cannot take the machine

    def explain(self) -> str:
        if not self.reasons:
            return "no node has registered with this controller yet"
        return "; ".join(f"{name}: {why}" for name, why in sorted(self.reasons.items()))


def need(request: Request, node: Node) -> Capacity:
    """What placing `request` takes from `node`, its runtime's per-sandbox overhead included."""
    overhead = node.overhead_mib.get(request.runtime, 0)
    return Capacity(request.cpus, request.memory_mib + overhead, request.disk_mib)


# -- filters: None passes, a string is the reason for rejecting -----------------------------------

Filter = Callable[[Request, Node], str | None]


def ready(request: Request, node: Node) -> str | None:
    return None if node.state is NodeState.READY else f"node is {node.state}"


def has_runtime(request: Request, node: Node) -> str | None:
    if request.runtime in node.runtimes:
        return None
    return f"no {request.runtime} runtime (has {', '.join(node.runtimes) or 'none'})"


def has_labels(request: Request, node: Node) -> str | None:
    missing = [f"{k}={v}" for k, v in request.labels.items() if node.labels.get(k) != v]
    return f"lacks labels {', '.join(missing)}" if missing else None


def fits(request: Request, node: Node) -> str | None:
    want, free = need(request, node), _free(node)
    if want.memory_mib > free.memory_mib:
        return f"{want.memory_mib} MiB of memory asked (with overhead), {free.memory_mib} free"
    if want.disk_mib > free.disk_mib:
        return f"{want.disk_mib} MiB of disk asked, {free.disk_mib} free"
    if want.cpus > free.cpus:
        return f"{want.cpus} vCPUs asked, {free.cpus} free (at {CPU_OVERCOMMIT}x overcommit)"
    return None


FILTERS: tuple[Filter, ...] = (ready, has_runtime, has_labels, fits)


# -- weighers: a raw score, higher is better; normalised across candidates -----------------------

Weigher = Callable[[Request, Node], float]


def free_memory(request: Request, node: Node) -> float:
    """Spread: prefer the node with the most memory left afterwards (Nova's RAM weigher)."""
    return float(_free(node).memory_mib - need(request, node).memory_mib)


WEIGHERS: tuple[tuple[Weigher, float], ...] = ((free_memory, 1.0),)


def place(
    request: Request,
    nodes: Sequence[Node],
    filters: Sequence[Filter] = FILTERS,
    weighers: Sequence[tuple[Weigher, float]] = WEIGHERS,
) -> Placement | Rejection:
    reasons: dict[str, str] = {}
    candidates = []
    for node in nodes:
        why = next((r for f in filters if (r := f(request, node)) is not None), None)
        if why is None:
            candidates.append(node)
        else:
            reasons[node.name] = why
    if not candidates:
        return Rejection(reasons)
    totals = {node.name: 0.0 for node in candidates}
    for weigher, weight in weighers:
        raw = {node.name: weigher(request, node) for node in candidates}
        low, high = min(raw.values()), max(raw.values())
        for name, value in raw.items():
            totals[name] += weight * ((value - low) / (high - low) if high > low else 0.0)
    best = min(candidates, key=lambda n: (-totals[n.name], n.name))  # ties: the first name
    return Placement(best)


def claim(node: Node, request: Request) -> Node:
    """`node` with the request's share added to what it has allocated."""
    want = need(request, node)
    a = node.allocated
    return _with_allocated(node, Capacity(a.cpus + want.cpus, a.memory_mib + want.memory_mib,
                                          a.disk_mib + want.disk_mib))  # fmt: skip


def release(node: Node, request: Request) -> Node:
    """`node` with the request's share given back (never below zero)."""
    want = need(request, node)
    a = node.allocated
    return _with_allocated(
        node,
        Capacity(
            max(a.cpus - want.cpus, 0),
            max(a.memory_mib - want.memory_mib, 0),
            max(a.disk_mib - want.disk_mib, 0),
        ),
    )


def _free(node: Node) -> Capacity:
    cap, a = node.capacity, node.allocated
    return Capacity(
        cap.cpus * CPU_OVERCOMMIT - a.cpus, cap.memory_mib - a.memory_mib, cap.disk_mib - a.disk_mib
    )


def _with_allocated(node: Node, allocated: Capacity) -> Node:
    return replace(node, allocated=allocated)
