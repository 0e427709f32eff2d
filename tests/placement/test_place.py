"""`place` over every node: refusals explained node by node, order does not matter."""

import itertools

from hutch.model.machine import NodeState
from hutch.placement import place
from hutch.placement.request import Rejection
from tests.placement.factories import node, placed, rejected, request


def test_rejection_names_every_node_with_its_reason() -> None:
    nodes = [
        node("b", state=NodeState.UNREACHABLE),
        node("a", runtimes=("container",)),
        node("c", labels={"zone": "x"}),
    ]
    result = place(request(labels={"zone": "y"}), nodes)
    assert rejected(result) == {
        "a": "no microvm runtime (has container)",
        "b": "node is unreachable",
        "c": "lacks labels zone=y",
    }
    assert isinstance(result, Rejection)
    assert result.explain() == (
        "a: no microvm runtime (has container); b: node is unreachable; c: lacks labels zone=y"
    )


def test_no_nodes_at_all_is_explained_as_such() -> None:
    result = place(request(), [])
    assert rejected(result) == {}
    assert isinstance(result, Rejection)
    assert result.explain() == "no node has registered with this controller yet"


def test_only_nodes_passing_every_filter_are_candidates() -> None:
    nodes = [
        node("big-cordoned", memory_mib=1 << 20, cordoned=True),
        node("big-unlabelled", memory_mib=1 << 20),
        node("small-labelled", memory_mib=512, labels={"zone": "a"}),
    ]
    assert placed(place(request(labels={"zone": "a"}), nodes)) == "small-labelled"


def test_same_snapshot_in_any_order_gives_the_same_node() -> None:
    nodes = [
        node("n3", memory_mib=4096),
        node("n1", memory_mib=4096),  # ties with n3 on free memory
        node("n2", memory_mib=2048),
        node("n4", cordoned=True, memory_mib=1 << 20),
        node("n5", runtimes=("container",), memory_mib=1 << 20),
    ]
    results = {placed(place(request(), list(order))) for order in itertools.permutations(nodes)}
    assert results == {"n1"}
    reasons = {
        tuple(sorted(rejected(place(request(memory_mib=1 << 30), list(order))).items()))
        for order in itertools.permutations(nodes)
    }
    assert len(reasons) == 1
