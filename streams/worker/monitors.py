"""Drift monitoring in the worker: sampling at the source, one owner per monitor.

Detection must see a monitor's whole stream, whatever partition its events
came from, so monitored values take a second hop::

    source agent (every worker, its partitions)          values agent (owner of the monitor)
    accepted events ──► samples [(offset, time, value, segment)] ──► <app_id>.monitor-values
                        one record per monitor and batch,              keyed by monitor name
                        keyed by monitor name                          │
                                                                       ▼
                                     SegmentedMonitor.update ──► alerts topic (keyed by monitor)
                                                              ──► Prometheus gauges/counters
                                                              ──► checkpoint in Redis (state +
                                                                  source offsets it covers)

The values topic is keyed by monitor, so each monitor lives in exactly one
partition and so in exactly one worker of the group; a rebalance moves it,
and the new owner resumes from the checkpoint.  The cost: one extra produced
record per monitor per source batch (samples are batched, not one record per
event), a few bytes per sample, and detection in one worker per monitor,
which at River's ~4 µs per value is far from a bottleneck.

Each sample carries its source offset; the checkpoint keeps the highest
offset per source partition it contains, and samples at or below it are
skipped.  Values are fed in event-time order across the source's partitions
(:mod:`driftline.drift.ordering`): a value may wait in memory for the other
partitions to reach its event time, and the records of waiting values are
not committed (:meth:`MonitorRunner.committable`), so a crash replays them.
An operator's acceptance of an incident (``driftline monitors accept``) is
a record of the same topic and key, so it reaches the owner in order with
the values; the checkpoint keeps the values-topic offset of the last one
applied (``ACCEPT_MARK``).  So a replay (of the source or of the values
topic) neither feeds a value twice, nor applies an acceptance twice, nor
re-raises an alert.  Alerts are published before the checkpoint is saved: a
crash between the two re-publishes the same alert (same ``incident_id`` and
``kind``) rather than losing it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from driftline.drift import Alert, MonitorConfig, SegmentedMonitor
from driftline.drift.exceptions import DriftStateError
from driftline.drift.ordering import EventTimeMerger
from driftline.drift.samples import AcceptRequest, Sample, decode_accept, decode_samples
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.monitor_store import MonitorCheckpoint, monitor_key
from driftline.streams.worker.ports import KafkaSink, MonitorStore
from driftline.streams.worker.records import RawRecord
from driftline.streams.worker.retry import Backoff, EffectTracker, T, until_done

log = logging.getLogger(__name__)

#: The checkpoint's high-water key for acceptances: the values-topic offset of the
#: last one applied (source partitions are keyed "source/partition": no clash).
ACCEPT_MARK = "accept@values-topic"


def _offset(sample: Sample) -> int:
    return sample[0]


@dataclass
class _Held:
    monitor: SegmentedMonitor
    checkpoint: MonitorCheckpoint
    merger: EventTimeMerger
    #: per source partition, the highest offset received (fed, or waiting in the merger)
    seen: dict[str, int]
    #: forced releases already counted in the metric
    forced_counted: int = 0


class MonitorRunner:
    """Feeds the values topic into monitors; publishes alerts; checkpoints."""

    def __init__(
        self,
        *,
        monitors: Mapping[str, MonitorConfig],
        store: MonitorStore,
        alerts: KafkaSink,
        alerts_topic: str,
        metrics: WorkerMetrics,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tracker: EffectTracker | None = None,
        order_idle_after_s: float = 5.0,
        order_max_buffered: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.order_idle_after_ms = int(order_idle_after_s * 1000)
        self.order_max_buffered = order_max_buffered
        self._clock = clock
        #: process() and tick() take turns: both feed monitors and save checkpoints
        self._lock = asyncio.Lock()
        self.tracker = tracker
        self.configs = dict(monitors)
        self.store = store
        self.alerts = alerts
        self.alerts_topic = alerts_topic
        self.metrics = metrics
        self.backoff = backoff or Backoff(0.2, 10.0)
        self._sleep = sleep
        self._held: dict[str, _Held] = {}
        #: values-topic partition each held monitor's records come from
        self._partition_of: dict[str, int] = {}
        # every alert counter exists from the start at 0: Prometheus's increase() sees
        # the first incident (a series born at 1 has no increase), so the rule on opened
        # incidents pages even for the first, short one
        for name in self.configs:
            for kind in ("opened", "updated", "closed"):
                metrics.drift_alerts.labels(monitor=name, kind=kind)

    async def _hold(self, name: str) -> _Held:
        held = self._held.get(name)
        if held is not None:
            return held
        config = self.configs[name]
        checkpoint = await self._until_done(
            lambda: self.store.load(name), f"checkpoint of monitor {name}", config.source, "redis"
        )
        monitor = SegmentedMonitor(config)
        if checkpoint.state is not None:
            try:
                monitor = SegmentedMonitor.from_state(checkpoint.state, config=config)
            except DriftStateError as exc:
                # A changed monitor definition, or a checkpoint that is not one of ours (an
                # old pickle, foreign or tampered bytes: never decoded further): start over
                # (a new warm-up) rather than judge new data against a doubtful reference.
                # The next save replaces the refused checkpoint.
                log.warning(
                    "monitor %s: checkpoint in Redis key %s refused (%s: %s); "
                    "learning a new reference",
                    name,
                    monitor_key(self.store.prefix, name),
                    exc.reason,
                    exc,
                )
                self.metrics.monitor_checkpoint_rejected.labels(
                    monitor=name, reason=exc.reason
                ).inc()
        merger = EventTimeMerger(
            idle_after_ms=self.order_idle_after_ms,
            max_buffered=self.order_max_buffered,
            now_ms=self._now_ms(),
        )
        held = self._held[name] = _Held(monitor, checkpoint, merger, dict(checkpoint.high_water))
        return held

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def committable(self, partition: int) -> int | None:
        """The lowest values-topic offset of ``partition`` with a value still waiting.

        Records from there on must not be committed: their values live only in
        memory until fed.  None: nothing waits, every record can be committed.
        """
        waiting = [
            low
            for name, held in self._held.items()
            if self._partition_of.get(name) == partition
            and (low := held.merger.lowest_origin()) is not None
        ]
        return min(waiting) if waiting else None

    async def process(self, records: Sequence[RawRecord]) -> list[Alert]:
        async with self._lock:
            return await self._process(records)

    async def tick(self) -> list[Alert]:
        """Feed what the watermark released since (partitions gone idle); call every second."""
        async with self._lock:
            waiting = {n: h for n, h in self._held.items() if h.merger}
            alerts: list[Alert] = []
            for held in waiting.values():
                alerts += self._feed(held)
            if waiting:
                await self._publish(alerts, waiting)
            return alerts

    def _feed(self, held: _Held) -> list[Alert]:
        """Feed what the merger releases; the high-water marks cover fed values only."""
        released = held.merger.release(now_ms=self._now_ms())
        if not released:
            return []
        alerts = held.monitor.update_samples([sample for _, sample in released])
        marks = held.checkpoint.high_water
        # a lane releases its samples in source-offset order: the last one per key is its highest
        newest = {key: sample[0] for key, sample in released}
        for key, offset in newest.items():
            if offset > marks.get(key, -1):
                marks[key] = offset
        return alerts

    async def _process(self, records: Sequence[RawRecord]) -> list[Alert]:
        alerts: list[Alert] = []
        touched: dict[str, _Held] = {}
        for record in records:
            decoded = decode_samples(record.value)
            if decoded is None and (request := decode_accept(record.value)) is not None:
                if request.monitor in self.configs:
                    held = await self._hold(request.monitor)
                    self._partition_of[request.monitor] = record.partition
                    alerts += self._accept(held, request, record.offset)
                    touched[request.monitor] = held
                continue
            if decoded is None:
                log.error(
                    "values topic record %s/%d@%d is not a sample batch; skipped",
                    record.topic,
                    record.partition,
                    record.offset,
                )
                continue
            name, source, partition, samples = decoded
            if name not in self.configs:
                continue  # a monitor removed from the config
            held = await self._hold(name)
            self._partition_of[name] = record.partition
            key = f"{source}/{partition}"
            high = held.seen.get(key, -1)
            # a record's samples ascend by offset (decode_samples checks it)
            fresh = samples[bisect.bisect_right(samples, high, key=_offset) :]
            if fresh:
                held.merger.add(key, record.offset, fresh, now_ms=self._now_ms())
                held.seen[key] = fresh[-1][0]
            touched[name] = held
        for held in touched.values():
            alerts += self._feed(held)
        await self._publish(alerts, touched)
        return alerts

    async def _publish(self, alerts: list[Alert], touched: Mapping[str, _Held]) -> None:
        """Alerts to the topic, then the checkpoints and gauges of ``touched``, then the log."""
        for alert in alerts:
            self.alerts.add(self.alerts_topic, alert.monitor.encode(), alert.to_json(), [])
        sources = {self.configs[n].source for n in touched} or {"-"}
        await self._until_done(self.alerts.flush, "drift alerts", min(sources), "alerts")
        for name, held in touched.items():
            await self._save(name, held)
            self._export(name, held.monitor)
            self.metrics.drift_order_pending.labels(monitor=name).set(held.merger.buffered)
            if held.merger.forced > held.forced_counted:
                self.metrics.drift_order_forced.labels(monitor=name).inc(
                    held.merger.forced - held.forced_counted
                )
                held.forced_counted = held.merger.forced
        for alert in alerts:
            log.warning(
                "drift %s: monitor %s segment %s (%s on %s, severity %s, incident %s)",
                alert.kind,
                alert.monitor,
                alert.segment,
                alert.detector,
                alert.statistic,
                alert.severity,
                alert.incident_id,
            )
            self.metrics.drift_alerts.labels(monitor=alert.monitor, kind=alert.kind).inc()
            if alert.kind in ("opened", "updated"):
                self.metrics.drift_detections.labels(
                    monitor=alert.monitor, detector=alert.detector
                ).inc()
                self.metrics.drift_last_detection.labels(monitor=alert.monitor).set(time.time())

    @staticmethod
    def _accept(held: _Held, request: AcceptRequest, offset: int) -> list[Alert]:
        """Apply an acceptance once (replays of the values topic skip it)."""
        marks = held.checkpoint.high_water
        if offset <= marks.get(ACCEPT_MARK, -1):
            return []
        marks[ACCEPT_MARK] = offset
        closed = held.monitor.accept(request.segment, event_time_ms=request.at_ms)
        which = "every segment" if request.segment is None else f"segment {request.segment!r}"
        if closed:
            log.warning(
                "monitor %s: %d incident(s) accepted as the new normal by %s (%s)",
                request.monitor,
                len(closed),
                request.by or "-",
                which,
            )
        else:
            log.info(
                "monitor %s: acceptance by %s (%s): no open incident",
                request.monitor,
                request.by or "-",
                which,
            )
        return closed

    async def _save(self, name: str, held: _Held) -> None:
        held.checkpoint.state = held.monitor.to_state()
        saved = await self._until_done(
            lambda: self.store.save(name, held.checkpoint),
            f"checkpoint of monitor {name}",
            self.configs[name].source,
            "redis",
        )
        if not saved:
            log.warning("monitor %s: another worker saved a newer checkpoint; reloading it", name)
            self._held.pop(name, None)

    async def _until_done(
        self, effect: Callable[[], Awaitable[T]], what: str, source: str, target: str
    ) -> T:
        """``effect`` retried; failed attempts counted in ``driftline_effect_errors_total``."""
        return await until_done(
            effect,
            what=what,
            backoff=self.backoff,
            sleep=self._sleep,
            on_error=self.metrics.effect_errors.labels(source=source, target=target).inc,
            tracker=self.tracker,
            target="redis" if target == "redis" else "kafka",
        )

    def keep_partitions(self, owned: set[int]) -> None:
        """Let go of the monitors whose values-topic partition this worker no longer owns.

        Their gauges are removed (the new owner exports them; an open incident
        left here would keep DriftIncidentOpen firing after it closed) and their
        state is dropped, so if they come back they resume from the checkpoint.
        """
        for name, partition in list(self._partition_of.items()):
            if partition in owned:
                continue
            del self._partition_of[name]
            held = self._held.pop(name, None)
            if held is None:
                continue
            for segment in held.monitor.monitors:
                for gauge in (
                    self.metrics.drift_incident_open,
                    self.metrics.drift_warming_up,
                    self.metrics.drift_reference_mean,
                    self.metrics.drift_recent_mean,
                    self.metrics.drift_reference_sd,
                    self.metrics.drift_recent_sd,
                    self.metrics.drift_mean_shift_sd,
                ):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name, segment)
            log.info("monitor %s moved to another worker (partition %d)", name, partition)

    def _export(self, name: str, monitor: SegmentedMonitor) -> None:
        m = self.metrics
        for segment, single in monitor.monitors.items():
            labels = {"monitor": name, "segment": segment}
            m.drift_incident_open.labels(**labels).set(1 if single.incident_open else 0)
            m.drift_warming_up.labels(**labels).set(1 if single.warming_up else 0)
            reference = single.reference_stats
            if reference is not None:
                m.drift_reference_mean.labels(**labels).set(reference.mean)
                m.drift_reference_sd.labels(**labels).set(reference.std)
            recent = single.recent_stats
            if recent.n:
                m.drift_recent_mean.labels(**labels).set(recent.mean)
                m.drift_recent_sd.labels(**labels).set(recent.std)
            if reference is not None and recent.n and reference.std > 0:
                shift = (recent.mean - reference.mean) / reference.std
                m.drift_mean_shift_sd.labels(**labels).set(shift)
