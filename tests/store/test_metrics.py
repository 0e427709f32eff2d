"""The store's metric history (`MetricRepo`), on SQLite and PostgreSQL alike."""

from hutch.model.metrics import MetricPoint
from hutch.store.sql import SqlStore
from hutch.store.tables import METRIC_COUNTERS


async def test_metric_points_keep_each_buckets_newest_reading(store: SqlStore) -> None:
    """One call stores more points than one statement may bind (split), two readings of one
    bucket keep the newer (in one call and across calls), and history pages within bounds."""

    def point(machine: str, time: float, cpu_s: float) -> MetricPoint:
        counters = dict.fromkeys(METRIC_COUNTERS, 0)
        return MetricPoint(
            machine, "p-1", 1, 10.0, time // 10 * 10, time, "running", 1, 128, 0.0, cpu_s,
            **counters,
        )  # fmt: skip

    many = [point(f"m-{i}", 1000.0 + i % 7, float(i)) for i in range(1500)]
    async with store.write() as tx:
        await tx.metrics.put(many)
        await tx.metrics.put([point("m-0", 1003.0, 9.0), point("m-0", 1001.0, 5.0)])
    async with store.write() as tx:
        await tx.metrics.put([point("m-0", 1002.0, 7.0)])  # older than the stored: ignored
    async with store.read() as tx:
        assert [p.cpu_s for p in await tx.metrics.history("m-0", 10.0, 0.0, 10)] == [9.0]
        assert len(await tx.metrics.history("m-1499", 10.0, 0.0, 10)) == 1
    async with store.write() as tx:
        assert await tx.metrics.prune(10.0, 1010.0) == 1500
