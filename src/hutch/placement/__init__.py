"""Placement: which node runs a machine. Pure and deterministic over a snapshot of nodes.

One rule, two ways to apply it. Every filter must pass (`filters.py`: a node failing one is
rejected with that filter's reason); weighers score the survivors (`weighers.py`: each
normalised to 0..1 across them and summed with its weight); the best score wins, ties to the
first node name. `capacity.py` says how a node's capacity is counted; `request.py` holds what
placement is asked and what it answers.

`place()` applies the rule to every node, and explains a refusal node by node (dry runs,
NoCapacity). `Index` (`index.py`) applies it at scale, to a few nodes of each shape, and keeps its
snapshot up to date with each claim. Claiming the capacity in the store is the caller's separate,
conditional step (the scheduler's rounds, `services/scheduling.py`).
"""

from collections.abc import Sequence
from dataclasses import replace

from hutch.model.machine import Node
from hutch.placement.capacity import CPU_OVERCOMMIT, claim, free, limit, need, plus, utilisation
from hutch.placement.filters import FILTERS, Filter, first_reason
from hutch.placement.index import Index
from hutch.placement.request import NO_GROUP, Context, Placement, Rejection, Request
from hutch.placement.weighers import WEIGHERS, Weigher, best

__all__ = [
    "CPU_OVERCOMMIT",
    "NO_GROUP",
    "Context",
    "Index",
    "Placement",
    "Rejection",
    "Request",
    "claim",
    "free",
    "limit",
    "need",
    "place",
    "plus",
    "utilisation",
]


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
        why = first_reason(request, node, context, filters)
        if why is None:
            candidates.append(node)
        else:
            reasons[node.name] = why
    if not candidates:
        return Rejection(reasons)
    placed = best(request, candidates, context, weighers)
    return replace(placed, rejected=reasons, because=request.node_why if request.node else "")
