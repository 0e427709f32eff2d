"""Placement over a snapshot of nodes: filters, weighers, tie-breaking and capacity accounting."""

import itertools
from collections.abc import Mapping

from hutch.model.machine import Capacity, GroupPolicy, Node, NodeState, Strategy
from hutch.scheduler import (
    CPU_OVERCOMMIT,
    FILTERS,
    NO_GROUP,
    Context,
    Index,
    Placement,
    Rejection,
    Request,
    claim,
    fits,
    group_policy,
    has_labels,
    has_runtime,
    need,
    place,
    ready,
    schedulable,
    utilisation,
)

EMPTY = Capacity(0, 0, 0)


def node(
    name: str,
    *,
    cpus: int = 4,
    memory_mib: int = 4096,
    disk_mib: int = 10_000,
    allocated: Capacity = EMPTY,
    runtimes: tuple[str, ...] = ("microvm", "container"),
    overhead: Mapping[str, int] | None = None,
    labels: Mapping[str, str] | None = None,
    state: NodeState = NodeState.READY,
    domain: str = "",
    cordoned: bool = False,
) -> Node:
    return Node(
        id=f"id-{name}",
        name=name,
        address=f"http://{name}:7070",
        runtimes=runtimes,
        accel="kvm",
        capacity=Capacity(cpus, memory_mib, disk_mib),
        allocated=allocated,
        overhead_mib={"microvm": 96, "container": 0} if overhead is None else overhead,
        labels=labels or {},
        state=state,
        created_at=0.0,
        last_seen=0.0,
        domain=domain,
        cordoned=cordoned,
    )


def request(
    cpus: int = 1,
    memory_mib: int = 128,
    disk_mib: int = 0,
    runtime: str = "microvm",
    labels: Mapping[str, str] | None = None,
    *,
    strategy: Strategy = Strategy.SPREAD,
    group: str = "",
    policy: GroupPolicy = GroupPolicy.NONE,
) -> Request:
    return Request(cpus, memory_mib, disk_mib, runtime, labels or {}, strategy, group, policy)


def placed(result: Placement | Rejection) -> str:
    assert isinstance(result, Placement), result
    return result.node.name


def rejected(result: Placement | Rejection) -> Mapping[str, str]:
    assert isinstance(result, Rejection), result
    return result.reasons


# -- need --------------------------------------------------------------------------------------


def test_need_adds_the_runtimes_overhead_to_memory_only() -> None:
    n = node("a", overhead={"microvm": 96, "container": 8})
    assert need(request(2, 256, 100, "microvm"), n) == Capacity(2, 352, 100)
    assert need(request(2, 256, 100, "container"), n) == Capacity(2, 264, 100)


def test_need_without_a_known_overhead_is_the_request_itself() -> None:
    assert need(request(1, 64, 5, "gvisor"), node("a", overhead={})) == Capacity(1, 64, 5)


# -- filters -----------------------------------------------------------------------------------


def test_only_ready_nodes_take_machines() -> None:
    assert ready(request(), node("a"), NO_GROUP) is None
    assert ready(request(), node("a", state=NodeState.UNREACHABLE), NO_GROUP) == (
        "node is unreachable"
    )


def test_cordoned_nodes_take_nothing_new() -> None:
    assert schedulable(request(), node("a"), NO_GROUP) is None
    assert schedulable(request(), node("a", cordoned=True), NO_GROUP) == "node is cordoned"


def test_runtime_must_be_offered() -> None:
    assert has_runtime(request(runtime="container"), node("a"), NO_GROUP) is None
    why = has_runtime(request(runtime="container"), node("a", runtimes=("microvm",)), NO_GROUP)
    assert why == "no container runtime (has microvm)"
    assert (
        has_runtime(request(), node("a", runtimes=()), NO_GROUP) == "no microvm runtime (has none)"
    )


def test_labels_must_all_match_and_extra_node_labels_do_not_matter() -> None:
    n = node("a", labels={"zone": "a", "disk": "ssd", "gpu": "no"})
    assert has_labels(request(labels={}), n, NO_GROUP) is None
    assert has_labels(request(labels={"zone": "a", "disk": "ssd"}), n, NO_GROUP) is None
    why = has_labels(request(labels={"zone": "b", "disk": "ssd", "arch": "arm64"}), n, NO_GROUP)
    assert why == "lacks labels zone=b, arch=arm64"


def test_memory_fit_counts_the_overhead_and_the_exact_fit_passes() -> None:
    n = node("a", memory_mib=1024, allocated=Capacity(0, 512, 0))
    assert fits(request(memory_mib=512, runtime="container"), n, NO_GROUP) is None
    assert fits(request(memory_mib=416, runtime="microvm"), n, NO_GROUP) is None  # 416 + 96 == 512
    why = fits(request(memory_mib=417, runtime="microvm"), n, NO_GROUP)
    assert why == "513 MiB of memory asked (with overhead), 512 free"
    # The same request without an overhead fits: the overhead is what tipped it.
    assert fits(request(memory_mib=417, runtime="container"), n, NO_GROUP) is None


def test_disk_fit() -> None:
    n = node("a", disk_mib=1000, allocated=Capacity(0, 0, 400))
    assert fits(request(disk_mib=600), n, NO_GROUP) is None
    assert fits(request(disk_mib=601), n, NO_GROUP) == "601 MiB of disk asked, 600 free"


def test_cpus_are_overcommitted() -> None:
    assert CPU_OVERCOMMIT == 4
    n = node("a", cpus=2)
    assert fits(request(cpus=8), n, NO_GROUP) is None
    assert fits(request(cpus=9), n, NO_GROUP) == "9 vCPUs asked, 8 free (at 4x overcommit)"
    busy = node("a", cpus=2, allocated=Capacity(5, 0, 0))
    assert fits(request(cpus=3), busy, NO_GROUP) is None
    assert fits(request(cpus=4), busy, NO_GROUP) == "4 vCPUs asked, 3 free (at 4x overcommit)"


def test_memory_is_checked_before_disk_and_disk_before_cpus() -> None:
    n = node("a", cpus=1, memory_mib=100, disk_mib=100)
    assert fits(
        request(cpus=9, memory_mib=101, disk_mib=101, runtime="container"), n, NO_GROUP
    ) == ("101 MiB of memory asked (with overhead), 100 free")
    assert fits(request(cpus=9, memory_mib=1, disk_mib=101), n, NO_GROUP) == (
        "101 MiB of disk asked, 100 free"
    )


def test_the_first_failing_filter_gives_the_reason() -> None:
    assert list(FILTERS) == [ready, schedulable, has_runtime, has_labels, fits, group_policy]
    n = node("a", runtimes=("container",), memory_mib=1, cordoned=True)
    assert rejected(place(request(), [n])) == {"a": "node is cordoned"}


# -- place -------------------------------------------------------------------------------------


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


def test_weighers_are_normalised_before_their_weights_apply() -> None:
    nodes = [node("a"), node("b")]

    def huge(_: Request, n: Node, __: Context) -> float:  # a wide raw range, in favour of a
        return 1_000_000.0 if n.name == "a" else 0.0

    def tiny(_: Request, n: Node, __: Context) -> float:  # a narrow raw range, in favour of b
        return 0.001 if n.name == "b" else 0.0

    # Raw sums would pick a; normalised to 0..1 each, tiny's double weight picks b.
    assert placed(place(request(), nodes, weighers=[(huge, 1.0), (tiny, 2.0)])) == "b"
    assert placed(place(request(), nodes, weighers=[(huge, 3.0), (tiny, 2.0)])) == "a"


def test_custom_filters_replace_the_defaults() -> None:
    def not_a(_: Request, n: Node, __: Context) -> str | None:
        return "a is excluded" if n.name == "a" else None

    cordoned = node("b", cordoned=True)
    assert placed(place(request(), [node("a"), cordoned], filters=[not_a])) == "b"
    assert rejected(place(request(), [node("a")], filters=[not_a])) == {"a": "a is excluded"}


def test_equal_scores_do_not_divide_by_zero_and_go_to_the_first_name() -> None:
    assert placed(place(request(), [node("b"), node("a"), node("c")])) == "a"
    assert placed(place(request(), [node("only")])) == "only"


def test_ties_go_to_the_first_name_even_when_it_is_a_prefix() -> None:
    assert placed(place(request(), [node("node-1"), node("node-10")])) == "node-1"


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


# -- claims ----------------------------------------------------------------------------------------


def test_claim_adds_the_request_with_its_overhead() -> None:
    n = node("a", allocated=Capacity(1, 100, 10), overhead={"microvm": 96})
    claimed = claim(n, request(2, 256, 50, "microvm"))
    assert claimed.allocated == Capacity(3, 452, 60)
    assert n.allocated == Capacity(1, 100, 10)  # the snapshot is not changed in place
    assert (claimed.name, claimed.capacity, claimed.version) == (n.name, n.capacity, n.version)


def test_claimed_capacity_is_what_the_next_placement_sees() -> None:
    r = request(cpus=4, memory_mib=1024, runtime="container")
    a, b = node("a", cpus=1), node("b", cpus=1)
    first = place(r, [a, b])
    assert isinstance(first, Placement)
    a = claim(first.node, r)  # a held all 4 vCPUs (1 CPU at 4x)
    assert placed(place(r, [a, b])) == "b"
    b = claim(b, r)
    assert rejected(place(r, [a, b])) == {
        "a": "4 vCPUs asked, 0 free (at 4x overcommit)",
        "b": "4 vCPUs asked, 0 free (at 4x overcommit)",
    }


# -- groups, strategies and failure domains ----------------------------------------------------


def test_anti_affinity_keeps_a_group_off_nodes_that_run_one_of_it() -> None:
    r = request(group="db", policy=GroupPolicy.ANTI_AFFINITY)
    context = Context(members={"id-a": 1})
    assert group_policy(r, node("a"), context) == (
        "runs a machine of group db already (anti-affinity)"
    )
    assert group_policy(r, node("b"), context) is None
    assert placed(place(r, [node("a", memory_mib=1 << 20), node("b")], context)) == "b"


def test_affinity_follows_the_group_and_the_first_member_goes_anywhere() -> None:
    r = request(group="web", policy=GroupPolicy.AFFINITY)
    assert group_policy(r, node("a"), NO_GROUP) is None
    context = Context(members={"id-b": 2})
    assert group_policy(r, node("a"), context) == "group web runs on another node (affinity)"
    assert placed(place(r, [node("a", memory_mib=1 << 20), node("b")], context)) == "b"


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


def test_utilisation_averages_memory_and_overcommitted_cpus() -> None:
    assert utilisation(node("a")) == 0.0
    assert utilisation(node("a", cpus=1, memory_mib=1000, allocated=Capacity(2, 500, 0))) == 0.5
    assert utilisation(node("a", cpus=0, memory_mib=0)) == 1.0


# -- Index: the same rule over a sorted snapshot ----------------------------------------------


def mixed(count: int) -> list[Node]:
    return [
        node(
            f"n{i:03d}",
            cpus=2 + i % 3 * 2,
            memory_mib=2048 * (1 + i % 4),
            allocated=Capacity(i % 3, 97 * (i % 11), 0),
            domain=f"d{i % 5}",
        )
        for i in range(count)
    ]


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
