"""The drift monitors' runner on in-memory doubles: values in, alerts out, checkpoints kept.

``MemoryMonitorStore`` keeps the compare-and-set contract of the Redis store
(``tests/integration/test_monitor_checkpoints.py`` runs the real one), so the
runner's replay, resume and stale-owner rules are pinned here without Redis.
"""

from __future__ import annotations

import logging
import random

import orjson
import pytest
from prometheus_client import CollectorRegistry

from driftline.drift import ALL_SEGMENT, MonitorConfig
from driftline.drift.samples import AcceptRequest, accept_doc, sample_docs
from driftline.sinks.kafka_sink import MemoryKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.monitor_store import MemoryMonitorStore
from driftline.streams.worker.monitors import MonitorRunner
from driftline.streams.worker.records import RawRecord

CONFIG = MonitorConfig.from_config({"name": "a", "source": "tx", "field": "amount", "warmup": 100})


def batch(start: int, values: list[float], partition: int = 0) -> list[RawRecord]:
    """Values-topic records of source partition ``partition``, offsets from ``start``."""
    samples = [(start + i, 1_000 + start + i, v, None) for i, v in enumerate(values)]
    return [
        RawRecord("values", 0, start, 0, key, value, ())
        for key, value in sample_docs("a", "tx", partition, samples)
    ]


def runner_on(
    store: MemoryMonitorStore, alerts: MemoryKafkaSink, registry: CollectorRegistry
) -> MonitorRunner:
    async def no_wait(delay: float) -> None:
        pass

    return MonitorRunner(
        order_idle_after_s=0,  # one source partition: no wait for order
        monitors={"a": CONFIG},
        store=store,
        alerts=alerts,
        alerts_topic="alerts",
        metrics=WorkerMetrics(["tx"], registry),
        sleep=no_wait,
    )


def values_seen(store: MemoryMonitorStore) -> int:
    state = store.checkpoints["a"].state
    assert state is not None
    return int(orjson.loads(state)["monitors"][0]["n"])


async def test_values_are_fed_once_and_checkpointed_with_their_offsets() -> None:
    store, alerts, registry = MemoryMonitorStore(), MemoryKafkaSink(), CollectorRegistry()
    runner = runner_on(store, alerts, registry)
    rng = random.Random(1)
    values = [rng.gauss(100, 10) for _ in range(150)]
    assert await runner.process(batch(0, values)) == []
    assert store.checkpoints["a"].high_water == {"tx/0": 149}
    assert values_seen(store) == 150
    labels = {"monitor": "a", "segment": ALL_SEGMENT}
    assert registry.get_sample_value("driftline_drift_warming_up", labels) == 0

    await runner.process(batch(100, values[100:]))  # a replay: offsets already covered
    assert values_seen(store) == 150

    # a new owner resumes from the checkpoint and skips what it covers
    resumed = runner_on(store, MemoryKafkaSink(), CollectorRegistry())
    await resumed.process(batch(140, values[140:] + [100.0] * 5))
    assert values_seen(store) == 155
    assert store.checkpoints["a"].high_water == {"tx/0": 154}


async def test_a_drift_is_published_on_the_alerts_topic_and_its_incident_checkpointed() -> None:
    store, alerts, registry = MemoryMonitorStore(), MemoryKafkaSink(), CollectorRegistry()
    runner = runner_on(store, alerts, registry)
    rng = random.Random(7)
    await runner.process(batch(0, [rng.gauss(0, 1) for _ in range(200)]))
    raised = await runner.process(batch(200, [rng.gauss(6, 1) for _ in range(200)]))
    assert [a.kind for a in raised][:1] == ["opened"]
    topics = [topic for topic, *_ in alerts.written]
    assert topics == ["alerts"] * len(raised) and alerts.pending == []
    published = orjson.loads(alerts.written[0][2] or b"{}")
    assert published["kind"] == "opened" and published["monitor"] == "a"
    # the checkpoint holds the open incident: a restart neither loses nor re-raises it
    labels = {"monitor": "a", "segment": ALL_SEGMENT}
    assert registry.get_sample_value("driftline_drift_incident_open", labels) == 1
    after_restart = CollectorRegistry()
    resumed = runner_on(store, MemoryKafkaSink(), after_restart)
    assert await resumed.process(batch(200, [6.0] * 10)) == []  # a replay: nothing re-raised
    assert after_restart.get_sample_value("driftline_drift_incident_open", labels) == 1


async def test_a_stale_owner_loses_the_save_and_reloads_the_newer_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryMonitorStore()
    old = runner_on(store, MemoryKafkaSink(), CollectorRegistry())
    await old.process(batch(0, [1.0, 2.0]))  # holds the monitor at seq 1
    new = runner_on(store, MemoryKafkaSink(), CollectorRegistry())
    await new.process(batch(2, [3.0, 4.0]))  # the new owner saves: seq 2
    with caplog.at_level(logging.WARNING, logger="driftline.streams.worker.monitors"):
        await old.process(batch(4, [5.0]))
    assert any("newer checkpoint" in r.getMessage() for r in caplog.records)
    assert store.checkpoints["a"].seq == 2 and values_seen(store) == 4  # old's save refused
    await old.process(batch(4, [5.0]))  # reloaded: it goes on from the new owner's state
    assert store.checkpoints["a"].seq == 3 and values_seen(store) == 5


async def test_an_unreachable_store_is_retried_and_counted() -> None:
    store, registry = MemoryMonitorStore(), CollectorRegistry()
    store.fail_next = 2
    runner = runner_on(store, MemoryKafkaSink(), registry)
    await runner.process(batch(0, [1.0, 2.0, 3.0]))
    errors = registry.get_sample_value(
        "driftline_effect_errors_total", {"source": "tx", "target": "redis"}
    )
    assert errors == 2 and store.checkpoints["a"].high_water == {"tx/0": 2}


def accept_record(offset: int, segment: str | None = None) -> RawRecord:
    key, value = accept_doc(AcceptRequest("a", segment, 5_000_000, "oncall@example"))
    return RawRecord("values", 0, offset, 0, key, value, ())


async def test_an_acceptance_closes_the_incident_once_and_replays_skip_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, alerts, registry = MemoryMonitorStore(), MemoryKafkaSink(), CollectorRegistry()
    runner = runner_on(store, alerts, registry)
    rng = random.Random(7)
    await runner.process(batch(0, [rng.gauss(0, 1) for _ in range(200)]))
    await runner.process(batch(200, [rng.gauss(6, 1) for _ in range(200)]))
    labels = {"monitor": "a", "segment": ALL_SEGMENT}
    assert registry.get_sample_value("driftline_drift_incident_open", labels) == 1
    with caplog.at_level(logging.WARNING, logger="driftline.streams.worker.monitors"):
        closed = await runner.process([accept_record(1_000)])
    assert [(a.kind, a.reason, a.event_time_ms) for a in closed] == [
        ("closed", "accepted", 5_000_000)
    ]
    assert any(
        "accepted as the new normal by oncall@example" in r.getMessage() for r in caplog.records
    )
    assert orjson.loads(alerts.written[-1][2] or b"{}")["reason"] == "accepted"
    assert registry.get_sample_value("driftline_drift_incident_open", labels) == 0
    assert store.checkpoints["a"].high_water["accept@values-topic"] == 1_000
    # a new owner replaying the values topic applies neither the values nor the acceptance again
    resumed_registry = CollectorRegistry()
    resumed = runner_on(store, MemoryKafkaSink(), resumed_registry)
    assert await resumed.process([*batch(200, [6.0] * 10), accept_record(1_000)]) == []
    # an acceptance with nothing open changes nothing, and is not an error
    assert await resumed.process([accept_record(1_001)]) == []
    assert store.checkpoints["a"].high_water["accept@values-topic"] == 1_001


async def test_an_acceptance_of_an_unknown_monitor_or_segment_is_skipped() -> None:
    store, alerts = MemoryMonitorStore(), MemoryKafkaSink()
    runner = runner_on(store, alerts, CollectorRegistry())
    key, value = accept_doc(AcceptRequest("gone", None, 1, "x"))
    assert await runner.process([RawRecord("values", 0, 0, 0, key, value, ())]) == []
    assert store.checkpoints == {}
    rng = random.Random(7)
    await runner.process(batch(0, [rng.gauss(0, 1) for _ in range(200)]))
    await runner.process(batch(200, [rng.gauss(6, 1) for _ in range(200)]))
    assert await runner.process([accept_record(5, segment="nope")]) == []
    assert [a.reason for a in await runner.process([accept_record(6, segment=ALL_SEGMENT)])] == [
        "accepted"
    ]


def partition_records(
    partition: int, values: list[float], times: list[int], origin: int, chunk: int = 500
) -> list[RawRecord]:
    """One values-topic record per ``chunk`` samples of source partition ``partition``."""
    out = []
    for i, lo in enumerate(range(0, len(values), chunk)):
        samples = [(lo + j, times[lo + j], v, None) for j, v in enumerate(values[lo : lo + chunk])]
        for key, value in sample_docs("a", "tx", partition, samples):
            out.append(RawRecord("values", 0, origin + i, 0, key, value, ()))
    return out


def backlog(seed: int) -> tuple[list[RawRecord], list[RawRecord]]:
    """Two partitions over the same event time; a +3 sd shift halfway through both."""
    rng = random.Random(seed)
    records = []
    for p in (0, 1):
        values = [rng.gauss(0, 1) for _ in range(1500)] + [rng.gauss(3, 1) for _ in range(1500)]
        times = [2 * i + p for i in range(3000)]
        records.append(partition_records(p, values, times, origin=100 * p))
    return records[0], records[1]


class Clock:
    def __init__(self) -> None:
        self.s = 0.0

    def __call__(self) -> float:
        return self.s


def ordered_runner(store: MemoryMonitorStore, clock: Clock, idle_s: float) -> MonitorRunner:
    async def no_wait(delay: float) -> None:
        pass

    return MonitorRunner(
        monitors={"a": CONFIG},
        store=store,
        alerts=MemoryKafkaSink(),
        alerts_topic="alerts",
        metrics=WorkerMetrics(["tx"], CollectorRegistry()),
        sleep=no_wait,
        order_idle_after_s=idle_s,
        clock=clock,
    )


async def test_a_backlog_read_one_partition_after_the_other_is_one_incident() -> None:
    fast, slow = backlog(3)
    # without the merge: the second partition's early values are back at the baseline,
    # so one shift is seen twice
    unordered = ordered_runner(MemoryMonitorStore(), Clock(), idle_s=0)
    alerts = await unordered.process(fast) + await unordered.process(slow)
    assert [a.kind for a in alerts].count("opened") == 2
    # with it: fed in event-time order, one incident, at the shift
    clock = Clock()
    runner = ordered_runner(MemoryMonitorStore(), clock, idle_s=5)
    assert await runner.process(fast) == []  # waits for the other partitions to report
    assert runner.committable(0) == 0  # nothing of it may be committed yet
    clock.s = 1
    assert await runner.process(slow) == []
    clock.s = 5
    alerts = await runner.tick()
    opened = [a for a in alerts if a.kind == "opened"]
    assert len(opened) == 1 and [a.kind for a in alerts].count("opened") == 1
    assert opened[0].event_time_ms >= 3000  # the shift starts at event time 3000
    assert runner.committable(0) is None  # everything fed: all of it committable


async def test_values_waiting_for_order_are_not_lost_by_a_crash() -> None:
    fast, slow = backlog(4)
    store, clock = MemoryMonitorStore(), Clock()
    first = ordered_runner(store, clock, idle_s=5)
    await first.process(fast[:2])  # waiting in memory, not committed
    clock.s = 1
    await first.process(slow[:1])
    clock.s = 5.5  # the first partition went quiet, the second has reached event time 999
    await first.tick()
    fed = values_seen(store)
    assert fed == 1000 and first.committable(0) == 1  # fast's second record still waits
    # the worker dies; the values topic is read again from the last commit by a new owner
    clock.s = 7
    again = ordered_runner(store, clock, idle_s=5)
    await again.process(fast + slow)  # everything since the start: fed values are skipped
    clock.s = 20
    await again.tick()
    assert values_seen(store) == 6000  # every value fed exactly once
