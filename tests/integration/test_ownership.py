"""What a worker exports and holds after its partitions move to another worker.

A gauge left behind on a former owner is read as current: an open drift
incident would keep DriftIncidentOpen firing after the new owner closed it,
and a lag or an applied offset would describe a partition it no longer reads.
"""

from __future__ import annotations

import random
import uuid

import orjson
from prometheus_client import CollectorRegistry

from driftline.drift import ALL_SEGMENT, MonitorConfig
from driftline.drift.quality import QualityChecker, QualityConfig
from driftline.schemas import build_parser
from driftline.sinks.kafka_sink import MemoryKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.monitor_store import RedisMonitorStore
from driftline.sinks.redis_client import connect_redis
from driftline.streams.worker.monitors import MonitorRunner
from driftline.streams.worker.pipeline import SourcePipeline
from driftline.streams.worker.records import RawRecord
from tests.worker_process import CONTRACTS


def sample_batch(name: str, partition: int, start: int, values: list[float]) -> RawRecord:
    samples = [(start + i, 1_000 + i, v, "DE") for i, v in enumerate(values)]
    doc = {"m": name, "s": "tx", "p": 0, "v": samples}
    return RawRecord("values", partition, start, 0, name.encode(), orjson.dumps(doc), ())


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_monitors_moved_away_stop_exporting_and_resume_from_checkpoint(
    redis_url: str,
) -> None:
    client = connect_redis(redis_url)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(["tx"], registry)
    configs = {
        "a": MonitorConfig.from_config(
            {"name": "a", "source": "tx", "field": "amount", "warmup": 100}
        ),
        "b": MonitorConfig.from_config(
            {"name": "b", "source": "tx", "field": "amount", "warmup": 100}
        ),
    }
    store = RedisMonitorStore(client, prefix=f"own-{uuid.uuid4().hex[:6]}")

    def runner() -> MonitorRunner:
        return MonitorRunner(
            order_idle_after_s=0,  # one source partition: no wait for order
            monitors=configs,
            store=store,
            alerts=MemoryKafkaSink(),
            alerts_topic="alerts",
            metrics=metrics,
        )

    rng = random.Random(3)
    try:
        first = runner()
        values = [rng.gauss(100, 10) for _ in range(150)]
        await first.process([sample_batch("a", 0, 0, values), sample_batch("b", 1, 0, values)])
        labels = {"monitor": "a", "segment": ALL_SEGMENT}
        assert gauge(registry, "driftline_drift_warming_up", **labels) == 0
        assert gauge(registry, "driftline_drift_incident_open", **labels) == 0

        first.keep_partitions({1})  # partition 0 (monitor a) moved to another worker
        assert gauge(registry, "driftline_drift_warming_up", **labels) is None
        assert gauge(registry, "driftline_drift_incident_open", **labels) is None
        assert gauge(registry, "driftline_drift_reference_mean", **labels) is None
        b_labels = {"monitor": "b", "segment": ALL_SEGMENT}
        assert gauge(registry, "driftline_drift_incident_open", **b_labels) == 0  # still here

        # the new owner resumes a from its checkpoint: warmed up, the same values are skipped
        second = runner()
        await second.process([sample_batch("a", 0, 0, values)])
        assert gauge(registry, "driftline_drift_warming_up", **labels) == 0
        more = [rng.gauss(100, 10) for _ in range(5)]
        await second.process([sample_batch("a", 0, 150, more)])
        assert second._held["a"].checkpoint.high_water["tx/0"] == 154
    finally:
        await client.aclose()


async def test_revoked_source_partitions_leave_no_series_and_no_state() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(["tx"], registry)
    metrics.consumer_lag.labels(topic="tx-topic", partition="3").set(12)
    metrics.applied_offset.labels(source="tx", partition="3").set(99)
    metrics.applied_offset.labels(source="tx", partition="4").set(7)
    metrics.forget_partition("tx-topic", "tx", 3)
    metrics.forget_partition("tx-topic", "tx", 9)  # never exported: nothing to do
    assert (
        gauge(registry, "driftline_consumer_lag_records", topic="tx-topic", partition="3") is None
    )
    assert gauge(registry, "driftline_applied_offset", source="tx", partition="3") is None
    assert gauge(registry, "driftline_applied_offset", source="tx", partition="4") == 7

    quality = QualityChecker(QualityConfig.model_validate({"unique": {"field": "event_id"}}))
    parser = build_parser(
        encoding="json",
        contract_path=CONTRACTS / "transactions.schema.json",
        entity_key="user_id",
        event_time_field="event_time",
        event_time_unit="ms",
        max_event_bytes=4096,
    )
    pipeline = SourcePipeline(
        source="tx",
        dead_letter_topic="tx.dlq",
        parser=parser,
        dead_letters=MemoryKafkaSink(),
        store=None,
        groups=(),
        metrics=metrics,
        quality=quality,
    )
    event = {"event_id": "e1", "user_id": "u", "amount": 1.0, "category": "fuel", "event_time": 5}
    records = [RawRecord("tx-topic", p, 0, 10, b"u", orjson.dumps(event), ()) for p in (3, 4)]
    await pipeline.process(records)
    assert quality.tracked_ids() == 2
    pipeline.release(3)
    assert quality.tracked_ids() == 1


async def test_failed_monitor_effects_are_retried_and_counted(redis_url: str) -> None:
    client = connect_redis(redis_url)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(["tx"], registry)
    alerts = MemoryKafkaSink()
    alerts.fail_next = 2
    delays: list[float] = []

    async def no_wait(delay: float) -> None:
        delays.append(delay)

    runner = MonitorRunner(
        order_idle_after_s=0,  # one source partition: no wait for order
        monitors={
            "a": MonitorConfig.from_config(
                {"name": "a", "source": "tx", "field": "amount", "warmup": 100}
            )
        },
        store=RedisMonitorStore(client, prefix=f"own-{uuid.uuid4().hex[:6]}"),
        alerts=alerts,
        alerts_topic="alerts",
        metrics=metrics,
        sleep=no_wait,
    )
    try:
        await runner.process([sample_batch("a", 0, 0, [1.0, 2.0, 3.0])])
        assert len(delays) == 2  # retried twice, then done
        failed = gauge(registry, "driftline_effect_errors_total", source="tx", target="alerts")
        assert failed == 2
        assert runner._held["a"].checkpoint.high_water["tx/0"] == 2  # then checkpointed
    finally:
        await client.aclose()
