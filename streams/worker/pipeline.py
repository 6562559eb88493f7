"""Per-batch processing of one source: validate, judge event time, aggregate, store, count.

No Faust here: the agent hands over a list of
:class:`~driftline.streams.worker.records.RawRecord` and awaits
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
                                        (per run of at most max_keys_per_write keys)
                                        (bucket merges + new offset + watermark,
                                         only if the stored offset is unchanged)

This module runs the steps in order and owns the retries; each step lives
beside it: ``records`` (classify), ``event_time`` (late/future),
``dead_letters`` (what a rejected record becomes), ``observe`` (the
Prometheus series of a durable batch), and, pure, the data-quality checks
(:mod:`driftline.drift.quality`), the window engine
(:mod:`driftline.features.engine`) and the monitor-values samples
(:mod:`driftline.drift.samples`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from driftline.drift.config import MonitorConfig
from driftline.drift.quality import QualityChecker, QualityReport
from driftline.drift.samples import feature_samples, sample_docs, sample_records, sampled_entities
from driftline.features.batch import build_batch
from driftline.features.definitions import FeatureGroup, group_refs
from driftline.features.engine import rekey
from driftline.features.keys import shard_of
from driftline.features.state import Delta
from driftline.schemas import EventParser, ParsedEvent
from driftline.schemas.wire import ConfluentAvroDecoder
from driftline.sinks.feature_store import PartitionState
from driftline.sinks.kafka_sink import Record
from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.worker.dead_letters import add_dead_letters
from driftline.streams.worker.observe import BatchObserver
from driftline.streams.worker.ports import FeatureStore, KafkaSink
from driftline.streams.worker.records import Classified, RawRecord
from driftline.streams.worker.retry import Backoff, EffectTracker, T, until_done
from driftline.streams.worker.verdicts import judge

log = logging.getLogger(__name__)

#: How often a worker records in the registry that it wrote a feature group.
TOUCH_EVERY_S = 60.0


def split_by_keys(records: list[RawRecord], max_keys: int) -> list[list[RawRecord]]:
    """A partition batch cut into runs of at most ``max_keys`` distinct record keys.

    One Redis script applies a run: it blocks Redis (and the feature reads of
    serving) while it runs, for a time that grows with the entities it
    writes.  A batch of a few busy entities stays whole (its entities' states
    are written once); a backlog of many distinct entities is written in
    several scripts, each with its own offset fence, as smaller batches would
    be.  Record keys stand for entities (a record without a key counts as
    one of its own).
    """
    if len(records) <= max_keys:
        return [records]
    runs: list[list[RawRecord]] = []
    start = 0
    keys: set[bytes | int] = set()
    for i, record in enumerate(records):
        key: bytes | int = record.key if record.key is not None else i
        if key not in keys:
            if len(keys) == max_keys:
                runs.append(records[start:i])
                start = i
                keys = set()
            keys.add(key)
    runs.append(records[start:])
    return runs


def unapplied(
    events: list[ParsedEvent], records: list[RawRecord], state: PartitionState
) -> tuple[list[ParsedEvent], list[RawRecord]]:
    """The events (and records) whose entity's shard has not applied them yet.

    A sharded store's shards apply a batch one script each, so a worker that
    crashed between them left some shards' fences past the partition's
    offset (``state.ahead``); a record at or below its entity's shard's fence
    is in the store already.  Only the first batches after such a crash get here.
    """
    ahead, shards = state.ahead, state.shards
    kept = [
        i
        for i, (event, record) in enumerate(zip(events, records, strict=True))
        if record.offset > ahead.get(shard_of(event.entity, shards), -1)
    ]
    if len(kept) == len(events):
        return events, records
    return [events[i] for i in kept], [records[i] for i in kept]


class _Outbox:
    """The records a batch will write (dead letters, monitor values), until its turn to flush."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        self.records.append((topic, key, value, headers))

    def move_to(self, sink: KafkaSink) -> None:
        for record in self.records:
            sink.add(*record)
        self.records = []


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
        max_keys_per_write: int = 5_000,
    ) -> None:
        self.source = source
        self.max_keys_per_write = max_keys_per_write
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.tracker = tracker if tracker is not None else EffectTracker()
        self.dead_letter_topic = dead_letter_topic
        self.parser = parser
        self.dead_letters = dead_letters
        self.store = store if groups else None
        self.groups = tuple(groups)
        self.monitors = tuple(m for m in monitors if m.field is not None)
        by_group = group_refs(self.groups)  # name: its newest version; name@N: version N
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
        self._observer = BatchObserver(metrics, source, self.groups, parser.entity_key, quality)
        self.backoff = backoff or Backoff(0.2, 10.0)
        self._sleep = sleep
        self._partitions: dict[int, PartitionState] = {}
        self._touched_at = 0.0
        decoder = parser.decoder
        self._registry_decoder = decoder if isinstance(decoder, ConfluentAvroDecoder) else None
        self._effects = asyncio.Lock()

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
        # where each group version is written live from, for a backfill's handover
        # (the first write of a version would mark it too, but a quiet partition has none)
        await self._until_done(
            "redis", lambda: store.mark_live(self.source, partition, self.groups)
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
        results = [
            await self._process_partition(partition, chunk)
            for partition, recs in by_partition.items()
            for chunk in split_by_keys(recs, self.max_keys_per_write)
        ]
        for result in results:
            total.valid += result.valid
            total.valid_records += result.valid_records
            total.rejected += result.rejected
            total.replayed += result.replayed
            total.key_missing.update(result.key_missing)
            if result.quality is not None:
                if total.quality is None:
                    total.quality = QualityReport()
                total.quality.add(result.quality)
        self._observer.count(len(records), total, time.perf_counter() - started)
        self._observer.observe_time(total)
        return total

    async def _process_partition(self, partition: int, records: list[RawRecord]) -> Classified:
        while True:
            state = await self._partition_state(partition)
            fresh = records if state is None else [r for r in records if r.offset > state.offset]
            outbox = _Outbox()
            result, watermark, deltas = await self._compute(partition, state, fresh, outbox)
            result.replayed = len(records) - len(fresh)
            # The effects of one batch at a time: the CPU work above of another
            # partition's batch runs while this one waits on the broker and Redis,
            # but buffers are flushed by one batch only (a flush must wait for
            # exactly its own records).
            async with self._effects:
                outbox.move_to(self.dead_letters)
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

    async def _compute(
        self,
        partition: int,
        state: PartitionState | None,
        fresh: list[RawRecord],
        outbox: _Outbox,
    ) -> tuple[Classified, int | None, list[tuple[FeatureGroup, Mapping[str, Delta]]]]:
        """Verdicts and deltas of the fresh records; what the batch writes goes to ``outbox``."""
        watermark = state.watermark_ms if state is not None else None
        result, watermark = judge(
            self.parser,
            self.quality,
            partition,
            fresh,
            watermark,
            judge_time=state is not None,
            allowed_lateness_ms=self.allowed_lateness_ms,
            future_tolerance_ms=self.future_tolerance_ms,
        )
        deltas: list[tuple[FeatureGroup, Mapping[str, Delta]]] = []
        if state is not None and fresh:
            # result.valid holds what the verdicts accepted: the events each group
            # aggregates, keyed as the group is (once per group, shared with its monitors)
            keyed = {group: self._keyed(group, result) for group in self.groups}
            if state.ahead:
                keyed = {g: unapplied(*pair, state) for g, pair in keyed.items()}
            deltas = [(group, build_batch(group, keyed[group][0])) for group in self.groups]
            if self.feature_monitors and result.valid:
                await self._sample_features(partition, keyed, dict(deltas), outbox)
        add_dead_letters(
            outbox,
            self.dead_letter_topic,
            result.rejected,
            source=self.source,
            max_bytes=self.dead_letter_max_bytes,
            on_truncated=self._count_truncated,
        )
        if self.monitors and result.valid:
            # Values for the drift monitors ride in the same flush: durable
            # before the batch is acknowledged, deduplicated by offset downstream.
            for key, value in sample_records(
                self.monitors, self.source, partition, result.valid, result.valid_records
            ):
                outbox.add(self.values_topic, key, value, [])
        return result, watermark, deltas

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
        deltas: Mapping[FeatureGroup, Mapping[str, Delta]],
        outbox: _Outbox,
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
                outbox.add(self.values_topic, key, value, [])

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
        deltas: list[tuple[FeatureGroup, Mapping[str, Delta]]],
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
                ahead=state.ahead,
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
            self._partitions[partition] = state.after(new_offset, watermark)
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

    def _count_truncated(self) -> None:
        self.metrics.dead_letters_truncated.labels(source=self.source).inc()

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
