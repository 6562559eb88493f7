"""Run the Faust worker for a :class:`Settings` (what ``driftline worker`` does)."""

from __future__ import annotations

import asyncio
import logging
import logging.config

import faust

from schemas import EventParser
from streams.app import create_app
from streams.logs import logging_config
from streams.settings import Settings
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def run_worker(settings: Settings, parsers: dict[str, EventParser] | None = None) -> None:
    """Build the app and run it until SIGTERM/SIGINT; returns after a graceful stop."""
    config = logging_config(settings.worker.log_level, settings.worker.log_format)
    logging.config.dictConfig(config)
    driftline = create_app(settings, parsers=parsers)
    if settings.kafka.create_topics:
        topics: dict[str, int] = {}
        for source in settings.sources:
            topics[source.topic] = settings.kafka.topic_partitions
            topics[source.dlq_topic] = settings.kafka.topic_partitions
        asyncio.run(ensure_topics(settings.kafka.aiokafka_kwargs(), topics))
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
    worker.execute_from_commandline()
