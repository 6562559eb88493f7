"""Run the Faust worker for a :class:`Settings` (what ``driftline worker`` does)."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import time
from collections.abc import Mapping

import faust

from driftline.errors import redact
from driftline.features.definitions import FeatureGroup
from driftline.schemas import EventParser
from driftline.sinks.feature_store import FeatureVersionConflict, LayoutConflict
from driftline.streams.clients import feature_store, redis_client
from driftline.streams.errors import ConfigError, DriftlineError
from driftline.streams.logs import logging_config
from driftline.streams.processes import freeze_startup
from driftline.streams.settings import Settings
from driftline.streams.sources import Sources, source_info
from driftline.streams.topics import ensure_topics, topics_for, wait_for_broker
from driftline.streams.worker.app import create_app
from driftline.streams.worker.offsets import ahead_message, run_check

log = logging.getLogger(__name__)


async def register_feature_groups(
    settings: Settings,
    groups: list[FeatureGroup],
    parsers: Mapping[str, EventParser] | None = None,
) -> None:
    """Record each group version in Redis; refuse a changed definition under an old version.

    The store's shard count is recorded (or checked against the recorded one) first.

    Waits for Redis up to ``redis.startup_timeout_s`` (a worker may start
    before its Redis), then gives up with a clear message.
    """
    if not groups:
        return
    sources = source_info(settings, parsers) if parsers is not None else {}
    client = redis_client(settings)
    store = feature_store(settings, client)
    deadline = time.monotonic() + settings.redis.startup_timeout_s
    delay = 0.5
    try:
        while True:
            try:
                await store.check_layout()
                for group in groups:
                    src = sources.get(group.source)
                    await store.register(group, src.lineage_record() if src else None)
                return
            except (FeatureVersionConflict, LayoutConflict) as exc:
                raise ConfigError(str(exc)) from None
            except Exception as exc:  # connection refused, timeout, auth
                if time.monotonic() > deadline:
                    raise DriftlineError(
                        f"cannot reach Redis at {redact(settings.redis.url)} after "
                        f"{settings.redis.startup_timeout_s:.0f}s: {type(exc).__name__}: {exc}"
                    ) from None
                log.warning("Redis not reachable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        await client.aclose()


#: gc thresholds of the worker (CPython's default: 700, 10, 10).  A batch makes a
#: few tracked objects per event (its dict, its tuple) that live until the batch is
#: durable; with 700 the young generation is collected ~50 times per batch of
#: 7,500 events and every survivor is scanned again in the older ones.
GC_THRESHOLDS = (50_000, 20, 20)


def run_worker(settings: Settings, sources: Sources, *, origin: str = "") -> None:
    """Build the app and run it until SIGTERM/SIGINT; returns after a graceful stop.

    The broker is checked after the app is built (a bad data dir or a busy
    metrics port is said first) and before Faust starts, which would answer an
    absent broker with a long traceback.  *origin* (the config file) prefixes
    that message.
    """
    config = logging_config(settings.worker.log_level, settings.worker.log_format)
    logging.config.dictConfig(config)
    driftline = create_app(settings, sources=sources)
    asyncio.run(
        wait_for_broker(
            settings.kafka.aiokafka_kwargs(),
            timeout_s=settings.kafka.startup_timeout_s,
            origin=origin,
        )
    )
    asyncio.run(register_feature_groups(settings, sources.all_groups(), sources.parsers))
    if settings.kafka.create_topics:
        asyncio.run(ensure_topics(settings.kafka.aiokafka_kwargs(), topics_for(settings)))
    ahead = run_check(settings)
    if ahead:
        raise ConfigError(ahead_message(ahead, origin))
    log.info(
        "driftline worker starting: group %s, sources %s, broker %s",
        settings.app_id,
        ", ".join(f"{s.name}<-{s.topic}" for s in settings.sources),
        settings.kafka.bootstrap_servers,
    )
    worker = faust.Worker(
        driftline.app,
        loglevel=settings.worker.log_level,
        logging_config=config,
        quiet=True,
        redirect_stdouts=False,
    )
    freeze_startup(GC_THRESHOLDS)
    worker.execute_from_commandline()
