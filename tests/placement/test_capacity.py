"""How placement counts capacity: what a request needs, utilisation, claims."""

from hutch.model.machine import Capacity
from hutch.placement import place
from hutch.placement.capacity import claim, need, utilisation
from hutch.placement.request import Placement
from tests.placement.factories import node, placed, rejected, request


def test_need_adds_the_runtimes_overhead_to_memory_only() -> None:
    n = node("a", overhead={"microvm": 96, "container": 8})
    assert need(request(2, 256, 100, "microvm"), n) == Capacity(2, 352, 100)
    assert need(request(2, 256, 100, "container"), n) == Capacity(2, 264, 100)


def test_need_without_a_known_overhead_is_the_request_itself() -> None:
    assert need(request(1, 64, 5, "gvisor"), node("a", overhead={})) == Capacity(1, 64, 5)


def test_utilisation_averages_memory_and_overcommitted_cpus() -> None:
    assert utilisation(node("a")) == 0.0
    assert utilisation(node("a", cpus=1, memory_mib=1000, allocated=Capacity(2, 500, 0))) == 0.5
    assert utilisation(node("a", cpus=0, memory_mib=0)) == 1.0


def test_claim_adds_the_request_with_its_overhead() -> None:
    n = node("a", allocated=Capacity(1, 100, 10), overhead={"microvm": 96})
    claimed = claim(n, request(2, 256, 50, "microvm"))
    assert claimed.allocated == Capacity(3, 452, 60)
    assert n.allocated == Capacity(1, 100, 10)  # the snapshot is not changed in place
    assert (claimed.name, claimed.capacity, claimed.version) == (n.name, n.capacity, n.version)


def test_claimed_capacity_is_what_the_next_placement_sees() -> None:
    r = request(cpus=4, memory_mib=1024, runtime="container")
    a, b = (
        node("a", cpus=4, allocated=Capacity(12, 0, 0)),
        node("b", cpus=4, allocated=Capacity(12, 0, 0)),
    )
    first = place(r, [a, b])
    assert isinstance(first, Placement)
    a = claim(first.node, r)  # a held all 16 vCPUs (4 CPUs at 4x)
    assert placed(place(r, [a, b])) == "b"
    b = claim(b, r)
    assert rejected(place(r, [a, b])) == {
        "a": "4 vCPUs asked, 0 free (at 4x overcommit)",
        "b": "4 vCPUs asked, 0 free (at 4x overcommit)",
    }
