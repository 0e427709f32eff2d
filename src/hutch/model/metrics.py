"""A machine's metric history: one point per machine, generation and bucket of a tier.

Counters are cumulative over the generation (as the node samples them), so a coarser tier is the
finer one's last point per bucket, and a rate is the difference of two points over their time."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Tier:
    step: float  # seconds per bucket
    keep: float  # seconds its points are kept


@dataclass(frozen=True, slots=True)
class MetricPoint:
    machine_id: str
    project_id: str
    generation: int
    step: float  # the tier's step it belongs to
    bucket: float  # epoch seconds the bucket starts at
    time: float  # when the node read it
    state: str  # running, suspended, ended
    vcpus: int
    memory_mib: int
    running_s: float
    cpu_s: float
    memory_bytes: int
    memory_limit_bytes: int
    disk_read_bytes: int  # every disk's summed
    disk_write_bytes: int
    disk_read_ops: int
    disk_write_ops: int
    rx_bytes: int  # private and public, as the machine sees them
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    egress_bytes: int  # public tx
    ingress_bytes: int  # public rx


class Reading(Protocol):
    """A point as the model and its wire view both have it."""

    @property
    def generation(self) -> int: ...
    @property
    def time(self) -> float: ...


def rate(before: Reading, after: Reading, counter: str) -> float | None:
    """`counter`'s change per second from `before` to `after`; None across a restart (its
    counters began again) or without time between them."""
    if before.generation != after.generation or after.time <= before.time:
        return None
    change: float = getattr(after, counter) - getattr(before, counter)
    return change / (after.time - before.time)
