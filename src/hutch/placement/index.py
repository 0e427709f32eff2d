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
from hutch.placement.filters import first_reason, too_big
from hutch.placement.request import Context, Placement, Rejection, Request
from hutch.placement.weighers import best

SAMPLE = 16  # nodes `Index` weighs per placement
HOLDER_SETS = 8  # sets of nodes holding an image that `Index` keeps sorted at once

Shapes = dict[tuple[object, ...], SortedList]  # shape -> its nodes' keys, by utilisation


class Index:
    """The rule at scale, over a snapshot that it keeps up to date with its own claims.

    Nodes are grouped by shape (capacity and overheads), each group sorted by utilisation.
    Within one shape the weighers' room score follows utilisation, so walking each shape from
    the emptiest (spread) or the fullest (pack) and weighing the first few that pass the
    filters finds what weighing every node would, for a handful of shapes per cluster. Nodes
    that hold the request's image (`has_image`) are grouped and sorted the same way, apart,
    and walked too."""

    def __init__(self, nodes: Iterable[Node], k: int = SAMPLE) -> None:
        self.k = k
        self._nodes: dict[str, Node] = {}
        self._shapes: Shapes = {}
        # Holders of an image -> those nodes by shape; sorted at the first placement naming
        # that set, then kept up to date by update().
        self._holding: dict[frozenset[str], Shapes] = {}
        # The sets of `_holding` as last named, by identity: a scheduler's page names one set a
        # thousand times, and finding a set by value compares every member of an equal copy.
        self._named: dict[int, tuple[frozenset[str], Shapes]] = {}
        for node in nodes:
            self.update(node)

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    @property
    def nodes(self) -> Mapping[str, Node]:
        """Node id -> the node as the index sees it (do not change it: see update)."""
        return self._nodes

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
        candidates: dict[str, Node] = {}
        reasons: dict[str, str] = {}
        for order in self._shapes.values():
            self._walk(
                order, request, context, count=per_shape, candidates=candidates, reasons=reasons
            )
        # The best holders of each shape too, wherever the walk above stopped.
        for order in self._held(holders).values():
            self._walk(
                order, request, context, count=per_shape, candidates=candidates, reasons=reasons
            )
        if not candidates:
            return Rejection(reasons)
        return best(request, list(candidates.values()), context)

    def _walk(
        self,
        order: SortedList,
        request: Request,
        context: Context,
        *,
        count: int,
        candidates: dict[str, Node],
        reasons: dict[str, str],
    ) -> None:
        """Add the first `count` nodes of `order` that pass the filters to `candidates` (those
        already there count), the reasons of those that do not to `reasons`."""
        if order and (why := too_big(request, self._nodes[order[0][2]])) is not None:
            for _, _, node_id in order.islice(0, self.k):  # so for all of the shape: a few say
                reasons[self._nodes[node_id].name] = why
            return
        # Spread walks from the emptiest node, pack from the fullest.
        walk = iter(order) if request.strategy is Strategy.SPREAD else reversed(order)
        found = 0
        for _, _, node_id in walk:
            if node_id not in candidates:
                node = self._nodes[node_id]
                why = first_reason(request, node, context)
                if why is not None:
                    reasons[node.name] = why
                    continue
                candidates[node_id] = node
            found += 1
            if found == count:
                return

    def _held(self, holders: frozenset[str]) -> Shapes:
        if not holders:
            return {}
        named = self._named.get(id(holders))
        if named is not None and named[0] is holders:
            return named[1]
        shapes = self._holding.get(holders)
        if shapes is None:
            shapes = self._sort(holders)
        if len(self._named) >= HOLDER_SETS:
            self._named.clear()
        self._named[id(holders)] = (holders, shapes)
        return shapes

    def _sort(self, holders: frozenset[str]) -> Shapes:
        """The nodes of `holders` by shape, each sorted as in `_shapes`, kept in `_holding`."""
        self._named.clear()  # sets sorted before may be taken over, or dropped
        # A set like one sorted before (the same image, a page later: a few more holders) takes
        # its sorting over, changed by the difference; so sets no longer named are not kept.
        for known in self._holding:
            gone, new = known - holders, holders - known
            if len(gone) + len(new) < len(holders):
                shapes = self._holding.pop(known)
                for node_id in gone:
                    if (node := self._nodes.get(node_id)) is not None:
                        shapes[_shape(node)].remove(_key(node))
                break
        else:
            if len(self._holding) >= HOLDER_SETS:
                self._holding.clear()
            shapes, new = {}, holders
        self._holding[holders] = shapes
        for node_id in new:
            if (node := self._nodes.get(node_id)) is not None:
                shapes.setdefault(_shape(node), SortedList()).add(_key(node))
        return shapes

    def claim(self, node_id: str, request: Request) -> Node:
        return self.update(claim(self._nodes[node_id], request))

    def update(self, node: Node) -> Node:
        """Take a node's new state (a claim, or a fresh copy from the store)."""
        old = self._nodes.get(node.id)
        self._nodes[node.id] = node
        _move(self._shapes, old, node)
        for holders, shapes in self._holding.items():
            if node.id in holders:
                _move(shapes, old, node)
        return node

    def remove(self, node_id: str) -> None:
        """Forget a node (gone from the store)."""
        old = self._nodes.pop(node_id)
        _move(self._shapes, old, None)
        for holders, shapes in self._holding.items():
            if node_id in holders:
                _move(shapes, old, None)


def _move(shapes: Shapes, old: Node | None, new: Node | None) -> None:
    if old is not None:
        shapes[_shape(old)].remove(_key(old))
    if new is not None:
        shapes.setdefault(_shape(new), SortedList()).add(_key(new))


def _shape(node: Node) -> tuple[object, ...]:
    return (node.capacity, tuple(sorted(node.overhead_mib.items())))


def _key(node: Node) -> tuple[float, str, str]:
    return (utilisation(node), node.name, node.id)
