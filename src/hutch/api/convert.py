"""Model <-> wire, in one place."""

import dataclasses
from typing import Any

from hutch.model.machine import Event, Machine, MachineSpec, Node, env_dict, env_entries
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
    return MachineSpec(
        image=body.image,
        command=tuple(body.command) if body.command is not None else None,
        entrypoint=tuple(body.entrypoint) if body.entrypoint is not None else None,
        env=env_entries(body.env),
        workdir=body.workdir,
        user=body.user,
        cpus=body.cpus,
        memory_mib=body.memory_mib,
        disk_mib=body.disk_mib,
        runtime=body.runtime,
        restart=body.restart,
        labels=dict(body.labels),
        auto_destroy=body.auto_destroy,
        group=body.group,
        group_policy=body.group_policy,
        constraints=dict(body.constraints),
        strategy=body.strategy,
        tty=body.tty,
        stdin=body.stdin,
        rows=body.rows,
        cols=body.cols,
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
    return MachineView(
        **_spec(m.spec),
        id=m.id,
        name=m.name,
        project=project,
        state=m.state,
        desired=m.desired,
        node=m.node_id,
        exit_code=m.exit_code,
        error=m.error,
        oom_killed=m.oom_killed,
        restarts=m.restarts,
        image_digest=m.image_digest,
        image_source=m.image_source,
        created_at=m.created_at,
        started_at=m.started_at,
        finished_at=m.finished_at,
    )


def assignment(m: Machine, quota: Quota) -> Assignment:
    """What the node needs of the spec (`Assignment`'s fields), and what to do with it. The
    environment stays in the model's entries: the node runs them as they are."""
    spec = {k: v for k, v in _spec(m.spec).items() if k in Assignment.model_fields}
    return Assignment(
        **{**spec, "env": list(m.spec.env)},
        machine=m.id,
        project=m.project_id,
        image_digest=m.image_digest,
        image_limits=quota.image_limits(),
        generation=m.generation,
        sandbox=m.sandbox_id,
        desired=m.desired,
        state=m.state,
        stop_signal=m.stop_signal,
        stop_timeout=m.stop_timeout,
        start_after=m.start_after,
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
    return ProjectView(
        id=p.id,
        name=p.name,
        created_at=p.created_at,
        quota=quota_view(p.quota),
        strategy=p.strategy,
    )


def token_view(t: Token, project: str | None) -> TokenView:
    return TokenView(
        id=t.id,
        name=t.name,
        project=project,
        role=t.role,
        system=t.system,
        created_at=t.created_at,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
    )


def node_view(n: Node) -> NodeView:
    return NodeView(
        id=n.id,
        name=n.name,
        address=n.address,
        runtimes=list(n.runtimes),
        accel=n.accel,
        capacity=CapacityView(cpus=n.capacity.cpus, memory_mib=n.capacity.memory_mib,
                              disk_mib=n.capacity.disk_mib),
        allocated=CapacityView(cpus=n.allocated.cpus, memory_mib=n.allocated.memory_mib,
                               disk_mib=n.allocated.disk_mib),
        labels=dict(n.labels),
        domain=n.domain,
        state=n.state,
        cordoned=n.cordoned,
        overhead_mib=dict(n.overhead_mib),
        created_at=n.created_at,
        last_seen=n.last_seen,
    )  # fmt: skip


def event_view(e: Event) -> EventView:
    return EventView(
        id=e.id, kind=e.kind, object=e.object_id, state=e.state, message=e.message, time=e.time
    )
