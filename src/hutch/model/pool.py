"""Warm pools: micro-VMs of one image and shape, restored from a template snapshot and left
paused, that `hutch run` of the same image and shape takes instead of booting one.

A pool's machines are the project's (they count in its quota and hold their node's share) but
are not in its listings: a template machine (booted until its guest agent answers, snapshotted,
then destroyed) and `min_ready` pooled machines restored from that snapshot (`Machine.pool`)."""

from dataclasses import dataclass
from enum import StrEnum

from hutch.model.errors import Invalid
from hutch.model.image import parse_ref
from hutch.model.machine import MIN_MEMORY_MIB, check_suspendable

MAX_READY = 64  # pooled machines one pool keeps at most: more is a typo, not a plan
MAX_POOLS = 16  # pools per project: the leader tends every one, every few seconds


class PoolState(StrEnum):
    PREPARING = "preparing"  # its template is booting or being snapshotted
    READY = "ready"  # it has its template snapshot: its machines are restored from it
    FAILED = "failed"  # its template or a machine of it failed (see error): `pool set` retries
    DELETING = "deleting"  # `pool rm`: its machines and snapshot go, then the pool


@dataclass(frozen=True, slots=True)
class PoolShape:
    """What a pool keeps machines of, and what a run must ask for to take one."""

    image: str  # as given (a name, or a digest)
    cpus: int = 1
    memory_mib: int = 128
    disk_mib: int = 0
    runtime: str = "microvm"

    def __post_init__(self) -> None:
        parse_ref(self.image)
        check_suspendable(self.runtime, "kept in a warm pool")
        if self.cpus < 1:
            raise Invalid("cpus must be at least 1")
        if self.memory_mib < (least := MIN_MEMORY_MIB[self.runtime]):
            raise Invalid(
                f"memory {self.memory_mib} MiB is too little: a micro-VM needs at least {least} MiB"
            )
        if self.disk_mib < 0:
            raise Invalid("disk cannot be negative")


def check_min_ready(n: int) -> int:
    if not 0 <= n <= MAX_READY:
        raise Invalid(f"min_ready must be 0 to {MAX_READY}, not {n}")
    return n


@dataclass(frozen=True, slots=True)
class Pool:
    id: str  # "w-..."
    project_id: str
    shape: PoolShape
    min_ready: int  # pooled machines it keeps ready (0: the pool stays, empty)
    state: PoolState
    created_at: float
    updated_at: float
    error: str = ""  # why it failed, or why it is not full (quota, capacity)
    # Its template snapshot (a machine snapshot only the pool sees), once taken: the image it
    # ran by digest, and its node (where the pool's machines run).
    snapshot_id: str = ""
    image_digest: str = ""
    node_id: str = ""
    version: int = 1
