"""`Index`: the placement rule at scale, over nodes grouped by shape and sorted by utilisation.

It weighs only the first few nodes of each shape that pass the filters, in the strategy's order,
and updates itself with each claim, so a batch of placements over thousands of nodes costs
O(k log n) each.
"""

from collections.abc import Iterable, Mapping
from dataclasses import replace

from sortedcontainers import SortedList

from hutch.model.machine import Node, Strategy
from hutch.placement.capacity import claim, utilisation
from hutch.placement.filters import first_reason
from hutch.placement.request import Context, Placement, Rejection, Request
from hutch.placement.weighers import best

SAMPLE = 16  # nodes `Index` weighs per placement
HOLDERS_LOOKED_UP = 2 * SAMPLE  # up to this many nodes holding the image are weighed each


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
        ports: Mapping[str, set[tuple[int, str]]] | None = None,
    ) -> Placement | Rejection:
        context = Context.of(members or {}, self._nodes, holders, ports)
        if request.node:  # one node may take it: no walk (other nodes' reasons are the same)
            node = self._nodes.get(request.node)
            if node is None:
                return Rejection({"(gone)": f"{request.node_why}, which is no longer a node"})
            why = first_reason(request, node, context)
            if why is not None:
                return Rejection({node.name: why})
            return replace(best(request, [node], context), because=request.node_why)
        # Room alone: the best of a shape is among its first two (the second for ties). A
        # group also weighs failure domains: it looks further.
        per_shape = max(self.k // max(len(self._shapes), 1), 2) if request.group else 2
        # Nodes that hold the image are weighed too (`has_image`), wherever the walk stops. A
        # few are looked up one by one; many (a busy image is on most nodes) would make that a
        # walk over every node, so each shape's walk goes on to its first few holders instead.
        few = len(holders) <= HOLDERS_LOOKED_UP
        want_held = 0 if few else per_shape
        candidates: list[Node] = []
        reasons: dict[str, str] = {}
        for order in self._shapes.values():
            # Spread walks from the emptiest node, pack from the fullest.
            walk = iter(order) if request.strategy is Strategy.SPREAD else reversed(order)
            found = held = 0
            for _, _, node_id in walk:
                holder = node_id in holders
                if found >= per_shape and not holder:
                    continue
                node = self._nodes[node_id]
                why = first_reason(request, node, context)
                if why is not None:
                    reasons[node.name] = why
                    continue
                candidates.append(node)
                found += 1
                held += holder
                if found >= per_shape and held >= want_held:
                    break
        if few:
            for holder in sorted(holders - {n.id for n in candidates}):
                node = self._nodes.get(holder)
                if node is not None and first_reason(request, node, context) is None:
                    candidates.append(node)
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
