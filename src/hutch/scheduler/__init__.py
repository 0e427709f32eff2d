"""Placement: which node runs a machine. Pure and deterministic over a snapshot of nodes.

One rule, two ways to apply it. Every filter must pass (a node failing one is rejected with that
filter's reason); weighers score the survivors, each normalised to 0..1 across them and summed
with its weight; the best score wins, ties to the first node name.

`place()` applies the rule to every node, and explains a refusal node by node (dry runs,
NoCapacity). `Index` applies it at scale, over nodes grouped by shape and sorted by utilisation:
it weighs only the first few nodes of each shape that pass the filters, in the strategy's order,
and updates itself with each claim, so a batch of placements over thousands of nodes costs
O(k log n) each. Claiming the capacity in the store is the caller's separate, conditional step.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from sortedcontainers import SortedList

from hutch.model.machine import Capacity, GroupPolicy, Node, NodeState, Strategy

CPU_OVERCOMMIT = 4  # vCPUs per host CPU: idle guests are the rule
SAMPLE = 16  # nodes `Index` weighs per placement
EXPLAINED = 12  # nodes a refusal names one by one; the rest are counted by reason


@dataclass(frozen=True, slots=True)
class Request:
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    labels: Mapping[str, str] = field(default_factory=dict)  # the node must carry all of them
    strategy: Strategy = Strategy.SPREAD
    group: str = ""
    group_policy: GroupPolicy = GroupPolicy.NONE


@dataclass(frozen=True, slots=True)
class Context:
    """Where the request's group already runs: active machines per node id and per domain."""

    members: Mapping[str, int] = field(default_factory=dict)
    domains: Mapping[str, int] = field(default_factory=dict)
    holders: frozenset[str] = frozenset()  # nodes that hold the machine's image already

    @staticmethod
    def of(
        members: Mapping[str, int],
        nodes: Mapping[str, Node],
        holders: frozenset[str] = frozenset(),
    ) -> "Context":
        domains: dict[str, int] = {}
        for node_id, count in members.items():
            if (node := nodes.get(node_id)) is not None:
                domains[node.domain] = domains.get(node.domain, 0) + count
        return Context(dict(members), domains, holders)


NO_GROUP = Context()


@dataclass(frozen=True, slots=True)
class Placement:
    node: Node
    score: float = 0.0
    considered: int = 1  # nodes that passed the filters and were weighed
    rejected: Mapping[str, str] = field(default_factory=dict)  # as in Rejection


@dataclass(frozen=True, slots=True)
class Rejection:
    reasons: Mapping[str, str]  # node name -> why it cannot take the machine

    def explain(self) -> str:
        if not self.reasons:
            return "no node has registered with this controller yet"
        named = sorted(self.reasons.items())
        text = "; ".join(f"{name}: {why}" for name, why in named[:EXPLAINED])
        if len(named) > EXPLAINED:
            text += f"; and {len(named) - EXPLAINED} more nodes"
        return text


def need(request: Request, node: Node) -> Capacity:
    """What placing `request` takes from `node`, its runtime's per-sandbox overhead included."""
    overhead = node.overhead_mib.get(request.runtime, 0)
    return Capacity(request.cpus, request.memory_mib + overhead, request.disk_mib)


def limit(node: Node) -> Capacity:
    """What the node's allocation may reach."""
    cap = node.capacity
    return Capacity(cap.cpus * CPU_OVERCOMMIT, cap.memory_mib, cap.disk_mib)


def free(node: Node) -> Capacity:
    most, a = limit(node), node.allocated
    return Capacity(most.cpus - a.cpus, most.memory_mib - a.memory_mib, most.disk_mib - a.disk_mib)


def utilisation(node: Node) -> float:
    """The share of the node's memory and vCPUs taken, averaged: 0 empty, 1 full."""
    return _utilisation(node.capacity, node.allocated)


def _utilisation(cap: Capacity, a: Capacity) -> float:
    memory = a.memory_mib / cap.memory_mib if cap.memory_mib else 1.0
    cpus = a.cpus / (cap.cpus * CPU_OVERCOMMIT) if cap.cpus else 1.0
    return (memory + cpus) / 2


# -- filters: None passes, a string is the reason for rejecting -----------------------------------

Filter = Callable[[Request, Node, Context], str | None]


def ready(request: Request, node: Node, context: Context) -> str | None:
    return None if node.state is NodeState.READY else f"node is {node.state}"


def schedulable(request: Request, node: Node, context: Context) -> str | None:
    return "node is cordoned" if node.cordoned else None


def has_runtime(request: Request, node: Node, context: Context) -> str | None:
    if request.runtime in node.runtimes:
        return None
    return f"no {request.runtime} runtime (has {', '.join(node.runtimes) or 'none'})"


def has_labels(request: Request, node: Node, context: Context) -> str | None:
    missing = [f"{k}={v}" for k, v in request.labels.items() if node.labels.get(k) != v]
    return f"lacks labels {', '.join(missing)}" if missing else None


def fits(request: Request, node: Node, context: Context) -> str | None:
    want, room = need(request, node), free(node)
    if want.memory_mib > room.memory_mib:
        return f"{want.memory_mib} MiB of memory asked (with overhead), {room.memory_mib} free"
    if want.disk_mib > room.disk_mib:
        return f"{want.disk_mib} MiB of disk asked, {room.disk_mib} free"
    if want.cpus > room.cpus:
        return f"{want.cpus} vCPUs asked, {room.cpus} free (at {CPU_OVERCOMMIT}x overcommit)"
    return None


def group_policy(request: Request, node: Node, context: Context) -> str | None:
    here = context.members.get(node.id, 0)
    if request.group_policy is GroupPolicy.ANTI_AFFINITY and here:
        return f"runs a machine of group {request.group} already (anti-affinity)"
    if request.group_policy is GroupPolicy.AFFINITY and not here and context.members:
        return f"group {request.group} runs on another node (affinity)"
    return None


FILTERS: tuple[Filter, ...] = (ready, schedulable, has_runtime, has_labels, fits, group_policy)


# -- weighers: a raw score, higher is better; normalised across candidates -----------------------

Weigher = Callable[[Request, Node, Context], float]


def room(request: Request, node: Node, context: Context) -> float:
    """Spread: the share of the node left free after placing; pack: the share taken."""
    left = 1.0 - _utilisation(node.capacity, plus(node.allocated, need(request, node)))
    return left if request.strategy is Strategy.SPREAD else -left


def domain_spread(request: Request, node: Node, context: Context) -> float:
    """The group's machines in the node's failure domain, and on the node: fewer is better."""
    if not request.group:
        return 0.0
    return -(2.0 * context.domains.get(node.domain, 0) + context.members.get(node.id, 0))


def has_image(request: Request, node: Node, context: Context) -> float:
    """A node that holds the image starts the machine without fetching it first."""
    return 1.0 if node.id in context.holders else 0.0


WEIGHERS: tuple[tuple[Weigher, float], ...] = (
    (room, 1.0),
    (domain_spread, 2.0),
    (has_image, 0.5),
)


def place(
    request: Request,
    nodes: Sequence[Node],
    context: Context = NO_GROUP,
    filters: Sequence[Filter] = FILTERS,
    weighers: Sequence[tuple[Weigher, float]] = WEIGHERS,
) -> Placement | Rejection:
    """The rule over every node."""
    reasons: dict[str, str] = {}
    candidates = []
    for node in nodes:
        why = _first_reason(request, node, context, filters)
        if why is None:
            candidates.append(node)
        else:
            reasons[node.name] = why
    if not candidates:
        return Rejection(reasons)
    return replace(best(request, candidates, context, weighers), rejected=reasons)


def best(
    request: Request,
    candidates: Sequence[Node],
    context: Context = NO_GROUP,
    weighers: Sequence[tuple[Weigher, float]] = WEIGHERS,
) -> Placement:
    """The candidate with the highest normalised score; ties to the first name."""
    totals = {node.id: 0.0 for node in candidates}
    for weigher, weight in weighers:
        raw = {node.id: weigher(request, node, context) for node in candidates}
        low, high = min(raw.values()), max(raw.values())
        for node_id, value in raw.items():
            totals[node_id] += weight * ((value - low) / (high - low) if high > low else 0.0)
    winner = min(candidates, key=lambda n: (-totals[n.id], n.name))
    return Placement(winner, totals[winner.id], len(candidates))


def claim(node: Node, request: Request) -> Node:
    """`node` with the request's share added to what it has allocated."""
    return replace(node, allocated=plus(node.allocated, need(request, node)))


class Index:
    """The rule at scale, over a snapshot that it keeps up to date with its own claims.

    Nodes are grouped by shape (capacity and overheads), each group sorted by utilisation.
    Within one shape the weighers' room score follows utilisation, so walking each shape from
    the emptiest (spread) or the fullest (pack) and weighing the first few that pass the
    filters finds what weighing every node would, for a handful of shapes per cluster."""

    def __init__(self, nodes: Iterable[Node], k: int = SAMPLE) -> None:
        self.k = k
        self._nodes: dict[str, Node] = {}
        self._shapes: dict[tuple[object, ...], SortedList] = {}
        for node in nodes:
            self.update(node)

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def place(
        self,
        request: Request,
        members: Mapping[str, int] | None = None,
        holders: frozenset[str] = frozenset(),
    ) -> Placement | Rejection:
        context = Context.of(members or {}, self._nodes, holders)
        # Room alone: the best of a shape is among its first two (the second for ties). A
        # group also weighs failure domains: it looks further.
        per_shape = max(self.k // max(len(self._shapes), 1), 2) if request.group else 2
        candidates: list[Node] = []
        reasons: dict[str, str] = {}
        for order in self._shapes.values():
            # Spread walks from the emptiest node, pack from the fullest.
            walk = iter(order) if request.strategy is Strategy.SPREAD else reversed(order)
            found = 0
            for _, _, node_id in walk:
                node = self._nodes[node_id]
                why = _first_reason(request, node, context, FILTERS)
                if why is not None:
                    reasons[node.name] = why
                    continue
                candidates.append(node)
                found += 1
                if found == per_shape:
                    break
        # Nodes that hold the image are weighed too, wherever their shape's walk stopped.
        for holder in sorted(holders - {n.id for n in candidates}):
            held = self._nodes.get(holder)
            if held is not None and _first_reason(request, held, context, FILTERS) is None:
                candidates.append(held)
        if not candidates:
            return Rejection(reasons)
        return best(request, candidates, context)

    def claim(self, node_id: str, request: Request) -> Node:
        return self.update(claim(self._nodes[node_id], request))

    def update(self, node: Node) -> Node:
        """Take a node's new state (a claim, or a fresh copy from the store)."""
        old = self._nodes.get(node.id)
        if old is not None:
            self._shapes[_shape(old)].remove(_key(old))
        self._nodes[node.id] = node
        self._shapes.setdefault(_shape(node), SortedList()).add(_key(node))
        return node


def _shape(node: Node) -> tuple[object, ...]:
    return (node.capacity, tuple(sorted(node.overhead_mib.items())))


def _key(node: Node) -> tuple[float, str, str]:
    return (utilisation(node), node.name, node.id)


def _first_reason(
    request: Request, node: Node, context: Context, filters: Sequence[Filter]
) -> str | None:
    return next((r for f in filters if (r := f(request, node, context)) is not None), None)


def plus(a: Capacity, b: Capacity) -> Capacity:
    return Capacity(a.cpus + b.cpus, a.memory_mib + b.memory_mib, a.disk_mib + b.disk_mib)
