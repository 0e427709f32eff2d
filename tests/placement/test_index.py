"""`Index`: the same rule over a sorted snapshot, weighing a few nodes per shape."""

from hutch.model.machine import Capacity, GroupPolicy, Strategy
from hutch.placement import place
from hutch.placement.index import Index
from hutch.placement.request import Context, Placement
from tests.placement.factories import mixed, node, placed, rejected, request


def test_index_with_room_to_weigh_every_node_agrees_with_place() -> None:
    nodes = mixed(60)
    index = Index(nodes, k=len(nodes))
    snapshot = {n.id: n for n in nodes}
    for i in range(200):
        r = request(memory_mib=64 + 37 * (i % 9), strategy=[Strategy.SPREAD, Strategy.PACK][i % 2])
        expected = place(r, list(snapshot.values()))
        got = index.place(r)
        assert placed(got) == placed(expected)
        snapshot[got.node.id] = index.claim(got.node.id, r)  # type: ignore[union-attr]


def test_index_weighs_a_few_per_shape_and_still_finds_the_best_room() -> None:
    nodes = mixed(100)  # 12 shapes
    index = Index(nodes, k=4)  # at least 2 a shape
    snapshot = {n.id: n for n in nodes}
    for i in range(300):
        strategy = [Strategy.SPREAD, Strategy.PACK][i % 2]
        r = request(memory_mib=64 + 37 * (i % 9), runtime="container", strategy=strategy)
        got = index.place(r)
        assert isinstance(got, Placement) and got.considered <= 2 * 12
        assert placed(got) == placed(place(r, list(snapshot.values())))
        snapshot[got.node.id] = index.claim(got.node.id, r)


def test_index_claims_are_seen_by_the_next_placement_and_refusals_explained() -> None:
    index = Index([node("a", memory_mib=300), node("b", memory_mib=300)])
    r = request(memory_mib=100, runtime="container")
    chosen = []
    for _ in range(6):
        result = index.place(r)
        chosen.append(placed(result))
        index.claim(result.node.id, r)  # type: ignore[union-attr]
    assert chosen == ["a", "b", "a", "b", "a", "b"]  # spread: the emptier, ties to the name
    full = "100 MiB of memory asked (with overhead), 0 free"
    assert rejected(index.place(r)) == {"a": full, "b": full}


def test_index_anti_affinity_skips_member_nodes() -> None:
    index = Index([node("a"), node("b"), node("c")])
    r = request(group="g", policy=GroupPolicy.ANTI_AFFINITY, runtime="container")
    members: dict[str, int] = {}
    for _ in range(3):
        result = index.place(r, members)
        assert isinstance(result, Placement)
        members[result.node.id] = 1
        index.claim(result.node.id, r)
    assert sorted(members) == ["id-a", "id-b", "id-c"]
    assert set(rejected(index.place(r, members))) == {"a", "b", "c"}


def test_nodes_that_hold_the_image_are_preferred_among_equals_not_over_room() -> None:
    r = request()
    equal = [node(name) for name in "abcdefgh"]
    index = Index(equal, k=2)
    assert placed(index.place(r)) == "a"  # ties go to the first name
    # h is past where the walk stops, and still found and preferred: it holds the image.
    assert placed(index.place(r, holders=frozenset({"id-h"}))) == "h"
    # Room still counts for more: a much fuller holder is not chosen.
    busy = node("z", allocated=Capacity(3, 3500, 0))
    assert placed(Index([*equal, busy]).place(r, holders=frozenset({"id-z"}))) != "z"


def test_holders_are_weighed_a_few_per_shape_and_kept_sorted_through_claims() -> None:
    r = request()
    equal = [node(f"n{i:03d}") for i in range(200)]
    holders = frozenset(f"id-n{i:03d}" for i in range(150, 200))
    index = Index(equal, k=2)
    got = index.place(r, holders=holders)
    # The first holder, as weighing every node finds, from 2 + 2 weighed, not 2 + 50.
    assert placed(got) == placed(place(r, equal, Context(holders=holders))) == "n150"
    assert isinstance(got, Placement) and got.considered == 4
    index.claim(got.node.id, r)
    assert placed(index.place(r, holders=holders)) == "n151"  # spread: n150 is fuller now


def test_holders_named_again_as_an_equal_copy_or_grown_are_weighed_alike() -> None:
    r = request()
    ids = [f"id-n{i:03d}" for i in range(150, 200)]
    index = Index([node(f"n{i:03d}") for i in range(200)], k=2)
    # A scheduler's pages: the same holders as a new set object, then one holder more, then the
    # first set object again; each weighed as by an index that never saw the others.
    first = frozenset(ids)
    for holders in (first, frozenset(ids), frozenset([*ids, "id-n100"]), first):
        for _ in range(3):
            fresh = Index(index.nodes.values(), k=2)
            got = index.place(r, holders=holders)
            assert placed(got) == placed(fresh.place(r, holders=holders))
            index.claim(got.node.id, r)  # type: ignore[union-attr]


def test_a_machine_wider_than_a_shapes_cpus_skips_the_shape_and_says_why() -> None:
    """A shape whose nodes have fewer CPUs than the machine asks is not walked node by node
    (the scheduler placed 6 times slower so): its first nodes give the reason, and the
    machine goes to a wider shape, as `place` would put it."""
    small = [node(f"s{i}", cpus=2) for i in range(40)]
    wide = [node("w1", cpus=8), node("w2", cpus=8)]
    index = Index([*small, *wide], k=4)
    r = request(cpus=4, runtime="container")
    got = index.place(r)
    assert placed(got) == placed(place(r, [*small, *wide])) == "w1"
    assert isinstance(got, Placement) and got.considered == 2
    only_small = Index(small, k=4).place(r)
    reasons = rejected(only_small)
    assert len(reasons) == 4 and set(reasons.values()) == {"4 vCPUs asked, the node has 2 CPUs"}
