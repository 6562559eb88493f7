"""Prometheus metrics of the worker.

One :class:`WorkerMetrics` per worker, on its own ``CollectorRegistry`` (not
the process-global one) so tests can build several side by side.  Names follow
Prometheus conventions: ``_total`` counters, base units, and no unbounded
label values (never an entity id): labels are the source name and the reason
code from :data:`driftline.schemas.REASONS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

from driftline.schemas import REASONS

_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# ``*_created`` series double the scrape size and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class WorkerMetrics:
    def __init__(self, sources: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # process_start_time_seconds (uptime), CPU, RSS, open fds of the worker
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.consumed = Counter(
            "driftline_events_consumed", "Records read from source topics.", ["source"], registry=r
        )
        self.valid = Counter(
            "driftline_events_valid",
            "Records that passed their contract and were processed.",
            ["source"],
            registry=r,
        )
        self.invalid = Counter(
            "driftline_events_invalid",
            "Records refused by their contract, by reason.",
            ["source", "reason"],
            registry=r,
        )
        self.replayed = Counter(
            "driftline_events_replayed",
            "Redelivered records skipped because their effects were already stored (exactly-once).",
            ["source"],
            registry=r,
        )
        self.dead_letters = Counter(
            "driftline_dead_letter_writes",
            "Records written to a dead-letter topic.",
            ["source"],
            registry=r,
        )
        self.batch_size = Histogram(
            "driftline_batch_size_events",
            "Records per processed batch.",
            ["source"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "driftline_batch_processing_seconds",
            "Time to validate a batch and make its effects durable.",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_write_seconds = Histogram(
            "driftline_redis_write_seconds",
            "Latency of one atomic feature write (one partition batch) to Redis.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.effect_errors = Counter(
            "driftline_effect_errors",
            "Failed attempts to make a batch's effects durable (retried with backoff).",
            ["source", "target"],
            registry=r,
        )
        self.effect_pending_age = Gauge(
            "driftline_effect_pending_age_seconds",
            "Age of the oldest effect (Redis write, Kafka flush) started and not yet durable; "
            "0 when none. Grows while a service hangs or fails (set at scrape time).",
            ["target"],
            registry=r,
        )
        self.fetch_age = Gauge(
            "driftline_fetch_age_seconds",
            "Seconds since the consumer's last successful fetch from the broker "
            "(set at scrape time; an idle topic still fetches, empty).",
            registry=r,
        )
        self.failed = Gauge(
            "driftline_worker_failed",
            "1 when the worker stopped on a permanent error (see its log); it exits.",
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "driftline_dead_letters_truncated",
            "Dead letters cut to fit the request size (header driftline.errors.truncated).",
            ["source"],
            registry=r,
        )
        self.event_time_lag = Histogram(
            "driftline_event_time_lag_seconds",
            "Wall time minus event time of valid events when their batch is durable (sampled).",
            ["source"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.processing_latency = Histogram(
            "driftline_processing_latency_seconds",
            "Record timestamp (produce/append time) to effects durable in Redis (sampled).",
            ["source"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.feature_freshness = Gauge(
            "driftline_feature_freshness_seconds",
            "Age of the newest event written to a feature group, at its last write.",
            ["group"],
            registry=r,
        )
        self.feature_newest_event = Gauge(
            "driftline_feature_newest_event_timestamp_seconds",
            "Event time of the newest event this worker wrote to a feature group (epoch s).",
            ["group"],
            registry=r,
        )
        self.feature_key_missing = Counter(
            "driftline_feature_key_missing",
            "Valid events left out of a feature group keyed by another field that they lack.",
            ["group"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "driftline_consumer_lag_records",
            "Records between the last one fetched and the partition's fetch high-watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.applied_offset = Gauge(
            "driftline_applied_offset",
            "Last source offset whose features are in Redis (stored with them).",
            ["source", "partition"],
            registry=r,
        )
        self.up = Gauge("driftline_worker_up", "1 while the worker runs.", registry=r)
        self.ready = Gauge(
            "driftline_worker_ready",
            "1 when the worker owns partitions and Redis answers (as /readyz; checked per scrape).",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "driftline_assigned_partitions",
            "Source partitions assigned to this worker.",
            registry=r,
        )
        self.rebalances = Counter(
            "driftline_rebalances", "Partition assignments received.", registry=r
        )
        drift_labels = ["monitor", "segment"]
        self.drift_alerts = Counter(
            "driftline_drift_alerts",
            "Drift alert records published, by kind.",
            ["monitor", "kind"],
            registry=r,
        )
        self.drift_order_pending = Gauge(
            "driftline_drift_order_pending",
            "Values of a monitor waiting for the other source partitions to reach their "
            "event time.",
            ["monitor"],
            registry=r,
        )
        self.drift_order_forced = Counter(
            "driftline_drift_order_forced",
            "Values fed before the event-time watermark reached them (the wait buffer was full).",
            ["monitor"],
            registry=r,
        )
        self.drift_detections = Counter(
            "driftline_drift_detections",
            "Drift detections that opened or escalated an incident.",
            ["monitor", "detector"],
            registry=r,
        )
        self.drift_incident_open = Gauge(
            "driftline_drift_incident_open",
            "1 while a drift incident is open.",
            drift_labels,
            registry=r,
        )
        self.drift_warming_up = Gauge(
            "driftline_drift_warming_up",
            "1 while the monitor learns its reference (alerts muted).",
            drift_labels,
            registry=r,
        )
        self.drift_reference_mean = Gauge(
            "driftline_drift_reference_mean",
            "Mean of the monitor's reference sample (the baseline during an incident).",
            drift_labels,
            registry=r,
        )
        self.drift_recent_mean = Gauge(
            "driftline_drift_recent_mean",
            "Mean of the monitor's recent values.",
            drift_labels,
            registry=r,
        )
        self.drift_reference_sd = Gauge(
            "driftline_drift_reference_sd",
            "Standard deviation of the monitor's reference sample (the baseline during an "
            "incident).",
            drift_labels,
            registry=r,
        )
        self.drift_recent_sd = Gauge(
            "driftline_drift_recent_sd",
            "Standard deviation of the monitor's recent values.",
            drift_labels,
            registry=r,
        )
        self.drift_mean_shift_sd = Gauge(
            "driftline_drift_mean_shift_sd",
            "(recent mean - reference mean) / reference sd: the shift in baseline sd units.",
            drift_labels,
            registry=r,
        )
        self.drift_last_detection = Gauge(
            "driftline_drift_last_detection_timestamp_seconds",
            "Wall time of the monitor's last detection.",
            ["monitor"],
            registry=r,
        )
        self.monitor_checkpoint_rejected = Counter(
            "driftline_monitor_checkpoint_rejected",
            "Drift monitor checkpoints refused on load, by reason (pickle: the old format, "
            "never unpickled; unreadable, format, corrupt, config); the monitor learns afresh.",
            ["monitor", "reason"],
            registry=r,
        )
        self.quality_events = Counter(
            "driftline_quality_events",
            "Valid events seen by the source's data-quality checks (the rates' denominator).",
            ["source"],
            registry=r,
        )
        self.quality_missing = Counter(
            "driftline_quality_missing",
            "Valid events in which the field was absent or null (completeness).",
            ["source", "field"],
            registry=r,
        )
        self.quality_violations = Counter(
            "driftline_quality_violations",
            "Range (min, max, type) and domain (allowed) check violations.",
            ["source", "field", "check"],
            registry=r,
        )
        self.quality_duplicates = Counter(
            "driftline_quality_duplicates",
            "Events whose id was already seen within the uniqueness horizon.",
            ["source"],
            registry=r,
        )
        self.quality_dedup_evicted = Counter(
            "driftline_quality_dedup_evicted",
            "Ids forgotten before their horizon because of max_ids (their duplicates are missed).",
            ["source"],
            registry=r,
        )
        self.quality_missing_limit = Gauge(
            "driftline_quality_missing_ratio_limit",
            "Highest acceptable absent/null ratio of a field, from the config (alert threshold).",
            ["source", "field"],
            registry=r,
        )
        self.quality_dedup_ids = Gauge(
            "driftline_quality_dedup_ids",
            "Ids the uniqueness check remembers on this worker (its memory).",
            ["source"],
            registry=r,
        )
        self.build = Info("driftline_build", "Version of the running worker.", registry=r)
        for source in sources:
            for label in (self.consumed, self.valid, self.dead_letters, self.replayed):
                label.labels(source=source)
            for reason in REASONS:
                self.invalid.labels(source=source, reason=reason)
            for target in ("redis", "dead_letter"):
                self.effect_errors.labels(source=source, target=target)
            self.dead_letters_truncated.labels(source=source)
        self.failed.set(0)

    def declare_quality(
        self,
        source: str,
        completeness: Iterable[str],
        checks: Iterable[tuple[str, str]],
        missing_limits: Mapping[str, float],
        dedup: bool,
    ) -> None:
        """Pre-create a source's quality series so dashboards show zeros, not gaps."""
        if dedup:
            self.quality_dedup_ids.labels(source=source).set(0)
        for name, ratio in missing_limits.items():
            self.quality_missing_limit.labels(source=source, field=name).set(ratio)
        self.quality_events.labels(source=source)
        self.quality_duplicates.labels(source=source)
        self.quality_dedup_evicted.labels(source=source)
        for name in completeness:
            self.quality_missing.labels(source=source, field=name)
        for name, check in checks:
            self.quality_violations.labels(source=source, field=name, check=check)

    def watch_health(
        self, pending_ages: Callable[[], Mapping[str, float]], fetch_age: Callable[[], float]
    ) -> None:
        """Compute the effect and fetch ages when scraped, from the worker's live state."""
        for target in ("redis", "kafka"):
            self.effect_pending_age.labels(target=target).set_function(
                lambda t=target: pending_ages().get(t, 0.0)  # type: ignore[misc]
            )
        self.fetch_age.set_function(fetch_age)

    def forget_partition(self, topic: str, source: str, partition: int) -> None:
        """Remove the per-partition series of a partition this worker no longer owns."""
        for gauge, labels in (
            (self.consumer_lag, (topic, str(partition))),
            (self.applied_offset, (source, str(partition))),
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)


class ServeMetrics:
    """Metrics of ``driftline serve``: requests by route template, method and status; latency.

    Labels are the route *template* (``/v1/features/{group}/{entity}``), never
    the requested path, so entity keys never become label values.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "driftline_serve_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "driftline_serve_request_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.seconds.labels(route=route).observe(seconds)


class ArchiveMetrics:
    """Metrics of ``driftline archive``: events written to the offline log, its commits, errors.

    ``driftline_archive_offset`` is the last offset the log holds per partition;
    the group's committed offsets (``<app_id>.archive``) give the same for lag tools.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.events = Counter(
            "driftline_archive_events",
            "Accepted events committed to the offline log.",
            ["source"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "driftline_archive_rejected",
            "Records not archived: invalid, late, future or routed away by a quality check.",
            ["source"],
            registry=self.registry,
        )
        self.commits = Counter(
            "driftline_archive_commits",
            "Commits to the offline log.",
            ["source"],
            registry=self.registry,
        )
        self.errors = Counter(
            "driftline_archive_errors",
            "Failed attempts to read or write the offline log (each is retried with backoff).",
            ["source"],
            registry=self.registry,
        )
        self.fenced = Counter(
            "driftline_archive_fenced",
            "Commits refused because another archiver wrote the partition first (rebalances).",
            ["source"],
            registry=self.registry,
        )
        self.offset = Gauge(
            "driftline_archive_offset",
            "Last offset the offline log holds, per partition.",
            ["source", "partition"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "driftline_archive_commit_seconds",
            "Time of one commit to the offline log.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
