"""Clients built from settings, for every command (no Faust: cheap to import)."""

from __future__ import annotations

import redis.asyncio as aioredis

from driftline.sinks.redis_client import connect_redis
from driftline.streams.settings import Settings


def redis_client(settings: Settings) -> aioredis.Redis:
    """The asyncio Redis client for ``settings.redis`` (URL, ACL user, password, TLS CA)."""
    redis_cfg = settings.redis
    return connect_redis(
        redis_cfg.url,
        username=redis_cfg.username,
        password=redis_cfg.password.get_secret_value() if redis_cfg.password else None,
        ssl_cafile=str(redis_cfg.ssl_cafile) if redis_cfg.ssl_cafile else None,
        socket_timeout_s=redis_cfg.socket_timeout_s,
    )
