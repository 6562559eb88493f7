"""Topics and the broker at start-up: reaching it, listing and creating topics.

:func:`wait_for_broker` is the first thing ``driftline worker`` and
``driftline produce`` do: a broker that does not answer within
``kafka.startup_timeout_s`` is a clear one-paragraph error, not Faust's
traceback, and the topics it lists let ``produce`` refuse a misspelt topic
(which Tansu would otherwise create on the first send).

Production clusters usually manage topics elsewhere, so the worker creates
none by default; ``driftline dev`` does.  Topics are created with explicit
configs (:data:`DEFAULT_TOPIC_CONFIGS`): Tansu reports only the configs given
at creation, so leaving them implicit would make ``describe_configs`` disagree
between Tansu and Apache Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError, for_code

from driftline.streams.errors import DriftlineError

if TYPE_CHECKING:
    from driftline.streams.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TOPIC_CONFIGS: Mapping[str, str] = {"retention.ms": "604800000"}
_TOPIC_ALREADY_EXISTS = 36


class TopicError(DriftlineError):
    """Topics could not be created (the broker refused, or they never appeared)."""


class BrokerUnreachable(DriftlineError):
    """No broker of ``kafka.bootstrap_servers`` answered within the start-up timeout."""


async def wait_for_broker(
    kafka_kwargs: Mapping[str, Any], *, timeout_s: float, origin: str = ""
) -> frozenset[str]:
    """Connect and read the cluster metadata; the names of its topics.

    Tries again with backoff (0.5 s, 1 s, 2 s, then every 4 s), the last try
    at *timeout_s*, then raises :class:`BrokerUnreachable` naming the
    address and the key that sets it.  *kafka_kwargs* are
    :meth:`KafkaSettings.aiokafka_kwargs`, so TLS and SASL apply; the message
    holds no credential.  aiokafka's own connection errors are kept out of the
    terminal while waiting: the outcome is said once, here.
    """
    kwargs = dict(kafka_kwargs)
    bootstrap = str(kwargs.get("bootstrap_servers"))
    started = time.monotonic()
    deadline = started + timeout_s
    delay = 0.5
    attempts = 0
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        while True:
            attempts += 1
            remaining = max(deadline - time.monotonic(), 0.5)
            client = AIOKafkaClient(**kwargs, request_timeout_ms=int(min(remaining, 10.0) * 1000))
            try:
                await asyncio.wait_for(client.bootstrap(), timeout=remaining)
                return frozenset(client.cluster.topics())
            except (KafkaError, OSError, TimeoutError) as exc:
                reason = (
                    "no broker answered"
                    if isinstance(exc, KafkaConnectionError | TimeoutError)
                    else f"{type(exc).__name__}: {exc}"
                )
            finally:
                await client.close()
            wait = min(delay, deadline - time.monotonic())
            if wait <= 0:
                break
            log.warning(
                "Kafka at %s not reachable yet (%s); retrying in %.1fs", bootstrap, reason, wait
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, 4.0)
    finally:
        quiet.setLevel(level)
    raise BrokerUnreachable(
        f"{origin + ': ' if origin else ''}kafka.bootstrap_servers: cannot reach Kafka at "
        f"{bootstrap} ({reason}; {attempts} attempt{'s' if attempts > 1 else ''} over "
        f"{time.monotonic() - started:.0f}s). Start the broker or correct the address, in the "
        "config file or with DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS; kafka.startup_timeout_s "
        f"(now {timeout_s:g}s) sets how long to wait for it."
    )


def topics_for(settings: Settings) -> dict[str, int]:
    """Every topic a worker with ``settings`` reads or writes, with its partition count."""
    partitions = settings.kafka.topic_partitions
    topics: dict[str, int] = {}
    for source in settings.sources:
        topics[source.topic] = partitions
        topics[source.dlq_topic] = partitions
    if settings.monitors:
        topics[settings.values_topic] = settings.drift.values_partitions
        topics[settings.drift.alerts_topic] = partitions
    return topics


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Mapping[str, str] | None = None,
    kafka_kwargs: Mapping[str, Any] | None = None,
    *,
    wait_s: float = 30.0,
) -> list[str]:
    """Create *topics* (name -> partitions, replication factor 1).

    *configs* default to :data:`DEFAULT_TOPIC_CONFIGS`; pass ``{}`` for none.
    Topics that already exist are left alone.  *wait_s* bounds both the broker's
    creation timeout and the wait for metadata.  Returns the names actually
    created, after waiting until metadata lists all their partitions (Apache
    Kafka propagates new topics asynchronously; Tansu does so at once).
    """
    if not topics:
        return []
    topic_configs = dict(DEFAULT_TOPIC_CONFIGS if configs is None else configs)
    client_kwargs = {"bootstrap_servers": bootstrap, **dict(kafka_kwargs or {})}
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, n, 1, topic_configs=topic_configs) for name, n in topics.items()],
            timeout_ms=int(wait_s * 1000),
        )
        created: list[str] = []
        failures: list[str] = []
        for entry in response.topic_errors:
            name, code, message = entry[0], entry[1], entry[2] if len(entry) > 2 else None
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                failures.append(f"{name}: {for_code(code).__name__} ({message or code})")
        if failures:
            raise TopicError("could not create topics: " + "; ".join(failures))
        await _await_partitions(admin, {t: topics[t] for t in created}, wait_s)
        for name in created:
            log.info("created topic %s (%d partitions)", name, topics[name])
        return created
    finally:
        await admin.close()


async def _await_partitions(admin: Any, expected: Mapping[str, int], wait_s: float) -> None:
    """Poll metadata until every topic in *expected* shows its partition count."""
    if not expected:
        return
    deadline = time.monotonic() + wait_s
    while True:
        described = await admin.describe_topics(list(expected))
        seen = {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}
        missing = [t for t, n in expected.items() if seen.get(t, 0) < n]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TopicError(f"topics not visible in metadata after {wait_s:.0f}s: {missing}")
        await asyncio.sleep(0.1)


async def ensure_topics(
    kafka_kwargs: Mapping[str, Any],
    topics: Mapping[str, int],
    *,
    attempts: int = 10,
) -> list[str]:
    """:func:`create_topics`, retried with backoff while the broker is still starting."""
    settings = dict(kafka_kwargs)
    bootstrap = settings.pop("bootstrap_servers")
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return await create_topics(bootstrap, topics, kafka_kwargs=settings)
        except KafkaConnectionError as exc:
            if attempt == attempts:
                raise DriftlineError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
            log.warning("Kafka not reachable yet (%s); retrying in %.1fs", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    return []
