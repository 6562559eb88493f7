"""The asyncio Redis client every Redis adapter uses: timeouts, retries, TLS, AUTH, Cluster."""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: What the adapters take: one Redis (or a primary), or a Redis Cluster client.
RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster

#: What a call of either client raises when Redis fails it: its errors (a cluster
#: client's own, such as a slot no node serves, are not RedisErrors) and the socket's.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


def connect_redis(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl_cafile: str | None = None,
    socket_timeout_s: float = 5.0,
    cluster: bool = False,
) -> RedisClient:
    """An asyncio Redis client that retries connection errors with exponential backoff.

    Commands are retried a few times inside redis-py; beyond that the caller's
    own backoff (the worker's batch retry loop) takes over.  ``cluster``: a
    Redis Cluster client that learns the cluster's slots from the node at
    ``url`` and follows MOVED/ASK redirections and failovers.
    """
    kwargs: dict[str, Any] = {
        "username": username,
        "password": password,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
    }
    if url.startswith("rediss://") and ssl_cafile:
        kwargs["ssl_ca_certs"] = ssl_cafile
    if cluster:
        return aioredis.RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)
