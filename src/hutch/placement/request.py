"""What placement is asked, what it knows of the request's group, and what it answers."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from hutch.model.machine import GroupPolicy, Node, Strategy

EXPLAINED = 12  # nodes a refusal names one by one; the rest are counted by reason


@dataclass(frozen=True, slots=True)
class Request:
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    labels: Mapping[str, str] = field(default_factory=dict)  # the node must carry all of them
    strategy: Strategy = Strategy.SPREAD
    group: str = ""
    group_policy: GroupPolicy = GroupPolicy.NONE
    ports: frozenset[tuple[int, str]] = frozenset()  # host ports it publishes: (port, protocol)
    # The one node it may run on (its volumes are there), and why, in the user's words
    # ("volume db-data is on node n3"); "": any node.
    node: str = ""
    node_why: str = ""


@dataclass(frozen=True, slots=True)
class Context:
    """Where the request's group already runs: active machines per node id and per domain."""

    members: Mapping[str, int] = field(default_factory=dict)
    domains: Mapping[str, int] = field(default_factory=dict)
    holders: frozenset[str] = frozenset()  # nodes that hold the machine's image already
    # Node id -> the host ports (port, protocol) its machines publish: a node takes a machine
    # only if none of the machine's is among them.
    ports: Mapping[str, frozenset[tuple[int, str]] | set[tuple[int, str]]] = field(
        default_factory=dict
    )

    @staticmethod
    def of(
        members: Mapping[str, int],
        nodes: Mapping[str, Node],
        holders: frozenset[str] = frozenset(),
        ports: Mapping[str, frozenset[tuple[int, str]] | set[tuple[int, str]]] | None = None,
    ) -> "Context":
        domains: dict[str, int] = {}
        for node_id, count in members.items():
            if (node := nodes.get(node_id)) is not None:
                domains[node.domain] = domains.get(node.domain, 0) + count
        return Context(dict(members), domains, holders, ports or {})


NO_GROUP = Context()


@dataclass(frozen=True, slots=True)
class Placement:
    node: Node
    score: float = 0.0
    considered: int = 1  # nodes that passed the filters and were weighed
    rejected: Mapping[str, str] = field(default_factory=dict)  # as in Rejection
    because: str = ""  # the request's node_why, when it could go to one node only


@dataclass(frozen=True, slots=True)
class Rejection:
    reasons: Mapping[str, str]  # node name -> why it cannot take the machine

    def explain(self) -> str:
        if not self.reasons:
            return "no node has registered with this controller yet"
        named = sorted(self.reasons.items())
        text = "; ".join(f"{name}: {why}" for name, why in named[:EXPLAINED])
        if len(named) > EXPLAINED:
            text += f"; and {len(named) - EXPLAINED} more nodes"
        return text
