"""Model objects for store tests, with unique ids and increasing creation times."""

import itertools
import time
import uuid
from typing import Any

from hutch.model.machine import (
    Capacity,
    Desired,
    Machine,
    MachineSpec,
    MachineState,
    Node,
    NodeState,
)
from hutch.model.tenancy import Project, Quota, Role, Token

_clock = itertools.count()
T0 = 1_700_000_000.0


def now() -> float:
    """Strictly increasing across calls, so creation order is listing order."""
    return T0 + next(_clock) * 0.001


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def project(name: str | None = None, quota: Quota | None = None) -> Project:
    return Project(id=uid("p"), name=name or uid("proj"), created_at=now(), quota=quota or Quota())


def machine(project_id: str, name: str | None = None, **changes: Any) -> Machine:
    spec_fields = {k: changes.pop(k) for k in list(changes) if k in MachineSpec.__slots__}
    spec = MachineSpec(image="docker.io/library/busybox:latest", **spec_fields)
    created = now()
    fields: dict[str, Any] = {
        "id": uid("m"),
        "project_id": project_id,
        "name": name or uid("machine"),
        "spec": spec,
        "state": MachineState.CREATED,
        "desired": Desired.RUNNING,
        "created_at": created,
        "updated_at": created,
    }
    fields.update(changes)
    return Machine(**fields)


def node(name: str | None = None, **changes: Any) -> Node:
    fields: dict[str, Any] = {
        "id": uid("n"),
        "name": name or uid("node"),
        "address": "https://10.0.0.1:7443",
        "runtimes": ("microvm", "container"),
        "accel": "tcg",
        "capacity": Capacity(cpus=8, memory_mib=16384, disk_mib=100_000),
        "allocated": Capacity(cpus=0, memory_mib=0, disk_mib=0),
        "overhead_mib": {"microvm": 96, "container": 8},
        "labels": {"zone": "a"},
        "state": NodeState.READY,
        "created_at": now(),
        "last_seen": time.time(),
    }
    fields.update(changes)
    return Node(**fields)


def token(project_id: str | None, role: Role = Role.MEMBER, **changes: Any) -> Token:
    fields: dict[str, Any] = {
        "id": uid("t"),
        "name": uid("token"),
        "project_id": project_id,
        "role": role,
        "system": project_id is None,
        "created_at": now(),
    }
    fields.update(changes)
    return Token(**fields)
