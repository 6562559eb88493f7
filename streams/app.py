"""The Faust app, built by a factory from :class:`~streams.settings.Settings`.

There is no module-level app: ``create_app(settings)`` builds one with its
broker, credentials and agents, so tests and several configs can coexist in
one process.  Agents are thin: they gather a batch with ``take_events`` (which
acknowledges the events only after the loop body returns, i.e. after
:meth:`SourcePipeline.process` made the batch's effects durable) and hand it
to the pipeline.  Faust commits acknowledged offsets every
``kafka.commit_interval_s`` and on rebalance.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import EventT, StreamT

from schemas import EventParser, SchemaError
from sinks.deadletter import KafkaDeadLetterSink
from sinks.metrics import WorkerMetrics
from sinks.redis_store import RedisLatestStore, connect_redis
from streams.errors import ConfigError
from streams.pipeline import Backoff, RawRecord, SourcePipeline
from streams.settings import KafkaSettings, Settings
from streams.sources import build_parsers
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

    app: faust.App
    settings: Settings
    metrics: WorkerMetrics
    pipelines: dict[str, SourcePipeline]
    web: WebService | None
    assigned: set[Any] = field(default_factory=set)


def _to_records(events: Sequence[EventT[Any]]) -> list[RawRecord]:
    records = []
    for event in events:
        m = event.message
        raw_headers = m.headers
        headers: Sequence[tuple[str, bytes]] = (
            list(raw_headers.items())
            if isinstance(raw_headers, Mapping)
            else list(cast(Sequence[tuple[str, bytes]], raw_headers or ()))
        )
        records.append(
            RawRecord(
                m.topic,
                m.partition,
                m.offset,
                int(m.timestamp * 1000),
                m.key,
                m.value,
                headers,
            )
        )
    return records


def _make_agent(
    pipeline: SourcePipeline, max_events: int, max_wait_s: float
) -> Callable[[StreamT[bytes]], Coroutine[Any, Any, None]]:
    async def ingest(stream: StreamT[bytes]) -> None:
        # take_events is in faust-streaming's Stream but missing from its StreamT protocol.
        batches: AsyncIterator[Sequence[EventT[Any]]] = stream.take_events(  # type: ignore[attr-defined]
            max_events, within=max_wait_s
        )
        async for events in batches:
            await pipeline.process(_to_records(events))

    ingest.__name__ = f"ingest_{pipeline.source.replace('-', '_').replace('.', '_')}"
    return ingest


def create_app(
    settings: Settings,
    *,
    parsers: dict[str, EventParser] | None = None,
    metrics: WorkerMetrics | None = None,
) -> DriftlineApp:
    """Build the worker's Faust app from settings.  Raises ``SchemaError`` on bad contracts."""
    parsers = parsers if parsers is not None else build_parsers(settings)
    metrics = metrics or WorkerMetrics([s.name for s in settings.sources])
    metrics.build.info({"version": VERSION, "faust": faust.__version__})
    kafka = settings.kafka
    worker = settings.worker
    data_dir = worker.data_dir or Path(tempfile.gettempdir()) / f"driftline-{settings.app_id}"
    app = faust.App(
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
        broker_max_poll_records=max(worker.batch_max_events, 500),
        stream_buffer_maxsize=max(worker.batch_max_events, 4096),
        producer_acks=-1,
        worker_redirect_stdouts=False,
    )

    redis_cfg = settings.redis
    client = connect_redis(
        redis_cfg.url,
        username=redis_cfg.username,
        password=redis_cfg.password.get_secret_value() if redis_cfg.password else None,
        ssl_cafile=str(redis_cfg.ssl_cafile) if redis_cfg.ssl_cafile else None,
        socket_timeout_s=redis_cfg.socket_timeout_s,
    )
    store = RedisLatestStore(client, prefix=redis_cfg.key_prefix, ttl_s=redis_cfg.latest_ttl_s)

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
            dead_letters=KafkaDeadLetterSink(send),
            store=store,
            metrics=metrics,
            backoff=Backoff(worker.retry_backoff_initial_s, worker.retry_backoff_max_s),
        )
        pipelines[source.name] = pipeline
        topic = app.topic(source.topic, key_type=bytes, value_type=bytes, acks=True)
        app.agent(topic, name=f"driftline.ingest.{source.name}")(
            _make_agent(pipeline, worker.batch_max_events, worker.batch_max_wait_s)
        )

    holder = DriftlineApp(
        app=app, settings=settings, metrics=metrics, pipelines=pipelines, web=None
    )
    source_topics = {s.topic for s in settings.sources}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        holder.assigned = {tp for tp in assigned if tp.topic in source_topics}
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
