"""Model <-> wire, in one place."""

import dataclasses
from typing import Any

from hutch.model import mirrored
from hutch.model.machine import Event, Machine, MachineSpec, Node
from hutch.model.tenancy import QUOTA_FIELDS, Project, Quota, Token, Usage
from hutch.placement import Placement, Rejection
from hutch.wire.machines import (
    EventView,
    MachineCreate,
    MachineView,
    PlacementView,
    Rejected,
)
from hutch.wire.nodes import Assignment, CapacityView, NodeView
from hutch.wire.tenancy import ProjectView, QuotaSpec, QuotaView, TokenView, UsageView


def spec_of(body: MachineCreate) -> MachineSpec:
    return mirrored(
        MachineSpec,
        body,
        command=tuple(body.command) if body.command is not None else None,
        entrypoint=tuple(body.entrypoint) if body.entrypoint is not None else None,
        env=tuple(f"{k}={v}" for k, v in body.env.items()),
        labels=dict(body.labels),
        constraints=dict(body.constraints),
    )


def placement_view(decision: Placement | Rejection) -> PlacementView:
    if isinstance(decision, Placement):
        return PlacementView(
            placed=True,
            node=decision.node.name,
            node_id=decision.node.id,
            candidates=decision.considered,
            rejected=[Rejected(node=n, reason=r) for n, r in sorted(decision.rejected.items())],
        )
    return PlacementView(
        placed=False,
        rejected=[Rejected(node=n, reason=r) for n, r in sorted(decision.reasons.items())],
        reason=decision.explain(),
    )


def env_dict(env: tuple[str, ...]) -> dict[str, str]:
    return dict(entry.partition("=")[::2] for entry in env)


def _spec(s: MachineSpec) -> dict[str, Any]:
    """The spec as the wire has it, for every view that carries it (or part of it)."""
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    for name in ("command", "entrypoint"):
        fields[name] = list(fields[name]) if fields[name] is not None else None
    fields["env"] = env_dict(s.env)
    fields["labels"] = dict(s.labels)
    fields["constraints"] = dict(s.constraints)
    return fields


def machine_view(m: Machine, project: str) -> MachineView:
    return MachineView.mirroring(m, **_spec(m.spec), project=project, node=m.node_id)


def assignment(m: Machine, quota: Quota) -> Assignment:
    """What the node needs of the spec (`Assignment`'s fields), and what to do with it."""
    spec = {k: v for k, v in _spec(m.spec).items() if k in Assignment.model_fields}
    return Assignment.mirroring(
        m,
        **spec,
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
