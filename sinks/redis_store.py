"""Redis online store: the newest valid event of every entity, per source.

Key layout (documented in the README)::

    {prefix}:{source}:latest:{entity}   hash
        _event_time_ms   event time of the newest event seen (epoch ms)
        _ingested_ms     wall time it was written
        <field>          every top-level field of that event: strings as they
                         are, numbers as their JSON text, other values as JSON

Writes are idempotent, so Kafka's at-least-once redelivery after a crash or
rebalance cannot corrupt the store: a Lua script replaces the hash only when
the incoming event is at least as new (by event time) as the stored one, and
refreshes the TTL.  A batch is reduced to one update per entity in Python and
sent in one pipeline, so Redis sees one round trip per batch, not per event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas import ParsedEvent

_REPLACE_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], '_event_time_ms')
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_event_time_ms', ARGV[1], unpack(ARGV, 3))
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""


def latest_key(prefix: str, source: str, entity: str) -> str:
    return f"{prefix}:{source}:latest:{entity}"


def _field_value(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def newest_per_entity(events: Iterable[ParsedEvent]) -> dict[str, ParsedEvent]:
    """Reduce a batch to the newest event of each entity (later offset wins ties)."""
    newest: dict[str, ParsedEvent] = {}
    for event in events:
        current = newest.get(event.entity)
        if current is None or event.event_time_ms >= current.event_time_ms:
            newest[event.entity] = event
    return newest


class LatestStore(Protocol):
    async def write_latest(self, source: str, events: Sequence[ParsedEvent]) -> int: ...


class RedisLatestStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_s * 1000
        self._script = client.register_script(_REPLACE_IF_NEWER)

    async def write_latest(self, source: str, events: Sequence[ParsedEvent]) -> int:
        """Apply a batch; returns how many entity hashes were replaced."""
        newest = newest_per_entity(events)
        if not newest:
            return 0
        now = str(int(time.time() * 1000)).encode()
        async with self.client.pipeline(transaction=False) as pipe:
            for entity, event in newest.items():
                args: list[bytes | str | int] = [
                    event.event_time_ms,
                    self.ttl_ms,
                    b"_ingested_ms",
                    now,
                ]
                for name, value in event.data.items():
                    args.append(name)
                    args.append(_field_value(value))
                await self._script(
                    keys=[latest_key(self.prefix, source, entity)], args=args, client=pipe
                )
            results = await pipe.execute()
        return sum(1 for r in results if r == 1)

    async def read_latest(self, source: str, entity: str) -> dict[str, str]:
        raw = await self.client.hgetall(latest_key(self.prefix, source, entity))
        return {_text(k): _text(v) for k, v in raw.items()}


def connect_redis(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl_cafile: str | None = None,
    socket_timeout_s: float = 5.0,
) -> aioredis.Redis:
    """An asyncio Redis client that retries connection errors with exponential backoff."""
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
    return aioredis.Redis.from_url(url, **kwargs)
