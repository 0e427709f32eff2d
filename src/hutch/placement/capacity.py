"""How placement counts a node's capacity: what a request takes, what the node may hold."""

from dataclasses import replace

from hutch.model.machine import Capacity, Node
from hutch.placement.request import Request

CPU_OVERCOMMIT = 4  # vCPUs per host CPU: idle guests are the rule


def need(request: Request, node: Node) -> Capacity:
    """What placing `request` takes from `node`, its runtime's per-sandbox overhead included."""
    overhead = node.overhead_mib.get(request.runtime, 0)
    return Capacity(request.cpus, request.memory_mib + overhead, request.disk_mib)


def limit(node: Node) -> Capacity:
    """What the node's allocation may reach."""
    cap = node.capacity
    return Capacity(cap.cpus * CPU_OVERCOMMIT, cap.memory_mib, cap.disk_mib)


def free(node: Node) -> Capacity:
    most, a = limit(node), node.allocated
    return Capacity(most.cpus - a.cpus, most.memory_mib - a.memory_mib, most.disk_mib - a.disk_mib)


def utilisation(node: Node) -> float:
    """The share of the node's memory and vCPUs taken, averaged: 0 empty, 1 full."""
    return utilisation_of(node.capacity, node.allocated)


def utilisation_of(cap: Capacity, allocated: Capacity) -> float:
    """`utilisation` of a node with capacity `cap` were `allocated` taken."""
    memory = allocated.memory_mib / cap.memory_mib if cap.memory_mib else 1.0
    cpus = allocated.cpus / (cap.cpus * CPU_OVERCOMMIT) if cap.cpus else 1.0
    return (memory + cpus) / 2


def claim(node: Node, request: Request) -> Node:
    """`node` with the request's share added to what it has allocated."""
    return replace(node, allocated=plus(node.allocated, need(request, node)))


def plus(a: Capacity, b: Capacity) -> Capacity:
    return Capacity(a.cpus + b.cpus, a.memory_mib + b.memory_mib, a.disk_mib + b.disk_mib)
