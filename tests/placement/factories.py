"""Nodes and requests for placement tests, and what a placement chose or refused."""

from collections.abc import Mapping

from hutch.model.machine import Capacity, GroupPolicy, Node, NodeState, Strategy
from hutch.placement.request import Placement, Rejection, Request

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
