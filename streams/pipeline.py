"""Per-batch processing of one source: validate, dead-letter, store, count.

No Faust here: the agent hands over a list of :class:`RawRecord` and awaits
:meth:`SourcePipeline.process`.  When it returns, every effect of the batch is
durable (dead letters acknowledged by the broker, Redis written), so the agent
may acknowledge the batch and Faust may commit its offsets.  When an effect
fails (broker or Redis unreachable) it is retried with exponential backoff;
the batch is never acknowledged half-done and never dropped.

::

    records ──► classify (pure) ──┬─► valid ───► Redis latest (idempotent)
                                  └─► invalid ─► dead-letter topic (bytes unchanged,
                                                 reason headers)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas import EventParser, InvalidEvent, ParsedEvent, Rejection
from schemas.deadletter import dead_letter_headers
from schemas.wire import ConfluentAvroDecoder
from sinks.deadletter import DeadLetterSink
from sinks.metrics import WorkerMetrics
from sinks.redis_store import LatestStore

log = logging.getLogger(__name__)


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
    valid: list[ParsedEvent] = field(default_factory=list)
    rejected: list[tuple[RawRecord, Rejection]] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        return Counter(rejection.reason for _, rejection in self.rejected)


def classify(parser: EventParser, records: Sequence[RawRecord]) -> Classified:
    """Split a batch into valid events and rejections.  Pure; the hot loop."""
    out = Classified()
    parse = parser.parse
    add_valid = out.valid.append
    add_rejected = out.rejected.append
    for record in records:
        try:
            add_valid(parse(record.value, record.timestamp_ms))
        except InvalidEvent as exc:
            add_rejected((record, exc.rejection))
    return out


class Backoff:
    """Exponential backoff with a cap, reset by :meth:`reset` after a success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.current = initial_s

    def next_delay(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self.current = self.initial_s


class SourcePipeline:
    def __init__(
        self,
        *,
        source: str,
        dead_letter_topic: str,
        parser: EventParser,
        dead_letters: DeadLetterSink,
        store: LatestStore,
        metrics: WorkerMetrics,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.source = source
        self.dead_letter_topic = dead_letter_topic
        self.parser = parser
        self.dead_letters = dead_letters
        self.store = store
        self.metrics = metrics
        self.backoff = backoff or Backoff(0.2, 10.0)
        self._sleep = sleep
        decoder = parser.decoder
        self._registry_decoder = decoder if isinstance(decoder, ConfluentAvroDecoder) else None

    async def process(self, records: Sequence[RawRecord]) -> Classified:
        """Process one batch; returns once its effects are durable."""
        started = time.perf_counter()
        await self._resolve_schema_ids(records)
        result = classify(self.parser, records)
        now_ms = int(time.time() * 1000)
        for record, rejection in result.rejected:
            log.warning(
                "rejected record topic=%s partition=%d offset=%d reason=%s: %s",
                record.topic,
                record.partition,
                record.offset,
                rejection.reason,
                rejection.message,
            )
            self.dead_letters.add(
                self.dead_letter_topic,
                record.key,
                record.value,
                dead_letter_headers(
                    rejection,
                    source=self.source,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    now_ms=now_ms,
                    original=record.headers,
                ),
            )
        await self._until_done("dead_letter", self.dead_letters.flush)
        await self._until_done("redis", lambda: self._write(result.valid))
        self._count(records, result, time.perf_counter() - started)
        return result

    async def _write(self, events: list[ParsedEvent]) -> None:
        if not events:
            return
        t0 = time.perf_counter()
        await self.store.write_latest(self.source, events)
        self.metrics.redis_write_seconds.observe(time.perf_counter() - t0)

    async def _resolve_schema_ids(self, records: Sequence[RawRecord]) -> None:
        decoder = self._registry_decoder
        if decoder is None:
            return
        wanted = decoder.unknown_ids(r.value for r in records if r.value)
        if wanted:
            await asyncio.to_thread(decoder.resolve, wanted)

    async def _until_done(self, target: str, effect: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            try:
                await effect()
            except (ConnectionError, TimeoutError, OSError) as exc:
                self._retry_log(target, exc, attempt)
            except Exception as exc:
                # Client libraries wrap connection trouble in their own types
                # (redis.exceptions.ConnectionError, aiokafka KafkaError): they
                # are retried too.  A programming error shows up in the log
                # with its traceback on every attempt.
                if not _is_transient(exc):
                    log.exception("unexpected error writing %s for source %s", target, self.source)
                self._retry_log(target, exc, attempt)
            else:
                self.backoff.reset()
                return
            attempt += 1
            await self._sleep(self.backoff.next_delay())

    def _retry_log(self, target: str, exc: BaseException, attempt: int) -> None:
        self.metrics.effect_errors.labels(source=self.source, target=target).inc()
        log.warning(
            "writing %s for source %s failed (attempt %d, retrying in %.1fs): %s: %s",
            target,
            self.source,
            attempt + 1,
            self.backoff.current,
            type(exc).__name__,
            exc,
        )

    def _count(self, records: Sequence[RawRecord], result: Classified, elapsed: float) -> None:
        m = self.metrics
        src = self.source
        m.consumed.labels(source=src).inc(len(records))
        m.valid.labels(source=src).inc(len(result.valid))
        if result.rejected:
            for reason, n in result.reasons().items():
                m.invalid.labels(source=src, reason=reason).inc(n)
            m.dead_letters.labels(source=src).inc(len(result.rejected))
        m.batch_size.labels(source=src).observe(len(records))
        m.batch_seconds.labels(source=src).observe(elapsed)


def _is_transient(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectionError",
            "TimeoutError",
            "KafkaError",
            "KafkaConnectionError",
            "BusyLoadingError",
        }
    )
