"""``driftline archive``: the offline event log, written by its own consumer group.

Design (the trade-off): the archiver is a separate program in its own
consumer group (``<app_id>.archive``), not an effect of the worker.  Its
failures (a full disk, an object store down) cannot stop or slow the online
path, and the worker's batches are not made larger by a second copy of every
event.  The price: it reads each source topic a second time, and it must
reach the worker's verdicts on its own.  It does, with the worker's code
(:func:`driftline.streams.worker.verdicts.judge`): the contract, the quality
routing and the event-time verdicts are fixed properties of a partition's
history, given the watermark at the offset where reading starts, and the
archiver's watermark of a partition is the newest event time it archived
for it (which is what the worker's watermark is: the largest accepted event
time).  Two verdicts can still differ, both written down in the README: a
``unique`` check with ``action: dead_letter`` keeps its ids in memory (a
restarted worker, or archiver, starts with none), and a Redis that lost its
state restarts the worker's watermark.

Exactly once: every commit to the log records ``<topic>/<partition>`` with the
last offset it holds (:class:`~driftline.sinks.offline_log.OfflineLog`), and
reading starts after it; a commit is refused when another writer moved a
partition meanwhile (a rebalance), and the archiver then reloads where each
of its partitions stands.  Kafka's committed offsets of the group are only
written for lag monitoring; the log is the truth.

Memory is bounded: at most ``offline.flush_max_events`` accepted events wait
for a commit, and no more is fetched while a commit is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from driftline.drift.quality import QualityChecker
from driftline.features.durations import parse_duration
from driftline.schemas import EventParser, ParsedEvent
from driftline.sinks.exceptions import PermanentError
from driftline.sinks.metrics import ArchiveMetrics
from driftline.sinks.offline_log import LogFenceError, LogLayout, OfflineLog
from driftline.streams.errors import ConfigError
from driftline.streams.security import bearer_matches
from driftline.streams.settings import Settings
from driftline.streams.sources import Sources, archived_sources, declared_types
from driftline.streams.worker.records import RawRecord
from driftline.streams.worker.retry import Backoff, T, until_done
from driftline.streams.worker.verdicts import judge

log = logging.getLogger(__name__)


@dataclass
class _Source:
    name: str
    topic: str
    parser: EventParser
    quality: QualityChecker | None
    layout: LogLayout
    judge_time: bool
    allowed_lateness_ms: int
    future_tolerance_ms: int


@dataclass
class _Held:
    """A partition this archiver holds: what the log has, what waits for a commit."""

    committed: int  # last offset in the log (-1: none)
    seen: int  # last offset judged
    watermark_ms: int | None
    events: list[ParsedEvent] = field(default_factory=list)
    records: list[RawRecord] = field(default_factory=list)


class Archiver:
    def __init__(
        self,
        settings: Settings,
        sources: Sources,
        offline_log: OfflineLog,
        metrics: ArchiveMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.log = offline_log
        self.metrics = metrics or ArchiveMetrics()
        self.by_topic: dict[str, _Source] = {}
        wanted = set(archived_sources(settings, sources))
        for s in settings.sources:
            if s.name not in wanted:
                continue
            parser = sources.parsers[s.name]
            try:
                layout = LogLayout.from_declared(declared_types(parser))
            except PermanentError as exc:
                raise ConfigError(f"source {s.name}: {exc}") from None
            self.by_topic[s.topic] = _Source(
                s.name,
                s.topic,
                parser,
                sources.quality.get(s.name),
                layout,
                bool(sources.groups.get(s.name)),
                parse_duration(s.allowed_lateness),
                parse_duration(s.future_tolerance),
            )
        if not self.by_topic:
            raise ConfigError(
                "nothing to archive: no feature group reads a source (name them in offline.sources)"
            )
        self.held: dict[TopicPartition, _Held] = {}
        self.backoff = Backoff(
            settings.worker.retry_backoff_initial_s, settings.worker.retry_backoff_max_s
        )
        self._pending = 0
        self._last_flush = time.monotonic()
        self._flushing = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None

    # -- where each partition stands ------------------------------------------

    async def adopt(self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> None:
        """Start each partition after the last offset the log holds for it.

        One read of the positions and one of the watermarks per topic, for all
        of its partitions assigned at once.
        """
        by_topic: dict[str, list[int]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        for topic, partitions in by_topic.items():
            source = self.by_topic[topic]
            positions = await self._read_log(source.name, self.log.positions, topic, partitions)
            watermarks = await self._read_log(source.name, self.log.watermarks, topic, partitions)
            for p in partitions:
                tp = TopicPartition(topic, p)
                committed = positions[p]
                if source.quality is not None:
                    source.quality.release(p)
                self.held[tp] = _Held(committed, committed, watermarks[p])
                if committed >= 0:
                    consumer.seek(tp, committed + 1)
                elif self.settings.kafka.auto_offset_reset == "earliest":
                    await consumer.seek_to_beginning(tp)
                else:  # where a worker of this config starts too
                    await consumer.seek_to_end(tp)
                self.metrics.offset.labels(source=source.name, partition=str(p)).set(committed)
                log.info(
                    "archive %s/%d from offset %d (watermark %s)",
                    topic,
                    p,
                    committed + 1,
                    watermarks[p],
                )

    async def _read_log(
        self,
        source: str,
        read: Callable[[str, str, list[int]], dict[int, T]],
        topic: str,
        partitions: list[int],
    ) -> dict[int, T]:
        """A read of the log, retried with backoff (and counted) while it fails."""
        return await until_done(
            functools.partial(asyncio.to_thread, read, source, topic, partitions),
            what=f"offline log of {source} (reading where {topic} stands)",
            backoff=self.backoff,
            sleep=asyncio.sleep,
            on_error=self.metrics.errors.labels(source=source).inc,
        )

    def release(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            held = self.held.pop(tp, None)
            if held is not None:
                self._pending -= len(held.events)

    # -- the loop ----------------------------------------------------------------

    def take(self, tp: TopicPartition, records: Sequence[RawRecord]) -> None:
        """Judge a partition's fetched records; the accepted ones wait for a commit."""
        held = self.held.get(tp)
        if held is None:
            return
        fresh = [r for r in records if r.offset > held.seen]
        if not fresh:
            return
        source = self.by_topic[tp.topic]
        result, held.watermark_ms = judge(
            source.parser,
            source.quality,
            tp.partition,
            fresh,
            held.watermark_ms,
            judge_time=source.judge_time,
            allowed_lateness_ms=source.allowed_lateness_ms,
            future_tolerance_ms=source.future_tolerance_ms,
        )
        held.seen = fresh[-1].offset
        held.events.extend(result.valid)
        held.records.extend(result.valid_records)
        self._pending += len(result.valid)
        self.metrics.rejected.labels(source=source.name).inc(len(result.rejected))

    def due(self) -> bool:
        o = self.settings.offline
        return self._pending >= o.flush_max_events or (
            time.monotonic() - self._last_flush >= o.flush_interval_s
            and any(h.seen > h.committed for h in self.held.values())
        )

    async def flush(self) -> None:
        """Commit what waits, one Delta commit per source; then Kafka's offsets (for lag).

        One flush at a time: a rebalance's flush (the listener) waits for the
        loop's, instead of committing the same events again.
        """
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        self._last_flush = time.monotonic()
        by_source: dict[str, list[TopicPartition]] = {}
        for tp, held in self.held.items():
            if held.seen > held.committed:
                by_source.setdefault(self.by_topic[tp.topic].name, []).append(tp)
        for name, tps in by_source.items():
            done = await until_done(
                functools.partial(asyncio.to_thread, self._commit, name, tps),
                what=f"offline log of {name}",
                backoff=self.backoff,
                sleep=asyncio.sleep,
                on_error=self.metrics.errors.labels(source=name).inc,
            )
            if not done:
                # another archiver wrote one of these partitions: start again from the log
                self.metrics.fenced.labels(source=name).inc()
                self.release(tps)
                if self.consumer is not None:
                    owned = self.consumer.assignment()
                    await self.adopt(self.consumer, [tp for tp in tps if tp in owned])
                continue
            for tp in tps:
                held = self.held[tp]
                self._pending -= len(held.events)
                held.events, held.records = [], []
                held.committed = held.seen
                self.metrics.offset.labels(source=name, partition=str(tp.partition)).set(
                    held.committed
                )
        if self.consumer is not None:
            offsets = {tp: h.committed + 1 for tp, h in self.held.items() if h.committed >= 0}
            if offsets:
                with contextlib.suppress(Exception):  # advisory: the log is the truth
                    await self.consumer.commit(offsets)

    def _commit(self, name: str, tps: Sequence[TopicPartition]) -> bool:
        """One commit of the partitions' waiting events; ``False``: another writer was first."""
        source = next(s for s in self.by_topic.values() if s.name == name)
        events = [e for tp in tps for e in self.held[tp].events]
        records = [r for tp in tps for r in self.held[tp].records]
        table = source.layout.to_table(events, records)
        written = {
            (tp.topic, tp.partition): (self.held[tp].committed, self.held[tp].seen) for tp in tps
        }
        t0 = time.perf_counter()
        try:
            self.log.append(name, table, written)
        except LogFenceError as exc:
            log.warning("%s; reloading where its partitions stand", exc)
            return False
        self.metrics.commit_seconds.observe(time.perf_counter() - t0)
        self.metrics.events.labels(source=name).inc(len(events))
        self.metrics.commits.labels(source=name).inc()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            *self.by_topic,
            group_id=f"{settings.app_id}.archive",
            enable_auto_commit=False,
            auto_offset_reset=settings.kafka.auto_offset_reset,
            session_timeout_ms=int(settings.kafka.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.kafka.heartbeat_interval_s * 1000),
            rebalance_timeout_ms=int(settings.kafka.rebalance_timeout_s * 1000),
            max_partition_fetch_bytes=8 << 20,
            **settings.kafka.aiokafka_kwargs(),
        )
        self.consumer = consumer
        archiver = self
        adopt_error: list[BaseException] = []

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                try:
                    await archiver.flush()
                except Exception as exc:  # raised from the loop, not inside aiokafka
                    adopt_error.append(exc)
                archiver.release(revoked)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                try:
                    await archiver.adopt(consumer, assigned)
                except Exception as exc:  # raised from the loop, not inside aiokafka
                    adopt_error.append(exc)

        consumer.subscribe(list(self.by_topic), listener=Listener())
        await consumer.start()
        try:
            while not stop.is_set():
                if adopt_error:
                    raise adopt_error[0]
                room = max(1, settings.offline.flush_max_events - self._pending)
                batch = await consumer.getmany(timeout_ms=500, max_records=min(room, 50_000))
                for tp, messages in batch.items():
                    self.take(tp, [RawRecord.of(m) for m in messages])
                if self.due():
                    await self.flush()
            await self.flush()
        finally:
            await consumer.stop()


async def _metrics_server(settings: Settings, metrics: ArchiveMetrics) -> web.AppRunner | None:
    if settings.metrics.port == 0:
        return None
    token = settings.metrics.token
    wanted = token.get_secret_value().encode() if token is not None else None

    async def serve_metrics(request: web.Request) -> web.Response:
        if wanted is not None and not bearer_matches(request.headers.get("Authorization"), wanted):
            return web.json_response({"error": "a bearer token is required"}, status=401)
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics.host, settings.metrics.port).start()
    log.info(
        "archive metrics on http://%s:%d/metrics", settings.metrics.host, settings.metrics.port
    )
    return runner


async def run_archive(settings: Settings, sources: Sources) -> None:
    """Run until SIGTERM or SIGINT; what waits is committed before it returns."""
    metrics = ArchiveMetrics()
    archiver = Archiver(settings, sources, OfflineLog(settings.offline.path), metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await _metrics_server(settings, metrics)
    try:
        log.info(
            "archiving %s to %s",
            ", ".join(s.name for s in archiver.by_topic.values()),
            settings.offline.path,
        )
        await archiver.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
