"""Per-batch processing of one source: validate, judge event time, aggregate, store, count.

No Faust here: the agent hands over a list of :class:`RawRecord` and awaits
:meth:`SourcePipeline.process`.  When it returns, every effect of the batch is
durable (dead letters acknowledged by the broker, feature updates applied in
Redis together with the partition's offset), so the agent may acknowledge the
batch and Faust may commit its offsets.  When an effect fails (broker or
Redis unreachable) it is retried with exponential backoff; the batch is never
acknowledged half-done and never dropped.

::

    records of one partition
      │  offset <= offset stored with the features?  ──► skip (a replay: already applied)
      ▼
    classify (contract) ──invalid──────────────────────────────┐
      │ valid                                                  │
      ▼                                                        │
    data-quality checks (counted) ──routed violations──────────┤
      │                                                        ▼
    event time vs. record time and partition watermark ──late/future──► dead-letter topic
      │ accepted
      ▼
    build_deltas per feature group ──► Redis: one atomic script per partition batch
                                        (bucket merges + new offset + watermark,
                                         only if the stored offset is unchanged)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from driftline.drift.config import MonitorConfig
from driftline.drift.quality import QualityChecker, QualityReport
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features, rekey
from driftline.features.state import EntityState
from driftline.features.watermark import split_by_time
from driftline.schemas import REASONS, EventParser, InvalidEvent, ParsedEvent, Rejection
from driftline.schemas.deadletter import (
    MAX_KEY_BYTES,
    TRUNCATED_HEADER,
    dead_letter_headers,
    fit_dead_letter,
)
from driftline.schemas.deadletter import PREFIX as DEAD_LETTER_PREFIX
from driftline.schemas.wire import ConfluentAvroDecoder
from driftline.sinks.feature_store import FeatureStore, PartitionState
from driftline.sinks.kafka_sink import KafkaSink, Record
from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.worker.retry import Backoff, EffectTracker, T, until_done

log = logging.getLogger(__name__)

#: Rejections logged one by one per batch; the rest are summarised (the
#: metrics and the dead-letter topic have them all).
LOG_REJECTIONS_PER_BATCH = 5
#: Events per batch whose lag and latency are observed (histograms are sampled).
LAG_SAMPLES = 64
#: How often a worker records in the registry that it wrote a feature group.
TOUCH_EVERY_S = 60.0
#: "Now" for split_by_time once future events are removed per record.
_NO_HORIZON = 1 << 62
#: A values-topic record carries at most this many bytes of samples; a batch
#: with more (long segment names) is split, so no record nears the broker's limit.
MAX_SAMPLE_RECORD_BYTES = 256 * 1024


def shrink_dead_letter(record: Record) -> Record | None:
    """A dead letter the broker refused for its size, cut to its headers (None: not one)."""
    topic, key, value, headers = record
    if not any(name.startswith(DEAD_LETTER_PREFIX) for name, _ in headers):
        return None
    if not value and (key is None or len(key) <= MAX_KEY_BYTES):
        return None  # already cut to its headers: nothing left to cut
    return (topic, *fit_dead_letter(key, value, headers, 0))


class RawRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass
class Classified:
    """Valid events (with the record each came from) and rejections of a batch."""

    valid: list[ParsedEvent] = field(default_factory=list)
    valid_records: list[RawRecord] = field(default_factory=list)
    rejected: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    replayed: int = 0
    quality: QualityReport | None = None
    #: per feature group keyed by another field: accepted events without that field
    key_missing: Counter[str] = field(default_factory=Counter)

    def reasons(self) -> Counter[str]:
        return Counter(rejection.reason for _, rejection in self.rejected)


def classify(parser: EventParser, records: Sequence[RawRecord]) -> Classified:
    """Split a batch into valid events and rejections.  Pure; the hot loop."""
    out = Classified()
    parse = parser.parse
    add_valid = out.valid.append
    add_record = out.valid_records.append
    add_rejected = out.rejected.append
    for record in records:
        try:
            event = parse(record.value, record.timestamp_ms)
        except InvalidEvent as exc:
            add_rejected((record, exc.rejection))
        except Exception as exc:
            # Not a verdict on the data but a failure to reach one (a bug here or
            # in a library, RecursionError, MemoryError on a huge value ...).  The
            # record still gets a verdict, so its partition goes on; the log line
            # and the internal_error series make the bug visible.
            add_rejected((record, _internal_rejection(record, exc)))
        else:
            add_valid(event)
            add_record(record)
    return out


def _internal_rejection(record: RawRecord, exc: Exception) -> Rejection:
    log.error(
        "cannot judge record topic=%s partition=%d offset=%d (%d bytes): %s; "
        "dead-lettered as internal_error",
        record.topic,
        record.partition,
        record.offset,
        len(record.value or b""),
        type(exc).__name__,
        exc_info=not isinstance(exc, RecursionError | MemoryError),
    )
    name = type(exc).__name__
    return Rejection(
        REASONS["internal_error"],
        "internal_error",
        f"driftline could not judge this record ({name}); please report it",
        name,
    )


def _time_rejection(reason: str, event: ParsedEvent, record: RawRecord, limit_ms: int) -> Rejection:
    if reason == "future":
        message = (
            f"event time {event.event_time_ms} is {event.event_time_ms - record.timestamp_ms} ms "
            f"after the record's timestamp (tolerance {limit_ms} ms)"
        )
    else:
        message = (
            f"event time {event.event_time_ms} is more than {limit_ms} ms "
            "behind the partition's watermark"
        )
    return Rejection(REASONS[reason], reason, message, "EventTime")


def sample_records(
    monitors: Sequence[MonitorConfig],
    source: str,
    partition: int,
    events: Sequence[ParsedEvent],
    records: Sequence[RawRecord],
) -> list[tuple[bytes, bytes]]:
    """The values-topic records (key, value) for one partition batch of accepted events."""
    out: list[tuple[bytes, bytes]] = []
    for monitor in monitors:
        field = monitor.field
        if field is None:
            continue  # a feature monitor: see feature_samples
        segment_by = monitor.segment_by
        samples: list[tuple[int, int, float, Any]] = []
        for event, record in zip(events, records, strict=True):
            raw = event.data.get(field)
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                continue
            segment = segment_of(event, segment_by)
            samples.append((record.offset, event.event_time_ms, float(raw), segment))
        out += sample_docs(monitor.name, source, partition, samples)
    return out


#: A segment value is a label, not data: longer strings are cut (a 1 MB string
#: in a segment field must not make a values record the broker refuses).
MAX_SEGMENT_CHARS = 200


def segment_of(event: ParsedEvent, segment_by: str | None) -> Any:
    """The event's segment for a monitor: a scalar, strings cut to MAX_SEGMENT_CHARS."""
    if not segment_by:
        return None
    segment = event.data.get(segment_by)
    if isinstance(segment, str):
        return segment[:MAX_SEGMENT_CHARS]
    if segment is not None and not isinstance(segment, int | float | bool):
        return None
    return segment


def sample_docs(
    monitor: str, source: str, partition: int, samples: list[tuple[int, int, float, Any]]
) -> list[tuple[bytes, bytes]]:
    """Values-topic records for ``samples``, split so none exceeds MAX_SAMPLE_RECORD_BYTES."""
    if not samples:
        return []
    value = orjson.dumps({"m": monitor, "s": source, "p": partition, "v": samples})
    if len(value) <= MAX_SAMPLE_RECORD_BYTES or len(samples) == 1:
        return [(monitor.encode(), value)]
    half = len(samples) // 2
    return sample_docs(monitor, source, partition, samples[:half]) + sample_docs(
        monitor, source, partition, samples[half:]
    )


def sampled_entities(
    events: Sequence[ParsedEvent], records: Sequence[RawRecord], limit: int
) -> list[tuple[str, int, ParsedEvent]]:
    """Entities of a batch as (entity, offset of its last event, that event), by offset.

    At most ``limit``, spread evenly over the batch when there are more: the
    choice depends only on the batch, so a replay samples the same entities.
    """
    last: dict[str, tuple[int, ParsedEvent]] = {}
    for event, record in zip(events, records, strict=True):
        last[event.entity] = (record.offset, event)
    ordered = sorted(((o, e, ev) for e, (o, ev) in last.items()), key=lambda t: t[0])
    if len(ordered) > limit:
        step = len(ordered) / limit
        ordered = [ordered[int(i * step)] for i in range(limit)]
    return [(entity, offset, event) for offset, entity, event in ordered]


def feature_samples(
    monitor: MonitorConfig,
    group: FeatureGroup,
    chosen: Sequence[tuple[str, int, ParsedEvent]],
    stored: Sequence[EntityState | None],
    deltas: Mapping[str, EntityState],
) -> list[tuple[int, int, float, Any]]:
    """One sample per chosen entity: its feature value once this batch is applied.

    The value is read as of the entity's newest event time, from the stored
    state merged with the batch's delta exactly as the store will merge it,
    so it is known before the write and rides in the same flush as the
    dead letters.  Entities whose feature has no value (a mean over an empty
    window) give no sample.
    """
    name = str(monitor.feature_name)
    segment_by = monitor.segment_by
    out: list[tuple[int, int, float, Any]] = []
    for (entity, offset, event), state in zip(chosen, stored, strict=True):
        delta = deltas.get(entity)
        merged = apply_delta(group, state, delta) if delta is not None else state
        if merged is None or merged.newest_event_ms is None:
            continue
        value = read_features(group, merged, merged.newest_event_ms).values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        segment = segment_of(event, segment_by)
        out.append((offset, merged.newest_event_ms, float(value), segment))
    return out


class TimeJudged(NamedTuple):
    accepted: list[ParsedEvent]
    rejected: list[tuple[RawRecord, Rejection]]
    watermark_ms: int | None


def judge_event_time(
    events: Sequence[ParsedEvent],
    records: Sequence[RawRecord],
    watermark_ms: int | None,
    *,
    allowed_lateness_ms: int,
    future_tolerance_ms: int,
) -> TimeJudged:
    """Late and future events of one partition, decided so a replay decides the same.

    *Future* is judged against each record's own Kafka timestamp (producer or
    log-append time), not the worker's clock, and *late* against the watermark
    stored with the partition's offset: both are fixed properties of the
    partition's history, so reprocessing after a crash gives the same verdicts.
    """
    if events:
        # Fast path, the common case: nothing can be late or future.  No event
        # is ahead of its record by more than the tolerance, and the oldest one
        # is within the lateness of the highest watermark the batch can reach.
        times = [e.event_time_ms for e in events]
        newest = max(times)
        top = newest if watermark_ms is None or newest > watermark_ms else watermark_ms
        if min(times) >= top - allowed_lateness_ms and all(
            t <= r.timestamp_ms + future_tolerance_ms for t, r in zip(times, records, strict=True)
        ):
            return TimeJudged(list(events), [], top)
    return _judge_each(
        events,
        records,
        watermark_ms,
        allowed_lateness_ms=allowed_lateness_ms,
        future_tolerance_ms=future_tolerance_ms,
    )


def _judge_each(
    events: Sequence[ParsedEvent],
    records: Sequence[RawRecord],
    watermark_ms: int | None,
    *,
    allowed_lateness_ms: int,
    future_tolerance_ms: int,
) -> TimeJudged:
    """:func:`judge_event_time` event by event (:func:`features.watermark.split_by_time`)."""
    rejected: list[tuple[RawRecord, Rejection]] = []
    pairs: list[tuple[int, ParsedEvent]] = []
    by_offset: dict[int, RawRecord] = {}
    for event, record in zip(events, records, strict=True):
        if event.event_time_ms > record.timestamp_ms + future_tolerance_ms:
            rejected.append((record, _time_rejection("future", event, record, future_tolerance_ms)))
        else:
            pairs.append((record.offset, event))
            by_offset[record.offset] = record
    split = split_by_time(pairs, watermark_ms, _NO_HORIZON, allowed_lateness_ms, 0)
    for offset, event in split.late:
        record = by_offset[offset]
        rejected.append((record, _time_rejection("late", event, record, allowed_lateness_ms)))
    rejected.sort(key=lambda pair: pair[0].offset)
    return TimeJudged(split.accepted, rejected, split.watermark_ms)


class SourcePipeline:
    def __init__(
        self,
        *,
        source: str,
        dead_letter_topic: str,
        parser: EventParser,
        dead_letters: KafkaSink,
        store: FeatureStore | None,
        groups: Sequence[FeatureGroup],
        metrics: WorkerMetrics,
        monitors: Sequence[MonitorConfig] = (),
        values_topic: str = "",
        allowed_lateness_ms: int = 30_000,
        future_tolerance_ms: int = 300_000,
        quality: QualityChecker | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        dead_letter_max_bytes: int = 1_000_000,
        tracker: EffectTracker | None = None,
    ) -> None:
        self.source = source
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.tracker = tracker if tracker is not None else EffectTracker()
        self.dead_letter_topic = dead_letter_topic
        self.parser = parser
        self.dead_letters = dead_letters
        self.store = store if groups else None
        self.groups = tuple(groups)
        self.monitors = tuple(m for m in monitors if m.field is not None)
        by_group = {g.name: g for g in self.groups}
        #: feature monitors with the group they read (validated by build_monitors)
        self.feature_monitors = tuple(
            (m, by_group[str(m.feature_group)])
            for m in monitors
            if m.feature is not None and str(m.feature_group) in by_group
        )
        self.values_topic = values_topic
        self.metrics = metrics
        self.allowed_lateness_ms = allowed_lateness_ms
        self.future_tolerance_ms = future_tolerance_ms
        self.quality = quality
        for group in self.groups:
            if group.entity_key != parser.entity_key:
                metrics.feature_key_missing.labels(group=group.name)
        if quality is not None:
            metrics.declare_quality(
                source,
                quality.completeness,
                quality.checks(),
                quality.missing_limits,
                dedup=quality.config.unique is not None,
            )
        self.backoff = backoff or Backoff(0.2, 10.0)
        self._sleep = sleep
        self._partitions: dict[int, PartitionState] = {}
        self._newest_written = 0.0
        self._touched_at = 0.0
        decoder = parser.decoder
        self._registry_decoder = decoder if isinstance(decoder, ConfluentAvroDecoder) else None

    def release(self, partition: int) -> None:
        """Forget what this worker held for a partition that moved to another worker."""
        self._partitions.pop(partition, None)
        if self.quality is not None:
            self.quality.release(partition)

    async def adopt(self, partition: int, owned: Callable[[], bool]) -> PartitionState | None:
        """Export the stored offset of a partition just assigned, before any batch of it.

        Its previous owner dropped the series; without this, a partition with
        no new records would be exported by nobody.  ``owned`` tells whether
        this worker still holds it once Redis has answered.
        """
        store = self.store
        if store is None:
            return None
        state = await self._until_done(
            "redis", lambda: store.partition_state(self.source, partition)
        )
        if owned() and partition not in self._partitions and state.offset >= 0:
            self.metrics.applied_offset.labels(source=self.source, partition=str(partition)).set(
                state.offset
            )
        return state

    async def process(self, records: Sequence[RawRecord]) -> Classified:
        """Process one batch; returns once its effects are durable."""
        started = time.perf_counter()
        await self._resolve_schema_ids(records)
        by_partition: dict[int, list[RawRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        total = Classified()
        for partition, recs in by_partition.items():
            result = await self._process_partition(partition, recs)
            total.valid += result.valid
            total.valid_records += result.valid_records
            total.rejected += result.rejected
            total.replayed += result.replayed
            total.key_missing.update(result.key_missing)
            if result.quality is not None:
                if total.quality is None:
                    total.quality = QualityReport()
                total.quality.add(result.quality)
        self._count(len(records), total, time.perf_counter() - started)
        self._observe_time(total)
        return total

    async def _process_partition(self, partition: int, records: list[RawRecord]) -> Classified:
        while True:
            state = await self._partition_state(partition)
            fresh = records if state is None else [r for r in records if r.offset > state.offset]
            result = classify(self.parser, fresh)
            result.replayed = len(records) - len(fresh)
            if self.quality is not None and result.valid:
                self._check_quality(partition, result)
            deltas: list[tuple[FeatureGroup, Mapping[str, EntityState]]] = []
            watermark = state.watermark_ms if state is not None else None
            if state is not None and fresh:
                judged = judge_event_time(
                    result.valid,
                    result.valid_records,
                    watermark,
                    allowed_lateness_ms=self.allowed_lateness_ms,
                    future_tolerance_ms=self.future_tolerance_ms,
                )
                if judged.rejected:
                    refused = {r.offset for r, _ in judged.rejected}
                    kept = [
                        (e, r)
                        for e, r in zip(result.valid, result.valid_records, strict=True)
                        if r.offset not in refused
                    ]
                    result.valid = [e for e, _ in kept]
                    result.valid_records = [r for _, r in kept]
                    result.rejected = sorted(
                        result.rejected + judged.rejected, key=lambda p: p[0].offset
                    )
                watermark = judged.watermark_ms
                # judged.accepted is result.valid: the events each group aggregates,
                # keyed as the group is (once per group, shared with its monitors)
                keyed = {group: self._keyed(group, result) for group in self.groups}
                deltas = [(group, build_deltas(group, keyed[group][0])) for group in self.groups]
                if self.feature_monitors and result.valid:
                    await self._sample_features(partition, keyed, dict(deltas))
            self._dead_letter(result.rejected)
            if self.monitors and result.valid:
                # Values for the drift monitors ride in the same flush: durable
                # before the batch is acknowledged, deduplicated by offset downstream.
                for key, value in sample_records(
                    self.monitors, self.source, partition, result.valid, result.valid_records
                ):
                    self.dead_letters.add(self.values_topic, key, value, [])
            await self._until_done("dead_letter", self.dead_letters.flush)
            if state is None or not fresh:
                return result
            applied = await self._apply(partition, state, fresh[-1].offset, watermark, deltas)
            if applied:
                return result
            # Another writer moved the partition's offset (a replay raced a
            # stale owner): reload what is stored and filter again.
            log.warning(
                "source %s partition %d: stored offset moved under this worker; reloading",
                self.source,
                partition,
            )

    def _keyed(
        self, group: FeatureGroup, result: Classified
    ) -> tuple[list[ParsedEvent], list[RawRecord]]:
        """The accepted events (and their records) keyed as ``group`` is.

        A group keyed by another field than the source's leaves out the events
        without it; they are noted in ``result.key_missing``.
        """
        events, records = result.valid, result.valid_records
        if group.entity_key == self.parser.entity_key:
            return events, records
        keyed, kept = rekey(events, group.entity_key)
        result.key_missing[group.name] = len(events) - len(kept)
        return keyed, [records[i] for i in kept]

    async def _sample_features(
        self,
        partition: int,
        keyed: Mapping[FeatureGroup, tuple[list[ParsedEvent], list[RawRecord]]],
        deltas: Mapping[FeatureGroup, Mapping[str, EntityState]],
    ) -> None:
        """Queue the feature monitors' samples of this batch on the values topic."""
        assert self.store is not None
        for monitor, group in self.feature_monitors:
            events, records = keyed[group]
            chosen = sampled_entities(events, records, monitor.max_entities_per_batch)
            entities = [entity for entity, _, _ in chosen]
            read = functools.partial(self.store.read_states, group, entities)
            stored = await self._until_done("redis", read)
            samples = feature_samples(monitor, group, chosen, stored, deltas[group])
            for key, value in sample_docs(monitor.name, self.source, partition, samples):
                self.dead_letters.add(self.values_topic, key, value, [])

    def _check_quality(self, partition: int, result: Classified) -> None:
        """Count the batch's data-quality findings; move routed violations to ``rejected``."""
        assert self.quality is not None
        records = result.valid_records
        report = self.quality.check(partition, result.valid, [r.offset for r in records])
        result.quality = report
        if not report.refused:
            return
        refused = {i for i, _, _ in report.refused}
        result.rejected = sorted(
            result.rejected
            + [
                (records[i], Rejection(REASONS[reason], reason, message, "QualityCheck"))
                for i, reason, message in report.refused
            ],
            key=lambda pair: pair[0].offset,
        )
        result.valid = [e for i, e in enumerate(result.valid) if i not in refused]
        result.valid_records = [r for i, r in enumerate(records) if i not in refused]

    async def _partition_state(self, partition: int) -> PartitionState | None:
        if self.store is None:
            return None
        cached = self._partitions.get(partition)
        if cached is not None:
            return cached
        store = self.store
        loaded = await self._until_done(
            "redis", lambda: store.partition_state(self.source, partition)
        )
        self._partitions[partition] = loaded
        return loaded

    async def _apply(
        self,
        partition: int,
        state: PartitionState,
        new_offset: int,
        watermark: int | None,
        deltas: list[tuple[FeatureGroup, Mapping[str, EntityState]]],
    ) -> bool:
        assert self.store is not None
        store = self.store

        async def write() -> tuple[bool, int]:
            t0 = time.perf_counter()
            outcome = await store.apply(
                self.source,
                partition,
                expected_offset=state.offset,
                new_offset=new_offset,
                watermark_ms=watermark,
                deltas=deltas,
            )
            self.metrics.redis_write_seconds.observe(time.perf_counter() - t0)
            return outcome

        ok, stored = await self._until_done("redis", write)
        if not ok and stored == new_offset:
            # An earlier attempt timed out on the way back but was applied: the
            # stored offset is this batch's.  Counted as applied, not replayed.
            ok = True
        if ok:
            await self._touch_groups()
            self._partitions[partition] = PartitionState(new_offset, watermark)
            self.metrics.applied_offset.labels(source=self.source, partition=str(partition)).set(
                new_offset
            )
        else:
            self._partitions.pop(partition, None)
        return ok

    async def _touch_groups(self) -> None:
        """Tell the registry the groups were written (at most every TOUCH_EVERY_S)."""
        now = time.time()
        if now - self._touched_at < TOUCH_EVERY_S:
            return
        self._touched_at = now
        store = self.store
        assert store is not None

        async def touch_all() -> None:
            for group in self.groups:
                await store.touch(group, int(now * 1000))

        await self._until_done("redis", touch_all)

    def _dead_letter(self, rejected: list[tuple[RawRecord, Rejection]]) -> None:
        now_ms = int(time.time() * 1000)
        for i, (record, rejection) in enumerate(rejected):
            if i < LOG_REJECTIONS_PER_BATCH:
                log.warning(
                    "rejected record topic=%s partition=%d offset=%d reason=%s: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    rejection.reason,
                    rejection.message,
                )
            key, value, headers = self._dead_letter_record(record, rejection, now_ms)
            if any(name == TRUNCATED_HEADER for name, _ in headers):
                self.metrics.dead_letters_truncated.labels(source=self.source).inc()
            self.dead_letters.add(self.dead_letter_topic, key, value, headers)
        if len(rejected) > LOG_REJECTIONS_PER_BATCH:
            log.warning(
                "... and %d more rejected records in this batch of %s (dead-letter topic %s)",
                len(rejected) - LOG_REJECTIONS_PER_BATCH,
                self.source,
                self.dead_letter_topic,
            )

    def _dead_letter_record(
        self, record: RawRecord, rejection: Rejection, now_ms: int
    ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """The dead letter of ``record``: its bytes, our headers, its own headers; cut to fit."""

        def headers(original: Sequence[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
            return dead_letter_headers(
                rejection,
                source=self.source,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                now_ms=now_ms,
                original=original,
            )

        try:
            ours = headers(record.headers)
        except Exception:  # original headers of an unexpected shape: keep the record, not them
            log.exception(
                "dead letter of topic=%s partition=%d offset=%d: its headers cannot be copied",
                record.topic,
                record.partition,
                record.offset,
            )
            ours = [*headers(None), (TRUNCATED_HEADER, b"headers")]
        return fit_dead_letter(record.key, record.value, ours, self.dead_letter_max_bytes)

    async def _resolve_schema_ids(self, records: Sequence[RawRecord]) -> None:
        decoder = self._registry_decoder
        if decoder is None:
            return
        wanted = decoder.unknown_ids(r.value for r in records if r.value)
        if wanted:
            await asyncio.to_thread(decoder.resolve, wanted)

    async def _until_done(self, target: str, effect: Callable[[], Awaitable[T]]) -> T:
        counter = self.metrics.effect_errors.labels(source=self.source, target=target)
        return await until_done(
            effect,
            what=f"{target} for source {self.source}",
            backoff=self.backoff,
            sleep=self._sleep,
            on_error=counter.inc,
            tracker=self.tracker,
            target="kafka" if target == "dead_letter" else target,
        )

    def _observe_time(self, result: Classified) -> None:
        """Event-time lag, end-to-end latency and feature freshness of a durable batch.

        Sampled (at most LAG_SAMPLES events per batch) so the cost stays per batch.
        """
        if not result.valid:
            return
        now = time.time()
        step = max(1, len(result.valid) // LAG_SAMPLES)
        lag = self.metrics.event_time_lag.labels(source=self.source)
        latency = self.metrics.processing_latency.labels(source=self.source)
        for event, record in zip(result.valid[::step], result.valid_records[::step], strict=True):
            lag.observe(max(0.0, now - event.event_time_ms / 1000))
            latency.observe(max(0.0, now - record.timestamp_ms / 1000))
        if self.groups:
            newest = max(event.event_time_ms for event in result.valid) / 1000
            self._newest_written = max(self._newest_written, newest)
            for group in self.groups:
                self.metrics.feature_freshness.labels(group=group.name).set(max(0.0, now - newest))
                self.metrics.feature_newest_event.labels(group=group.name).set(self._newest_written)

    def _count(self, n_records: int, result: Classified, elapsed: float) -> None:
        m = self.metrics
        src = self.source
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
        m = self.metrics
        src = self.source
        m.quality_events.labels(source=src).inc(report.events)
        for name, n in report.missing.items():
            m.quality_missing.labels(source=src, field=name).inc(n)
        for (name, check), n in report.violations.items():
            m.quality_violations.labels(source=src, field=name, check=check).inc(n)
        if report.duplicates:
            m.quality_duplicates.labels(source=src).inc(report.duplicates)
        if report.evicted:
            m.quality_dedup_evicted.labels(source=src).inc(report.evicted)
        if self.quality is not None and self.quality.config.unique is not None:
            m.quality_dedup_ids.labels(source=src).set(self.quality.tracked_ids())
