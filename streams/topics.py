"""Create source and dead-letter topics when asked to (``kafka.create_topics``).

Production clusters usually manage topics elsewhere, so this is off by default
and on in ``driftline dev``.  Topics are created with explicit configs: some
brokers (the embedded Tansu) report only the configs given at creation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.errors import DriftlineError

log = logging.getLogger(__name__)

DEFAULT_TOPIC_CONFIGS = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}


async def ensure_topics(
    kafka_kwargs: Mapping[str, Any],
    topics: Mapping[str, int],
    *,
    configs: Mapping[str, str] | None = None,
    attempts: int = 10,
) -> None:
    """Create missing ``topics`` (name -> partitions); retries while the broker starts."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        admin = AIOKafkaAdminClient(**kafka_kwargs, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(name, partitions, 1, topic_configs=dict(configs or DEFAULT_TOPIC_CONFIGS))
                for name, partitions in topics.items()
                if name not in existing
            ]
            for topic in missing:
                try:
                    await admin.create_topics([topic])
                    log.info("created topic %s (%d partitions)", topic.name, topic.num_partitions)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaConnectionError as exc:
            if attempt == attempts:
                raise DriftlineError(
                    f"cannot reach Kafka at {kafka_kwargs.get('bootstrap_servers')}: {exc}"
                ) from None
            log.warning("Kafka not reachable yet (%s); retrying in %.1fs", exc, delay)
        finally:
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
