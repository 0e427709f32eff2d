"""Weighers: how good a node that passed the filters is. A raw score, higher is better.

Each weigher's scores are normalised to 0..1 across the candidates (`best`), then summed with
the weigher's weight, so a weigher's raw range does not decide how much it counts.
"""

from collections.abc import Callable, Sequence

from hutch.model.machine import Node, Strategy
from hutch.placement.capacity import need, plus, utilisation_of
from hutch.placement.request import NO_GROUP, Context, Placement, Request

Weigher = Callable[[Request, Node, Context], float]


def room(request: Request, node: Node, context: Context) -> float:
    """Spread: the share of the node left free after placing; pack: the share taken."""
    left = 1.0 - utilisation_of(node.capacity, plus(node.allocated, need(request, node)))
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


def best(
    request: Request,
    candidates: Sequence[Node],
    context: Context = NO_GROUP,
    weighers: Sequence[tuple[Weigher, float]] = WEIGHERS,
) -> Placement:
    """The candidate with the highest normalised score; ties to the first name."""
    # Lists by position, not dicts by id: the scheduler weighs a dozen nodes per machine.
    totals = [0.0] * len(candidates)
    for weigher, weight in weighers:
        raw = [weigher(request, node, context) for node in candidates]
        low, high = min(raw), max(raw)
        if high > low:  # else every candidate scores 0: totals stay as they are
            span = high - low
            totals = [
                total + weight * ((value - low) / span)
                for total, value in zip(totals, raw, strict=True)
            ]
    at = min(range(len(candidates)), key=lambda i: (-totals[i], candidates[i].name))
    return Placement(candidates[at], totals[at], len(candidates))
