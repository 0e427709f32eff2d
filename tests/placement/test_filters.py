"""Filters: each one's verdict and reason, their order, and filters given instead."""

from dataclasses import replace

from hutch.model.machine import Capacity, GroupPolicy, Node, NodeState
from hutch.placement import Index, Placement, place
from hutch.placement.capacity import CPU_OVERCOMMIT
from hutch.placement.filters import (
    FILTERS,
    fits,
    group_policy,
    has_labels,
    has_runtime,
    pinned,
    ports_free,
    ready,
    schedulable,
)
from hutch.placement.request import NO_GROUP, Context, Request
from tests.placement.factories import node, placed, rejected, request


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


def test_cpus_are_overcommitted_between_machines_not_within_one() -> None:
    assert CPU_OVERCOMMIT == 4
    n = node("a", cpus=2)
    assert fits(request(cpus=2), n, NO_GROUP) is None
    # One machine gets no more vCPUs than its node has CPUs (its runtime would refuse it).
    assert fits(request(cpus=3), n, NO_GROUP) == "3 vCPUs asked, the node has 2 CPUs"
    busy = node("a", cpus=2, allocated=Capacity(6, 0, 0))
    assert fits(request(cpus=2), busy, NO_GROUP) is None
    fuller = node("a", cpus=2, allocated=Capacity(7, 0, 0))
    assert fits(request(cpus=2), fuller, NO_GROUP) == "2 vCPUs asked, 1 free (at 4x overcommit)"


def test_memory_is_checked_before_disk_and_disk_before_cpus() -> None:
    n = node("a", cpus=1, memory_mib=100, disk_mib=100)
    assert fits(
        request(cpus=9, memory_mib=101, disk_mib=101, runtime="container"), n, NO_GROUP
    ) == ("101 MiB of memory asked (with overhead), 100 free")
    assert fits(request(cpus=9, memory_mib=1, disk_mib=101), n, NO_GROUP) == (
        "101 MiB of disk asked, 100 free"
    )


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


def test_the_first_failing_filter_gives_the_reason() -> None:
    assert list(FILTERS) == [
        pinned, ready, schedulable, has_runtime, has_labels, fits, group_policy, ports_free,
    ]  # fmt: skip
    n = node("a", runtimes=("container",), memory_mib=1, cordoned=True)
    assert rejected(place(request(), [n])) == {"a": "node is cordoned"}


def test_custom_filters_replace_the_defaults() -> None:
    def not_a(_: Request, n: Node, __: Context) -> str | None:
        return "a is excluded" if n.name == "a" else None

    cordoned = node("b", cordoned=True)
    assert placed(place(request(), [node("a"), cordoned], filters=[not_a])) == "b"
    assert rejected(place(request(), [node("a")], filters=[not_a])) == {"a": "a is excluded"}


def test_a_host_port_is_published_once_per_node() -> None:
    web = replace(request(), ports=frozenset({(8080, "tcp"), (53, "udp")}))
    a, b = node("a"), node("b")
    taken = Context(ports={a.id: {(8080, "tcp")}, b.id: {(8080, "udp")}})
    assert ports_free(web, a, taken) == "host port 8080/tcp published already"
    assert ports_free(web, b, taken) is None
    assert ports_free(request(), a, taken) is None
    assert placed(place(web, [a, b], taken)) == "b"
    assert rejected(place(web, [a], taken)) == {"a": "host port 8080/tcp published already"}


def test_a_machine_with_volumes_goes_to_their_node_only() -> None:
    a, b, c = node("a"), node("b"), node("c", cordoned=True)
    why = "volume db-data is on node b"
    r = replace(request(), node=b.id, node_why=why)
    assert pinned(r, a, NO_GROUP) == why and pinned(r, b, NO_GROUP) is None
    assert pinned(request(), a, NO_GROUP) is None
    decision = place(r, [a, b, c])
    assert isinstance(decision, Placement)
    assert decision.node.name == "b" and decision.because == why  # the only candidate, and why
    assert decision.rejected == {"a": why, "c": why}
    anywhere = place(request(), [a, b])
    assert isinstance(anywhere, Placement) and anywhere.because == ""
    # Its node cannot take it: it waits for that node, and says so; no other node will do.
    on_c = replace(request(), node=c.id, node_why="volume db-data is on node c")
    assert rejected(place(on_c, [a, b, c])) == {
        "a": "volume db-data is on node c",
        "b": "volume db-data is on node c",
        "c": "node is cordoned (volume db-data is on node c: the machine runs nowhere else)",
    }
    index = Index([a, b, c])
    assert index.place(r).node.name == "b"  # type: ignore[union-attr]
    assert rejected(index.place(on_c)) == {"c": rejected(place(on_c, [c]))["c"]}
