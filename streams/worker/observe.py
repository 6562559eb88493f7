"""What one source's durable batches add to the worker's Prometheus series.

Counts by outcome (consumed, valid, replayed, dead-lettered by reason), the
data-quality findings, batch size and time, and, sampled so the cost stays per
batch, event-time lag, end-to-end latency and feature freshness.  The series
are declared up front (a labelled series that is never incremented still
reads 0, so alert rules see it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from driftline.drift.quality import QualityChecker, QualityReport
from driftline.features.definitions import FeatureGroup
from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.worker.records import Classified

#: Events per batch whose lag and latency are observed (histograms are sampled).
LAG_SAMPLES = 64


class BatchObserver:
    """The series one :class:`~driftline.streams.worker.pipeline.SourcePipeline` moves."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        source: str,
        groups: Sequence[FeatureGroup],
        entity_key: str,
        quality: QualityChecker | None,
    ) -> None:
        self._metrics = metrics
        self._source = source
        self._groups = tuple(groups)
        self._quality = quality
        self._newest_written = 0.0
        for group in self._groups:
            if group.entity_key != entity_key:
                metrics.feature_key_missing.labels(group=group.name)
        if quality is not None:
            metrics.declare_quality(
                source,
                quality.completeness,
                quality.checks(),
                quality.missing_limits,
                dedup=quality.config.unique is not None,
            )

    def observe_time(self, result: Classified) -> None:
        """Event-time lag, end-to-end latency and feature freshness of a durable batch.

        Sampled (at most LAG_SAMPLES events per batch) so the cost stays per batch.
        """
        if not result.valid:
            return
        now = time.time()
        step = max(1, len(result.valid) // LAG_SAMPLES)
        lag = self._metrics.event_time_lag.labels(source=self._source)
        latency = self._metrics.processing_latency.labels(source=self._source)
        for event, record in zip(result.valid[::step], result.valid_records[::step], strict=True):
            lag.observe(max(0.0, now - event.event_time_ms / 1000))
            latency.observe(max(0.0, now - record.timestamp_ms / 1000))
        if self._groups:
            newest = max(event.event_time_ms for event in result.valid) / 1000
            self._newest_written = max(self._newest_written, newest)
            for group in self._groups:
                self._metrics.feature_freshness.labels(group=group.name).set(max(0.0, now - newest))
                self._metrics.feature_newest_event.labels(group=group.name).set(
                    self._newest_written
                )

    def count(self, n_records: int, result: Classified, elapsed: float) -> None:
        m = self._metrics
        src = self._source
        m.consumed.labels(source=src).inc(n_records)
        m.valid.labels(source=src).inc(len(result.valid))
        if result.replayed:
            m.replayed.labels(source=src).inc(result.replayed)
        if result.rejected:
            for reason, n in result.reasons().items():
                m.invalid.labels(source=src, reason=reason).inc(n)
            m.dead_letters.labels(source=src).inc(len(result.rejected))
        if result.quality is not None:
            self._count_quality(result.quality)
        for group, n in result.key_missing.items():
            if n:
                m.feature_key_missing.labels(group=group).inc(n)
        m.batch_size.labels(source=src).observe(n_records)
        m.batch_seconds.labels(source=src).observe(elapsed)

    def _count_quality(self, report: QualityReport) -> None:
        m = self._metrics
        src = self._source
        m.quality_events.labels(source=src).inc(report.events)
        for name, n in report.missing.items():
            m.quality_missing.labels(source=src, field=name).inc(n)
        for (name, check), n in report.violations.items():
            m.quality_violations.labels(source=src, field=name, check=check).inc(n)
        if report.duplicates:
            m.quality_duplicates.labels(source=src).inc(report.duplicates)
        if report.evicted:
            m.quality_dedup_evicted.labels(source=src).inc(report.evicted)
        if self._quality is not None and self._quality.config.unique is not None:
            m.quality_dedup_ids.labels(source=src).set(self._quality.tracked_ids())
