"""A machine's metric history (`/v1/machines/{ref}/metrics`), and every machine's and node's
newest readings in Prometheus' text format (`/metrics`, for system tokens)."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hutch.api.deps import Caller, Ctl, Scoped
from hutch.http.problems import PROBLEMS
from hutch.model.metrics import MetricPoint
from hutch.services.policy import Policy
from hutch.wire.telemetry import MachineMetricsView, MetricPointView, NodeSample

router = APIRouter(tags=["metrics"], responses=PROBLEMS)


@router.get("/v1/machines/{ref}/metrics")
async def machine_metrics(
    ctl: Ctl,
    s: Scoped,
    ref: str,
    since: Annotated[float | None, Query(description="epoch seconds; default: an hour ago")] = None,
    step: Annotated[
        float | None,
        Query(gt=0, le=86400, description="seconds per point; default: the finest kept"),
    ] = None,
) -> MachineMetricsView:
    """The machine's history, oldest first: one point per step (the node's last reading in
    it), at most 2000 (the newest)."""
    m, tier, points = await ctl.telemetry.history(s.caller, s.project, ref, since, step)
    return MachineMetricsView(
        machine=m.id,
        name=m.name,
        step=max(step or tier.step, tier.step),
        points=[MetricPointView.mirroring(p) for p in points],
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def prometheus(ctl: Ctl, caller: Caller) -> Response:
    """Prometheus' text format: every live machine's newest reading (labels project and
    machine), and every node's (label node). A destroyed machine's series are gone."""
    Policy.require_system(caller, "read /metrics")
    registry = CollectorRegistry(auto_describe=False)
    names = {n.id: n.name for n in await ctl.nodes.listing(caller)}
    registry.register(_Readings(await ctl.telemetry.latest(), ctl.telemetry.nodes, names))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# name, help, the point's field; counters get _total
_COUNTERS = (
    ("cpu_seconds", "CPU seconds used by the machine's generation", "cpu_s"),
    ("running_seconds", "seconds the machine's generation has run", "running_s"),
    ("disk_read_bytes", "bytes read from its disks", "disk_read_bytes"),
    ("disk_written_bytes", "bytes written to its disks", "disk_write_bytes"),
    ("disk_reads", "read operations on its disks", "disk_read_ops"),
    ("disk_writes", "write operations on its disks", "disk_write_ops"),
    ("network_receive_bytes", "bytes its NICs received", "rx_bytes"),
    ("network_transmit_bytes", "bytes its NICs sent", "tx_bytes"),
    ("network_receive_packets", "packets its NICs received", "rx_packets"),
    ("network_transmit_packets", "packets its NICs sent", "tx_packets"),
    ("egress_bytes", "bytes sent outside its networks", "egress_bytes"),
    ("ingress_bytes", "bytes received from outside its networks", "ingress_bytes"),
)
_GAUGES = (
    ("memory_bytes", "host memory charged to the machine", "memory_bytes"),
    ("memory_limit_bytes", "the machine's memory limit on the host", "memory_limit_bytes"),
    ("vcpus", "vCPUs the machine was given", "vcpus"),
)
_NODE = (
    ("cpu_seconds", "CPU seconds the node used (all CPUs)", "cpu_s", True),
    ("memory_bytes", "memory in use on the node", "memory_bytes", False),
    ("agent_cpu_seconds", "CPU seconds hutch's agent used", "hutch_cpu_s", True),
    ("agent_memory_bytes", "hutch's agent's resident memory", "hutch_memory_bytes", False),
)


class _Readings(Collector):
    def __init__(
        self,
        machines: list[tuple[str, str, MetricPoint]],
        nodes: dict[str, NodeSample],
        node_names: dict[str, str],
    ) -> None:
        self.machines = machines
        self.nodes = {node_names[i]: s for i, s in nodes.items() if i in node_names}

    def collect(self) -> Iterator[Metric]:
        labels = ["project", "machine"]
        for name, doc, field in _COUNTERS:
            family = CounterMetricFamily(f"hutch_machine_{name}", doc, labels=labels)
            for project, machine, p in self.machines:
                family.add_metric([project, machine], getattr(p, field))
            yield family
        for name, doc, field in _GAUGES:
            gauge = GaugeMetricFamily(f"hutch_machine_{name}", doc, labels=labels)
            for project, machine, p in self.machines:
                gauge.add_metric([project, machine], getattr(p, field))
            yield gauge
        for name, doc, field, counter in _NODE:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            node_family = kind(f"hutch_node_{name}", doc, labels=["node"])
            for node, sample in sorted(self.nodes.items()):
                node_family.add_metric([node], getattr(sample, field))
            yield node_family
