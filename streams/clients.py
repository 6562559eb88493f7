"""Clients built from settings, for every command (no Faust: cheap to import)."""

from __future__ import annotations

from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import RedisClient, connect_redis
from driftline.streams.settings import Settings


def redis_client(settings: Settings) -> RedisClient:
    """The asyncio Redis client of ``settings.redis`` (URL, ACL user, password, TLS, cluster)."""
    redis_cfg = settings.redis
    return connect_redis(
        redis_cfg.url,
        username=redis_cfg.username,
        password=redis_cfg.password.get_secret_value() if redis_cfg.password else None,
        ssl_cafile=str(redis_cfg.ssl_cafile) if redis_cfg.ssl_cafile else None,
        socket_timeout_s=redis_cfg.socket_timeout_s,
        cluster=redis_cfg.cluster,
    )


def feature_store(settings: Settings, client: RedisClient) -> RedisFeatureStore:
    """The online store as ``settings.redis`` lays it out (key prefix, shards)."""
    redis_cfg = settings.redis
    return RedisFeatureStore(client, prefix=redis_cfg.key_prefix, shards=redis_cfg.store_shards)
