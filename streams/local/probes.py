"""Readiness probes: a real protocol round trip, not a TCP connect.

A listener can accept before the protocol handler is up, so a server is ready
when it answers Kafka metadata (an ``AIOKafkaAdminClient`` round trip) or a
Redis ``PING``.  :func:`wait_for_kafka` and :func:`wait_for_redis` work for
any server (embedded, a container, an external one); redis and aiokafka are
imported lazily so that importing the local stack stays cheap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from driftline.streams.local.errors import EmbeddedError

__all__ = [
    "NotReady",
    "kafka_metadata",
    "redis_ping",
    "run_blocking",
    "wait_for_kafka",
    "wait_for_redis",
]

T = TypeVar("T")


def run_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    ``asyncio.run`` refuses to nest inside a running loop (an async test or the
    async CLI calling ``start()``), so in that case the coroutine runs on its own
    loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, "driftline-embedded-probe") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class NotReady(EmbeddedError):
    """A probe found the server not (yet) answering."""


async def kafka_metadata(
    bootstrap: str, request_timeout_s: float, kafka_kwargs: Mapping[str, Any] | None = None
) -> None:
    """One real Kafka round trip: bootstrap (ApiVersions + Metadata), then Metadata."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(request_timeout_s * 1000)),
        **dict(kafka_kwargs or {}),
    )
    try:
        async with asyncio.timeout(request_timeout_s):
            await admin.start()
            await admin.describe_cluster()
    except (TimeoutError, KafkaError, OSError) as exc:
        raise NotReady(f"{type(exc).__name__}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def wait_for_kafka(
    bootstrap: str, timeout: float = 30.0, kafka_kwargs: Mapping[str, Any] | None = None
) -> None:
    """Block until *bootstrap* answers Kafka metadata requests, or raise EmbeddedError.

    Works for any broker (embedded, container, external); a TCP connect alone is
    not proof, a listener can accept before the protocol handler is up.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            probe_s = min(5.0, max(remaining, 0.5))
            run_blocking(functools.partial(kafka_metadata, bootstrap, probe_s, kafka_kwargs))
            return
        except NotReady as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"Kafka at {bootstrap} not ready after {timeout:.0f}s: {last}")
        time.sleep(0.2)


def redis_ping(host: str, port: int, password: str | None) -> None:
    """One PING with redis-py; raise NotReady unless it answers PONG."""
    import redis

    client = redis.Redis(
        host=host,
        port=port,
        password=password,
        socket_connect_timeout=1.0,
        socket_timeout=1.0,
    )
    try:
        if not client.ping():
            raise NotReady("PING did not answer PONG")
    except redis.exceptions.RedisError as exc:
        raise NotReady(f"{type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def wait_for_redis(url: str, timeout: float = 30.0) -> None:
    """Block until the Redis at *url* answers PING, or raise EmbeddedError."""
    import redis

    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            if client.ping():
                return
        except redis.exceptions.RedisError as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"Redis at {url} not ready after {timeout:.0f}s: {last}")
        time.sleep(0.1)
