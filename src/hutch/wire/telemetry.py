"""What a node reports about what its sandboxes use (`POST /agent/v1/nodes/{id}/samples`).

Every counter is cumulative over one generation of a machine, so a consumer takes deltas between
consecutive seqs; a sample whose (machine, generation, seq) was seen already counts once. A node
resends what the controller did not acknowledge with the same seq (after an agent restart or a
controller outage), so nothing is lost beyond one sampling period when the node itself is lost.
"""

from typing import Annotated

from pydantic import Field

from hutch.wire.common import INT64_MAX, Request, View

# Counters: bytes, operations, packets. Bounded so the store's BIGINT columns hold them.
Counter = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seconds = Annotated[float, Field(ge=0)]
# A generation's seconds running and CPU seconds: 31 years at most, and 256 vCPUs' 120 years,
# so that what they bill at a machine's largest size (below) is a ledger quantity (millionths
# in a BIGINT); a node's absurd figures are refused, not left to fail the transaction that
# counts every node's posts with its own.
Running = Annotated[float, Field(ge=0, le=1e9)]
CpuSeconds = Annotated[float, Field(ge=0, le=1e12)]

# Seconds a node's clock may run ahead of the controller's: a reading dated further ahead is
# neither history nor metered (services/telemetry.py, services/metering.py).
MAX_AHEAD = 300.0
MAX_MACHINES = 1000  # samples per post: a node batches more into several posts
MAX_DISKS = 64


class Net(Request):
    rx_bytes: Counter = 0
    tx_bytes: Counter = 0
    rx_packets: Counter = 0
    tx_packets: Counter = 0


class Disk(Request):
    read_bytes: Counter = 0
    write_bytes: Counter = 0
    read_ops: Counter = 0
    write_ops: Counter = 0


class MachineSample(Request):
    machine: str = Field(min_length=1, max_length=64)
    generation: Counter
    seq: int = Field(ge=1, le=INT64_MAX)  # 1, 2, 3 ... per (machine, generation); kept on resend
    time: float  # the node's wall clock at the reading (epoch s)
    state: str = Field(pattern="^(running|suspended|ended)$")  # ended: a generation's last
    vcpus: int = Field(ge=0, le=256)  # what the generation was given (a machine's most)
    memory_mib: int = Field(ge=0, le=1 << 22)
    running_s: Running  # cumulative seconds running (not suspended); survives agent restarts
    cpu_s: CpuSeconds  # cumulative CPU seconds used (the cgroup's cpu.stat usage_usec)
    memory_bytes: Counter  # now
    memory_limit_bytes: Counter
    disks: dict[str, Disk] = Field({}, max_length=MAX_DISKS)  # "root", "scratch", "volume:<id>"
    private: Net = Net()  # traffic within the machine's networks
    public: Net = Net()  # everything else: tx is egress, rx ingress


class NodeSample(Request):
    time: float
    cpu_s: Seconds  # the node's CPU seconds used (all CPUs, since boot)
    memory_bytes: Counter  # in use now
    hutch_cpu_s: Seconds  # what the agent itself used (its process, cumulative)
    hutch_memory_bytes: Counter  # the agent's resident memory now


class Samples(Request):
    node: NodeSample
    machines: list[MachineSample] = Field(max_length=MAX_MACHINES)


# -- what the API serves: a machine's history (GET /v1/machines/{id}/metrics) ---------------------


class MetricPointView(View):
    """The node's last reading in one step: counters cumulative over the generation (a rate is
    the difference between two points of the same generation over their `time`)."""

    time: float
    generation: int
    state: str
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
    rx_bytes: int  # every NIC's, private and public
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    egress_bytes: int  # tx to outside the machine's networks
    ingress_bytes: int


class MachineMetricsView(View):
    machine: str  # id
    name: str
    step: float  # seconds per point (a tier's, or the one asked for)
    points: list[MetricPointView]
