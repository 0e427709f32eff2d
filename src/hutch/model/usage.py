"""The usage ledger: what machines, volumes and snapshots used, as append-only records.

Each record covers an interval (`start`, `end`, epoch seconds) of one subject (a machine,
volume or snapshot) and says its quantities in the unit its name gives. Quantities are
Decimal, exact to `PLACES` decimal places (each record's are rounded half-even to them once,
when it is made); sums are exact. A record's `key` makes it idempotent: a record whose key is
in the ledger is not added again (see services/metering.py for the keys)."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal, NamedTuple

from hutch.model.errors import Invalid

PLACES = 6  # decimal places a quantity keeps (millionths of a second, GiB-second, GiB-hour)
QUANTUM = Decimal(1).scaleb(-PLACES)
ZERO = Decimal(0)
QUANTITIES = ("vcpu_seconds", "cpu_seconds", "memory_gib_seconds", "storage_gib_hours")
COUNTS = ("egress_bytes", "starts")
MAX_RECORDS = 500  # records per page of `UsageRepo.records`, whatever the caller asks

By = Literal["machine", "label", "day"] | None


def quantity(value: Decimal | float | int) -> Decimal:
    """`value` as a ledger quantity: a Decimal rounded half-even to PLACES places (a float by
    its shortest repr, so 0.1 is 0.1)."""
    d = (
        value
        if isinstance(value, Decimal)
        else Decimal(repr(value) if isinstance(value, float) else value)
    )
    return d.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def micros(value: float) -> int:
    """`value` in millionths, rounded half-even (a ledger quantity's integer form: metering
    sums these, exactly, per hour)."""
    return round(value * 1_000_000)


def from_micros(value: int) -> Decimal:
    return Decimal(value).scaleb(-PLACES)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One ledger row (see the module's docstring)."""

    key: str  # the idempotency key, unique in the ledger
    project_id: str
    subject: str  # the machine's, volume's or snapshot's id
    start: float
    end: float
    machine_id: str | None = None  # the machine it is of (None: a volume's or snapshot's)
    labels: Mapping[str, str] = field(default_factory=dict)  # the machine's, when recorded
    vcpu_seconds: Decimal = ZERO  # vCPUs given times seconds running
    cpu_seconds: Decimal = ZERO  # CPU seconds used
    memory_gib_seconds: Decimal = ZERO  # GiB of memory given times seconds running
    storage_gib_hours: Decimal = ZERO  # GiB of disk held times hours held
    egress_bytes: int = 0  # bytes sent out of the machine's networks
    starts: int = 0  # generations started
    id: int = 0  # the ledger's order (0 until added)

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise Invalid(f"usage record {self.key!r} ends before it starts")
        for name in QUANTITIES:
            object.__setattr__(self, name, quantity(getattr(self, name)))
            if getattr(self, name) < 0:
                raise Invalid(f"usage record {self.key!r}: {name} cannot be negative")
        if self.egress_bytes < 0 or self.starts < 0:
            raise Invalid(f"usage record {self.key!r}: counts cannot be negative")


class Hour(NamedTuple):
    """What a generation's samples add into its record of an hour (`UsageRepo.add_into`), its
    quantities in millionths (`micros`): a plain tuple, as the ingest's hot path wants it."""

    key: str
    project_id: str
    machine_id: str
    labels: Mapping[str, str]
    start: float
    end: float
    vcpu_seconds: int
    cpu_seconds: int
    memory_gib_seconds: int
    egress_bytes: int

    def record(self) -> "UsageRecord":
        return UsageRecord(
            self.key, self.project_id, self.machine_id, self.start, self.end,
            machine_id=self.machine_id, labels=self.labels,
            vcpu_seconds=from_micros(self.vcpu_seconds), cpu_seconds=from_micros(self.cpu_seconds),
            memory_gib_seconds=from_micros(self.memory_gib_seconds),
            egress_bytes=self.egress_bytes,
        )  # fmt: skip


def started(
    machine_id: str, generation: int, project_id: str, labels: Mapping[str, str], at: float
) -> UsageRecord:
    """The record of a generation's start: once per generation by its key, whichever comes
    first of its node's report that it runs and its first sample."""
    return UsageRecord(f"g:{machine_id}:{generation}", project_id, machine_id, at, at,
                       machine_id=machine_id, labels=dict(labels), starts=1)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """The sums of a project's records in one group: `group` is "" (by None), the subject's id
    (by machine: machines, volumes and snapshots alike), "key=value" (by label: a record
    counts once in each of its labels' groups, and in "" if it has none) or "YYYY-MM-DD"
    (by day, UTC, of the records' starts)."""

    project_id: str
    group: str
    vcpu_seconds: Decimal = ZERO
    cpu_seconds: Decimal = ZERO
    memory_gib_seconds: Decimal = ZERO
    storage_gib_hours: Decimal = ZERO
    egress_bytes: int = 0
    starts: int = 0
    records: int = 0  # how many records it sums


@dataclass(frozen=True, slots=True)
class Owner:
    """What metering needs of a machine its samples are of."""

    id: str
    project_id: str
    node_id: str | None  # the node it is placed on: the only one whose samples count
    generation: int  # its newest: samples of later ones are not believed
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UsageMark:
    """How far one stream was counted into the ledger: for a machine's generation, its last
    sample counted (seq 0: none yet) with that sample's time and cumulative counters; for the
    storage accrual (subject "storage"), the last interval accrued (seq) and its end (time)."""

    subject: str
    generation: int
    seq: int = 0
    time: float = 0.0
    running_s: float = 0.0
    cpu_s: float = 0.0
    egress_bytes: int = 0
    ended: bool = False  # the generation's last sample was counted


@dataclass(frozen=True, slots=True)
class Held:
    """Disk a subject held, for the storage accrual: a machine's scratch disk (while it is not
    destroyed, suspended or not), a volume, a volume snapshot or a machine snapshot."""

    subject: str
    project_id: str
    bytes: int
    since: float  # when it was created
    until: float | None = None  # when it went (None: it is still there)
    machine_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
