"""The Faust app, built by a factory from :class:`~driftline.streams.settings.Settings`.

There is no module-level app: ``create_app(settings)`` builds one with its
broker, credentials and agents, so tests and several configs can coexist in
one process.  Agents are thin: each receives whole partition batches from
the consumer (:mod:`driftline.streams.worker.transport`), hands them to
:meth:`SourcePipeline.process`, and acknowledges the batch only once that
returned, i.e. once its effects are durable.  Faust commits acknowledged
offsets every ``kafka.commit_interval_s`` and on rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.types import StreamT

from driftline.drift.samples import AcceptRequest, accept_doc
from driftline.schemas import SchemaError
from driftline.sinks.kafka_sink import BufferedKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.monitor_store import RedisMonitorStore
from driftline.streams.clients import feature_store, redis_client
from driftline.streams.errors import ConfigError
from driftline.streams.settings import KafkaSettings, Settings
from driftline.streams.sockets import bind_socket
from driftline.streams.sources import Sources, build_sources
from driftline.streams.worker.dead_letters import shrink_dead_letter
from driftline.streams.worker.health import WorkerHealth
from driftline.streams.worker.monitors import MonitorRunner
from driftline.streams.worker.pipeline import SourcePipeline
from driftline.streams.worker.retry import Backoff
from driftline.streams.worker.transport import App as BatchApp
from driftline.streams.worker.transport import RecordBatch
from driftline.streams.worker.web import WebService

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def broker_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    if kafka.security_protocol == "PLAINTEXT":
        return None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        ssl_context=kafka.ssl_context(),
        mechanism=kafka.sasl_mechanism,
    )


@dataclass
class DriftlineApp:
    """A Faust app plus the runtime pieces the agents use."""

    app: BatchApp
    settings: Settings
    metrics: WorkerMetrics
    pipelines: dict[str, SourcePipeline]
    web: WebService | None
    health: WorkerHealth = field(default_factory=WorkerHealth)
    assigned: set[Any] = field(default_factory=set)


#: How often the worker PINGs Redis for its probes, and how long a PING may take.
REDIS_PROBE_EVERY_S = 2.0
REDIS_PROBE_TIMEOUT_S = 1.0


async def _fail_loudly(
    app: BatchApp, health: WorkerHealth, metrics: WorkerMetrics, what: str, exc: BaseException
) -> None:
    """Record a permanent failure (readiness 503, driftline_worker_failed 1) and stop the worker.

    Nothing of the failed batch was acknowledged, so the partition's next
    owner (or this worker, restarted by its supervisor) starts again from it.
    """
    health.fail(f"{what}: {type(exc).__name__}: {exc}"[:300])
    metrics.failed.set(1)
    metrics.ready.set(0)
    log.critical(
        "%s failed with a permanent error; the worker stops so its supervisor restarts it "
        "(nothing of the failed batch was acknowledged): %s: %s",
        what,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    await app.crash(exc)


def _make_agent(
    app: BatchApp,
    pipeline: SourcePipeline,
    health: WorkerHealth,
    metrics: WorkerMetrics,
    in_flight: int = 2,
) -> Callable[[StreamT[RecordBatch]], Coroutine[Any, Any, None]]:
    """The agent of one source: up to ``in_flight`` batches in work at once.

    They are of different partitions (a partition's batches run one after the
    other, in order) and their effects are written one batch at a time
    (:meth:`SourcePipeline.process`), so this only lets the next batch's CPU
    work (decode, validate, aggregate) run while the previous one waits on the
    broker and Redis.  Each batch is acknowledged once its effects are durable.
    """

    async def ingest(stream: StreamT[RecordBatch]) -> None:
        slots = asyncio.Semaphore(in_flight)
        newest: dict[int, asyncio.Task[bool]] = {}  # partition -> its newest batch's task
        failed = False

        async def run(batch: RecordBatch, before: asyncio.Task[bool] | None) -> bool:
            nonlocal failed
            try:
                if before is not None and not await before:
                    return False  # the batch before it failed: the worker is stopping
                try:
                    await pipeline.process(batch.records)
                except Exception as exc:  # EffectFailed, or a bug: never spin, never go quiet
                    failed = True
                    await _fail_loudly(app, health, metrics, f"source {pipeline.source}", exc)
                    return False
                if not app.ack_batch(batch):
                    log.info(
                        "partition %s/%d moved during a batch; its new owner replays it",
                        batch.tp.topic,
                        batch.tp.partition,
                    )
                return True
            finally:
                slots.release()

        try:
            async for batch in stream:
                await slots.acquire()
                if failed:
                    slots.release()
                    return
                partition = batch.tp.partition
                newest[partition] = asyncio.ensure_future(run(batch, newest.get(partition)))
                for p in [p for p, t in newest.items() if t.done()]:
                    del newest[p]
            await asyncio.gather(*newest.values())  # the stream ended: finish what is in work
        finally:
            # stopping (or a rebalance restarting the agent): nothing in flight was
            # acknowledged, so cancelling it only means its records are read again
            pending = [t for t in newest.values() if not t.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    ingest.__name__ = f"ingest_{pipeline.source.replace('-', '_').replace('.', '_')}"
    return ingest


class _ValuesAcks:
    """Values-topic batches, acknowledged once none of their values waits for event-time order.

    A value the runner holds back (:meth:`MonitorRunner.committable`) is only
    in memory: its record must stay uncommitted, so a crash reads it again.
    """

    def __init__(self, app: BatchApp, runner: MonitorRunner) -> None:
        self.app = app
        self.runner = runner
        self.held: dict[int, deque[RecordBatch]] = {}

    def hold(self, batch: RecordBatch) -> None:
        self.held.setdefault(batch.tp.partition, deque()).append(batch)
        self.release()

    def release(self) -> None:
        for partition, batches in self.held.items():
            waiting = self.runner.committable(partition)
            while batches:
                records = batches[0].records
                if waiting is not None and records and records[-1].offset >= waiting:
                    break
                self.app.ack_batch(batches.popleft())


def _make_monitor_agent(
    app: BatchApp, runner: MonitorRunner, acks: _ValuesAcks, health: WorkerHealth,
    metrics: WorkerMetrics,
) -> Callable[[StreamT[RecordBatch]], Coroutine[Any, Any, None]]:  # fmt: skip
    async def monitor(stream: StreamT[RecordBatch]) -> None:
        async for batch in stream:
            try:
                await runner.process(batch.records)
            except Exception as exc:
                await _fail_loudly(app, health, metrics, "drift monitors", exc)
                return
            acks.hold(batch)

    return monitor


def create_app(
    settings: Settings,
    *,
    sources: Sources | None = None,
    metrics: WorkerMetrics | None = None,
) -> DriftlineApp:
    """Build the worker's Faust app from settings.  Raises ``SchemaError`` on bad contracts.

    ``sources`` is what :func:`~driftline.streams.sources.build_sources` compiled
    from the same settings (built here when not given).
    """
    if sources is None:
        sources = build_sources(settings, "config")
    parsers, groups, monitors = sources.parsers, sources.groups, sources.monitors
    quality = sources.quality
    metrics = metrics or WorkerMetrics([s.name for s in settings.sources])
    metrics.build.info({"version": VERSION, "faust": faust.__version__})
    kafka = settings.kafka
    worker = settings.worker
    data_dir = worker.data_dir or Path(tempfile.gettempdir()) / f"driftline-{settings.app_id}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    except OSError as exc:
        raise ConfigError(
            f"worker.data_dir {data_dir}: cannot create it ({exc.strerror or exc})"
        ) from None
    app = BatchApp(
        settings.app_id,
        broker=[f"kafka://{host.strip()}" for host in kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(kafka),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(data_dir),
        web_enabled=settings.metrics.port != 0,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset=kafka.auto_offset_reset,
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        broker_rebalance_timeout=kafka.rebalance_timeout_s,
        broker_commit_interval=kafka.commit_interval_s,
        broker_max_poll_records=worker.batch_max_events,
        producer_acks=-1,
        producer_max_request_size=kafka.max_request_size,
        worker_redirect_stdouts=False,
    )

    health = WorkerHealth(stall_after_s=worker.stall_after_s)
    metrics.watch_health(health.tracker.pending, health.fetch_age)
    app.on_fetch = health.fetched
    redis_cfg = settings.redis
    client = redis_client(settings)
    store = feature_store(settings, client)

    async def send(
        topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> Any:
        return await app.producer.send(topic, key, value, None, None, list(headers))

    pipelines: dict[str, SourcePipeline] = {}
    for source in settings.sources:
        pipeline = SourcePipeline(
            source=source.name,
            dead_letter_topic=source.dlq_topic,
            parser=parsers[source.name],
            dead_letters=BufferedKafkaSink(
                send,
                shrink=shrink_dead_letter,
                on_shrink=metrics.dead_letters_truncated.labels(source=source.name).inc,
            ),
            store=store,
            groups=groups.get(source.name, ()),
            monitors=monitors.get(source.name, ()),
            values_topic=settings.values_topic,
            allowed_lateness_ms=source.allowed_lateness_ms,
            future_tolerance_ms=source.future_tolerance_ms,
            quality=quality[source.name],
            metrics=metrics,
            backoff=Backoff(worker.retry_backoff_initial_s, worker.retry_backoff_max_s),
            dead_letter_max_bytes=kafka.max_request_size,
            tracker=health.tracker,
            max_keys_per_write=worker.max_entities_per_write,
        )
        pipelines[source.name] = pipeline
        channel = app.batch_channel(source.topic)
        app.agent(channel, name=f"driftline.ingest.{source.name}")(
            _make_agent(app, pipeline, health, metrics, settings.worker.batches_in_flight)
        )

    all_monitors = {m.name: m for ms in monitors.values() for m in ms}
    runner: MonitorRunner | None = None
    if all_monitors:
        runner = MonitorRunner(
            monitors=all_monitors,
            store=RedisMonitorStore(client, prefix=redis_cfg.key_prefix),
            alerts=BufferedKafkaSink(send),
            alerts_topic=settings.drift.alerts_topic,
            metrics=metrics,
            backoff=Backoff(worker.retry_backoff_initial_s, worker.retry_backoff_max_s),
            tracker=health.tracker,
            order_idle_after_s=settings.drift.order_idle_after_s,
            order_max_buffered=settings.drift.order_max_buffered,
        )
        values = app.batch_channel(settings.values_topic)
        acks = _ValuesAcks(app, runner)
        app.agent(values, name="driftline.monitors")(
            _make_monitor_agent(app, runner, acks, health, metrics)
        )
        ticking = runner

        @app.timer(1.0)  # type: ignore[untyped-decorator]
        async def _release_waiting_values() -> None:
            # values held for event-time order whose wait ended (a partition went idle)
            try:
                await ticking.tick()
            except Exception as exc:
                await _fail_loudly(app, health, metrics, "drift monitors", exc)
                return
            acks.release()

    app.lag_gauge = metrics.consumer_lag
    app.fetch_max_wait_ms = int(kafka.fetch_max_wait_s * 1000)
    holder = DriftlineApp(
        app=app, settings=settings, metrics=metrics, pipelines=pipelines, web=None, health=health
    )
    source_topics = {s.topic for s in settings.sources}
    by_topic = {s.topic: pipelines[s.name] for s in settings.sources}

    adopting: set[asyncio.Future[None]] = set()

    async def _adopt(tp: Any) -> None:
        try:
            await by_topic[tp.topic].adopt(tp.partition, lambda: tp in holder.assigned)
        except Exception as exc:
            await _fail_loudly(app, health, metrics, f"partition {tp.topic}/{tp.partition}", exc)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        previous = holder.assigned
        holder.assigned = {tp for tp in assigned if tp.topic in source_topics}
        # What moved to other workers stops being exported here: a gauge left
        # behind (a lag, an open drift incident) would be read as current.
        for tp in previous - holder.assigned:
            pipeline = by_topic[tp.topic]
            pipeline.release(tp.partition)
            metrics.forget_partition(tp.topic, pipeline.source, tp.partition)
        for tp in holder.assigned - previous:
            task = asyncio.ensure_future(_adopt(tp))
            adopting.add(task)
            task.add_done_callback(adopting.discard)
        if runner is not None:
            runner.keep_partitions(
                {tp.partition for tp in assigned if tp.topic == settings.values_topic}
            )
        metrics.assigned_partitions.set(len(holder.assigned))
        health.assigned_partitions = len(holder.assigned)
        metrics.rebalances.inc()
        log.info(
            "assigned partitions: %s",
            sorted(f"{tp.topic}/{tp.partition}" for tp in holder.assigned),
        )

    async def readiness() -> tuple[bool, dict[str, Any]]:
        """Instant: reads what the worker knows, calls nothing.

        See :mod:`driftline.streams.worker.health`.
        """
        ready, details = health.verdict()
        metrics.ready.set(1 if ready else 0)
        return ready, details

    @app.task  # type: ignore[untyped-decorator]
    async def _probe_redis() -> None:
        while not app.should_stop:
            await health.probe_redis(client.ping, REDIS_PROBE_TIMEOUT_S)
            await readiness()
            await asyncio.sleep(REDIS_PROBE_EVERY_S)

    if settings.metrics.port != 0:
        token = settings.metrics.token.get_secret_value() if settings.metrics.token else None
        try:
            sock = bind_socket(settings.metrics.host, settings.metrics.port)
        except OSError as exc:
            raise ConfigError(
                f"metrics.port: cannot listen on {settings.metrics.host}:{settings.metrics.port}: "
                f"{exc.strerror or exc} (another worker on this port? "
                "set DRIFTLINE_METRICS__PORT, or 0 to disable)"
            ) from None

        async def send_accept(name: str, segment: str | None, who: str) -> int:
            request = AcceptRequest(name, segment, int(time.time() * 1000), who)
            key, value = accept_doc(request)
            metadata = await (await send(settings.values_topic, key, value, ()))
            return int(metadata.offset)

        holder.web = WebService(
            sock=sock,
            metrics=metrics,
            readiness=readiness,
            token=token,
            monitors=all_monitors,
            accept=send_accept,
        )
        app.web_server(holder.web)

    @app.task  # type: ignore[untyped-decorator]
    async def _mark_up() -> None:
        metrics.up.set(1)

    return holder


__all__ = ["DriftlineApp", "SchemaError", "broker_credentials", "create_app"]
