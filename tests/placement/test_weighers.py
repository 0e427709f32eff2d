"""Weighers: spread and pack, failure domains, central normalisation, ties."""

from hutch.model.machine import Capacity, Node, Strategy
from hutch.placement import place
from hutch.placement.request import Context, Request
from tests.placement.factories import node, placed, request


def test_spreads_to_the_node_with_most_memory_left() -> None:
    nodes = [
        node("a", memory_mib=4096, allocated=Capacity(0, 3000, 0)),
        node("b", memory_mib=2048),
        node("c", memory_mib=8192, allocated=Capacity(0, 7000, 0)),
    ]
    assert placed(place(request(), nodes)) == "b"


def test_the_memory_weigher_counts_each_nodes_overhead() -> None:
    # Free memory alone favours "lean", but its overhead leaves less once the machine is on it.
    nodes = [
        node("lean", memory_mib=4096, overhead={"microvm": 1000}),
        node("plain", memory_mib=3500, overhead={"microvm": 0}),
    ]
    assert placed(place(request(memory_mib=128), nodes)) == "plain"


def test_pack_fills_the_fullest_node_that_fits_and_spread_the_emptiest() -> None:
    nodes = [
        node("empty"),
        node("half", allocated=Capacity(0, 2048, 0)),
        node("full", allocated=Capacity(0, 4000, 0)),
    ]
    pack = request(memory_mib=64, strategy=Strategy.PACK, runtime="container")
    assert placed(place(pack, nodes)) == "full"
    assert placed(place(request(strategy=Strategy.PACK, memory_mib=200), nodes)) == "half"
    assert placed(place(request(strategy=Strategy.SPREAD), nodes)) == "empty"


def test_a_group_spreads_across_failure_domains_before_nodes() -> None:
    nodes = {
        n.id: n
        for n in [
            node("a1", domain="rack-a"),
            node("a2", domain="rack-a", memory_mib=1 << 16),  # emptier, but in the busy rack
            node("b1", domain="rack-b"),
        ]
    }
    context = Context.of({"id-a1": 1}, nodes)
    assert context.domains == {"rack-a": 1}
    assert placed(place(request(group="g"), list(nodes.values()), context)) == "b1"
    # Without a group the domain does not matter and free room decides.
    assert placed(place(request(), list(nodes.values()), context)) == "a2"


def test_weighers_are_normalised_before_their_weights_apply() -> None:
    nodes = [node("a"), node("b")]

    def huge(_: Request, n: Node, __: Context) -> float:  # a wide raw range, in favour of a
        return 1_000_000.0 if n.name == "a" else 0.0

    def tiny(_: Request, n: Node, __: Context) -> float:  # a narrow raw range, in favour of b
        return 0.001 if n.name == "b" else 0.0

    # Raw sums would pick a; normalised to 0..1 each, tiny's double weight picks b.
    assert placed(place(request(), nodes, weighers=[(huge, 1.0), (tiny, 2.0)])) == "b"
    assert placed(place(request(), nodes, weighers=[(huge, 3.0), (tiny, 2.0)])) == "a"


def test_equal_scores_do_not_divide_by_zero_and_go_to_the_first_name() -> None:
    assert placed(place(request(), [node("b"), node("a"), node("c")])) == "a"
    assert placed(place(request(), [node("only")])) == "only"


def test_ties_go_to_the_first_name_even_when_it_is_a_prefix() -> None:
    assert placed(place(request(), [node("node-1"), node("node-10")])) == "node-1"
