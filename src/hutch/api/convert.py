"""Model <-> wire, in one place."""

import dataclasses
import functools
import operator
import time
from collections.abc import Mapping
from typing import Any

from hutch.model import mirrored
from hutch.model.addressing import Network, Rule, SecurityGroup, dns_name
from hutch.model.errors import Invalid
from hutch.model.machine import (
    Event,
    Machine,
    MachineSpec,
    Node,
    VolumeAttach,
    env_dict,
    env_entries,
    expires_at,
    idle_at,
    lifetime,
    time_left,
)
from hutch.model.network import Attachment, PortMapping
from hutch.model.pool import Pool
from hutch.model.snapshot import MachineSnapshot
from hutch.model.tenancy import QUOTA_FIELDS, Project, Quota, Token, Usage
from hutch.placement import Placement, Rejection
from hutch.services.networks import MachineNet, NodePlan, Wiring
from hutch.services.pools import PoolStatus
from hutch.store.base import Records
from hutch.wire.machines import (
    EventView,
    MachineCreate,
    MachineView,
    PlacementView,
    Rejected,
)
from hutch.wire.networks import (
    GroupRules,
    NetworkView,
    NicView,
    PeerView,
    PortView,
    RuleCreate,
    RuleView,
    SecurityGroupView,
)
from hutch.wire.nodes import Assignment, Assignments, CapacityView, NodeView, VolumeAssignment
from hutch.wire.pools import PoolView
from hutch.wire.snapshots import MachineSnapshotView
from hutch.wire.tenancy import ProjectView, QuotaSpec, QuotaView, TokenView, UsageView

# What a clone takes from its snapshot (`from_snapshot`), and so may not be given otherwise.
_FROM_SNAPSHOT = ("image", "command", "entrypoint", "env", "workdir", "user", "runtime", "volumes",
                  "tty", "stdin")  # fmt: skip
_SHAPE = ("cpus", "memory_mib", "disk_mib")


def clone_of(body: MachineCreate, snap: MachineSnapshot) -> MachineCreate:
    """The request for a machine that continues from `snap`: its image, shape, process and
    networks (as many as it had); Invalid for what the request gives that differs."""
    given = body.model_fields_set
    if taken := [f for f in _FROM_SNAPSHOT if f in given and getattr(body, f)]:
        raise Invalid(
            f"a machine from snapshot {snap.name} continues its process in its image: "
            f"{', '.join(taken)} cannot be given"
        )
    for field in _SHAPE:
        if field in given and getattr(body, field) != getattr(snap, field):
            raise Invalid(
                f"snapshot {snap.name} has {field} {getattr(snap, field)}, not "
                f"{getattr(body, field)}: a machine from a snapshot has its shape"
            )
    if body.networks is not None and len(body.networks) != len(snap.networks):
        raise Invalid(
            f"snapshot {snap.name} has {len(snap.networks)} network(s), so its machines join "
            f"as many, not {len(body.networks)}"
        )
    networks = body.networks if body.networks is not None else list(snap.networks) or ["none"]
    return body.model_copy(
        update={
            "image": snap.image, "command": _list(snap.command), "workdir": snap.workdir,
            "entrypoint": _list(snap.entrypoint), "env": env_dict(snap.env), "user": snap.user,
            "cpus": snap.cpus, "memory_mib": snap.memory_mib, "disk_mib": snap.disk_mib,
            "runtime": snap.runtime, "networks": networks, "from_snapshot": snap.id,
        }
    )  # fmt: skip


def _list(argv: tuple[str, ...] | None) -> list[str] | None:
    return list(argv) if argv is not None else None


def spec_of(body: MachineCreate) -> MachineSpec:
    if not body.image:
        raise Invalid("give the image to run, or from_snapshot: a machine snapshot to continue")
    return mirrored(
        MachineSpec,
        body,
        command=tuple(body.command) if body.command is not None else None,
        entrypoint=tuple(body.entrypoint) if body.entrypoint is not None else None,
        env=env_entries(body.env),
        labels=dict(body.labels),
        constraints=dict(body.constraints),
        volumes=tuple(VolumeAttach(v.volume, v.path, v.read_only) for v in body.volumes),
    )


def placement_view(decision: Placement | Rejection) -> PlacementView:
    if isinstance(decision, Placement):
        return PlacementView(
            placed=True,
            node=decision.node.name,
            node_id=decision.node.id,
            candidates=decision.considered,
            rejected=[Rejected(node=n, reason=r) for n, r in sorted(decision.rejected.items())],
            because=decision.because,
        )
    return PlacementView(
        placed=False,
        rejected=[Rejected(node=n, reason=r) for n, r in sorted(decision.reasons.items())],
        reason=decision.explain(),
    )


def _spec(r: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as the wire has it, for every view that carries it (or part of it), from a
    machine's record (record())."""
    return {name: r[name] for name in _SPEC_FIELDS} | {"env": env_dict(r["env"])}


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(MachineSpec) if f.name != "volumes")


def record(m: Machine, wiring: Wiring | None = None) -> dict[str, Any]:
    """The machine and its wiring as MachineRepo.records reads them, by name: its fields and
    its spec's, in JSON's types (lists, volumes as dicts), and its addresses, ports and
    security groups."""
    w, s = wiring or Wiring(), m.spec
    fields = {name: getattr(m, name) for name in _MACHINE_FIELDS}
    fields.update((name, getattr(s, name)) for name in _SPEC_FIELDS)
    fields.update(
        command=None if s.command is None else list(s.command),
        entrypoint=None if s.entrypoint is None else list(s.entrypoint),
        env=list(s.env),
        labels=dict(s.labels),
        constraints=dict(s.constraints),
        volumes=[dataclasses.asdict(v) for v in s.volumes],
        addresses=[(i, *a) for i, a in enumerate(w.addresses)],
        ports=[(p.host_port, p.port, p.protocol, p.host_ip) for p in w.ports],
        security_groups=list(enumerate(w.security_groups)),
    )
    return fields


_MACHINE_FIELDS = tuple(f.name for f in dataclasses.fields(Machine) if f.name != "spec")


def net_of(body: MachineCreate) -> MachineNet:
    return MachineNet(
        networks=tuple(body.networks) if body.networks is not None else None,
        ports=tuple(PortMapping(p.host_port, p.port, p.protocol, p.host_ip) for p in body.ports),
        security_groups=tuple(body.security_groups),
    )


def machine_docs(records: Records, project: str) -> list[dict[str, Any]]:
    """Each machine of `records` (MachineRepo.records, or record()'s) as MachineView has it
    (its fields, in its order), in JSON's own types: what lists write straight to bytes.
    Building and validating a MachineView per row cost more than the rest of the request (and
    a dict per row, by name, a tenth of it); machine_view() validates this once, for one."""
    mirrored, own = _getters(records.fields)
    now, docs = time.time(), []
    for row in records.rows:
        (env, timeout_s, extended_s, ran_s, running_since, idle_s, active_at, node, name,
         volumes, addresses, ports, groups) = own(row)  # fmt: skip
        # A wiring's parts come in their scan's order: the few with two or more are sorted
        # (addresses and groups by position, ports by host port and protocol).
        if len(addresses) > 1:
            addresses = sorted(addresses)
        if len(ports) > 1:
            ports = sorted(ports, key=operator.itemgetter(0, 2))
        if len(groups) > 1:
            groups = sorted(groups)
        life = lifetime(timeout_s, extended_s)
        # Built by dict's own methods (each a C call, not a Python step per field): the view's
        # fields in its order, those of the record's of the same name (as View.mirroring),
        # then those given here in their place.
        doc = _MACHINE_VIEW.copy()
        doc.update(zip(_MIRRORED, mirrored(row), strict=True))
        doc.update(
            env=env_dict(env),
            time_left_s=time_left(life, ran_s, running_since, now),
            expires_at=expires_at(life, ran_s, running_since),
            idle_at=idle_at(idle_s, running_since, active_at),
            project=project,
            node=node,
            networks=[a[1] for a in addresses],
            addresses=[
                {"network": a[1], "network_id": a[2], "mac": a[3], "ip4": a[4], "ip6": a[5]}
                for a in addresses
            ],
            ports=[_port_doc(*p) for p in ports],
            security_groups=[g[1] for g in groups],
            dns=dns_name(name, project) if addresses else "",
            volumes=[_volume_doc(v) for v in volumes],
        )
        docs.append(doc)
    return docs


_MACHINE_VIEW = dict.fromkeys(MachineView.model_fields)
# The view's fields a record has as they are (env is entries there, a dict here).
_MIRRORED = tuple(
    name for name in _MACHINE_VIEW if name in (*_MACHINE_FIELDS, *_SPEC_FIELDS) and name != "env"
)
# What machine_docs() reads of a record to make the rest.
_OWN = ("env", "timeout_s", "extended_s", "ran_s", "running_since", "idle_s", "active_at",
        "node_id", "name", "volumes", "addresses", "ports", "security_groups")  # fmt: skip


@functools.lru_cache(maxsize=8)
def _getters(
    fields: tuple[str, ...],
) -> "tuple[operator.itemgetter[Any], operator.itemgetter[Any]]":
    """For rows of `fields`: a getter of the _MIRRORED values, and one of the _OWN, by position."""
    return (
        operator.itemgetter(*(fields.index(n) for n in _MIRRORED)),
        operator.itemgetter(*(fields.index(n) for n in _OWN)),
    )


def machine_view(m: Machine, project: str, wiring: Wiring | None = None) -> MachineView:
    r = record(m, wiring)
    [doc] = machine_docs(Records(tuple(r), [tuple(r.values())]), project)
    return MachineView.model_validate(doc)


def _volume_doc(v: Mapping[str, Any]) -> dict[str, Any]:
    """A volume as a record has it (VolumeAttach's fields), as MachineView shows it."""
    return {"volume": v["name"], "volume_id": v["volume"], "path": v["target"],
            "read_only": v["read_only"]}  # fmt: skip


def _port_doc(host_port: int, port: int, protocol: str, host_ip: str) -> dict[str, Any]:
    return {"host_port": host_port, "port": port, "protocol": protocol, "host_ip": host_ip}


def port_view(p: PortMapping) -> PortView:
    return PortView.model_validate(_port_doc(p.host_port, p.port, p.protocol, p.host_ip))


def nic_view(a: Attachment) -> NicView:
    return NicView(
        **{f.name: getattr(a, f.name) for f in dataclasses.fields(a)}
        | {"egress_allow": list(a.egress_allow), "dns": list(a.dns), "search": list(a.search)}
    )


def network_view(n: Network, project: str, machines: int = 0) -> NetworkView:
    return NetworkView(
        id=n.id, name=n.name, project=project, subnet4=n.subnet4, subnet6=n.subnet6,
        gateway4=n.gateway4, gateway6=n.gateway6, vni=n.vni, egress=n.egress,
        egress_allow=list(n.egress_allow), machines=machines, created_at=n.created_at,
    )  # fmt: skip


def rule_of(body: RuleCreate) -> Rule:
    return Rule(
        body.direction, body.protocol, body.port_min, body.port_max,
        body.remote_cidr, body.remote_group,
    )  # fmt: skip


def _rules(g: SecurityGroup) -> list[RuleView]:
    return [RuleView.mirroring(r, id=rule_id) for rule_id, r in g.rules]


def group_view(g: SecurityGroup, project: str) -> SecurityGroupView:
    return SecurityGroupView(
        id=g.id, name=g.name, project=project, rules=_rules(g), created_at=g.created_at
    )


def assignments(
    revision: int, machines: list[tuple[Machine, Quota]], plan: NodePlan
) -> Assignments:
    """What the node is told: its machines, their security groups, and its networks' peers."""
    return Assignments(
        revision=revision,
        machines=[assignment(m, quota, plan) for m, quota in machines],
        groups=[
            GroupRules(
                id=g.id, name=g.name, rules=_rules(g), members=list(plan.members.get(g.id, ()))
            )
            for g in plan.rules.values()
        ],
        peers=[PeerView.mirroring(p, machine=p.machine_id, node=p.node_id) for p in plan.peers],
        infrastructure=list(plan.infrastructure),
    )


def assignment(m: Machine, quota: Quota, plan: NodePlan | None = None) -> Assignment:
    """What the node needs of the spec (`Assignment`'s fields), and what to do with it. The
    environment stays in the model's entries: the node runs them as they are."""
    spec = {k: v for k, v in _spec(record(m)).items() if k in Assignment.model_fields}
    nics = plan.attachments.get(m.id, ()) if plan else ()
    return Assignment.mirroring(
        m,
        **{**spec, "env": list(m.spec.env)},
        hostname=m.name,
        networks=[nic_view(a) for a in nics],
        ports=[port_view(p) for p in (plan.ports.get(m.id, ()) if plan and nics else ())],
        security_groups=list(plan.groups.get(m.id, ())) if plan else [],
        volumes=[
            VolumeAssignment(
                volume_id=v.volume, name=v.name, target=v.target, read_only=v.read_only
            )
            for v in m.spec.volumes
        ],
        machine=m.id,
        project=m.project_id,
        image_limits=quota.image_limits(),
        sandbox=m.sandbox_id,
    )


def quota_of(q: QuotaSpec) -> Quota:
    return Quota(**q.model_dump())


def quota_view(q: Quota) -> QuotaView:
    return QuotaView(**{f: getattr(q, f) for f in QUOTA_FIELDS})


def usage_view(u: Usage) -> UsageView:
    return UsageView(
        machines=u.machines, vcpus=u.vcpus, memory_mib=u.memory_mib, disk_mib=u.disk_mib
    )


def project_view(p: Project) -> ProjectView:
    return ProjectView.mirroring(p, quota=quota_view(p.quota))


def token_view(t: Token, project: str | None) -> TokenView:
    return TokenView.mirroring(t, project=project)


def node_view(n: Node) -> NodeView:
    return NodeView.mirroring(
        n,
        runtimes=list(n.runtimes),
        capacity=CapacityView.mirroring(n.capacity),
        allocated=CapacityView.mirroring(n.allocated),
        labels=dict(n.labels),
        overhead_mib=dict(n.overhead_mib),
    )


def event_view(e: Event) -> EventView:
    return EventView(
        id=e.id, kind=e.kind, object=e.object_id, state=e.state, message=e.message, time=e.time
    )


def snapshot_view(
    s: MachineSnapshot, project: str, nodes: dict[str, str], clones: list[str]
) -> MachineSnapshotView:
    return MachineSnapshotView.mirroring(
        s, project=project, node=nodes.get(s.node_id), state=s.state.value, clones=clones
    )


def pool_view(p: Pool, status: PoolStatus, project: str) -> PoolView:
    return PoolView.mirroring(
        p.shape, **{f: getattr(p, f) for f in ("id", "image_digest", "min_ready", "error",
                                               "created_at")},
        project=project, state=p.state.value, ready=status.ready, starting=status.starting,
        node=status.node,
    )  # fmt: skip
