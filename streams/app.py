"""The Faust app, built by a factory from :class:`~streams.settings.Settings`.

There is no module-level app: ``create_app(settings)`` builds one with its
broker, credentials and agents, so tests and several configs can coexist in
one process.  Agents are thin: each receives whole partition batches from
the consumer (:mod:`streams.transport`), hands them to
:meth:`SourcePipeline.process`, and acknowledges the batch only once that
returned, i.e. once its effects are durable.  Faust commits acknowledged
offsets every ``kafka.commit_interval_s`` and on rebalance.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.types import StreamT

from drift import MonitorConfig
from drift.quality import QualityChecker
from features.definitions import FeatureGroup
from schemas import EventParser, SchemaError
from sinks.feature_store import RedisFeatureStore
from sinks.kafka_sink import BufferedKafkaSink
from sinks.metrics import WorkerMetrics
from sinks.monitor_store import RedisMonitorStore
from streams.clients import redis_client
from streams.errors import ConfigError
from streams.monitors import MonitorRunner
from streams.pipeline import SourcePipeline
from streams.retry import Backoff
from streams.settings import KafkaSettings, Settings
from streams.sources import build_feature_groups, build_monitors, build_parsers, build_quality
from streams.transport import App as BatchApp
from streams.transport import RecordBatch
from streams.web import WebService, bind_socket

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
    assigned: set[Any] = field(default_factory=set)


def _make_agent(
    app: BatchApp, pipeline: SourcePipeline
) -> Callable[[StreamT[RecordBatch]], Coroutine[Any, Any, None]]:
    async def ingest(stream: StreamT[RecordBatch]) -> None:
        async for batch in stream:
            await pipeline.process(batch.records)
            if not app.ack_batch(batch):
                log.info(
                    "partition %s/%d moved during a batch; its new owner replays it",
                    batch.tp.topic,
                    batch.tp.partition,
                )

    ingest.__name__ = f"ingest_{pipeline.source.replace('-', '_').replace('.', '_')}"
    return ingest


def _make_monitor_agent(
    app: BatchApp, runner: MonitorRunner
) -> Callable[[StreamT[RecordBatch]], Coroutine[Any, Any, None]]:
    async def monitor(stream: StreamT[RecordBatch]) -> None:
        async for batch in stream:
            await runner.process(batch.records)
            app.ack_batch(batch)

    return monitor


def create_app(
    settings: Settings,
    *,
    parsers: dict[str, EventParser] | None = None,
    groups: dict[str, tuple[FeatureGroup, ...]] | None = None,
    monitors: dict[str, tuple[MonitorConfig, ...]] | None = None,
    quality: dict[str, QualityChecker] | None = None,
    metrics: WorkerMetrics | None = None,
) -> DriftlineApp:
    """Build the worker's Faust app from settings.  Raises ``SchemaError`` on bad contracts."""
    parsers = parsers if parsers is not None else build_parsers(settings)
    if groups is None:
        groups = build_feature_groups(settings, parsers, "config")
    if monitors is None:
        monitors = build_monitors(settings, parsers, "config", groups)
    if quality is None:
        quality = build_quality(settings, parsers, "config")
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
        worker_redirect_stdouts=False,
    )

    redis_cfg = settings.redis
    client = redis_client(settings)
    store = RedisFeatureStore(client, prefix=redis_cfg.key_prefix)

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
            dead_letters=BufferedKafkaSink(send),
            store=store,
            groups=groups.get(source.name, ()),
            monitors=monitors.get(source.name, ()),
            values_topic=settings.values_topic,
            allowed_lateness_ms=source.allowed_lateness_ms,
            future_tolerance_ms=source.future_tolerance_ms,
            quality=quality[source.name],
            metrics=metrics,
            backoff=Backoff(worker.retry_backoff_initial_s, worker.retry_backoff_max_s),
        )
        pipelines[source.name] = pipeline
        channel = app.batch_channel(source.topic)
        app.agent(channel, name=f"driftline.ingest.{source.name}")(_make_agent(app, pipeline))

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
        )
        values = app.batch_channel(settings.values_topic)
        app.agent(values, name="driftline.monitors")(_make_monitor_agent(app, runner))

    app.lag_gauge = metrics.consumer_lag
    app.fetch_max_wait_ms = int(kafka.fetch_max_wait_s * 1000)
    holder = DriftlineApp(
        app=app, settings=settings, metrics=metrics, pipelines=pipelines, web=None
    )
    source_topics = {s.topic for s in settings.sources}
    by_topic = {s.topic: pipelines[s.name] for s in settings.sources}

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
        if runner is not None:
            runner.keep_partitions(
                {tp.partition for tp in assigned if tp.topic == settings.values_topic}
            )
        metrics.assigned_partitions.set(len(holder.assigned))
        metrics.rebalances.inc()
        log.info(
            "assigned partitions: %s",
            sorted(f"{tp.topic}/{tp.partition}" for tp in holder.assigned),
        )

    async def readiness() -> tuple[bool, dict[str, Any]]:
        try:
            redis_ok = bool(await client.ping())
        except Exception as exc:  # any failure means not ready
            log.debug("readiness: redis ping failed: %s", exc)
            redis_ok = False
        has_partitions = bool(holder.assigned)
        metrics.ready.set(1 if redis_ok and has_partitions else 0)
        return redis_ok and has_partitions, {
            "redis": redis_ok,
            "assigned_partitions": len(holder.assigned),
        }

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
        holder.web = WebService(
            sock=sock,
            metrics=metrics,
            readiness=readiness,
            token=token,
        )
        app.web_server(holder.web)

    @app.task  # type: ignore[untyped-decorator]
    async def _mark_up() -> None:
        metrics.up.set(1)

    return holder


__all__ = ["DriftlineApp", "SchemaError", "broker_credentials", "create_app"]
