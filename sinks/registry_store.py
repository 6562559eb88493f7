"""Reading the feature registry from Redis: the hashes ``{prefix}:registry:{group}``.

The records' model is pure (:mod:`driftline.features.registry`); this is the I/O,
shared by ``driftline serve``, ``driftline registry`` and
:class:`driftline.FeatureClient`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import redis.asyncio as aioredis

from driftline.features.registry import DeployedVersion, parse_records
from driftline.sinks.feature_store import registry_key


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def read_deployed(
    client: aioredis.Redis, prefix: str, names: Iterable[str] = (), *, scan: bool = True
) -> tuple[list[DeployedVersion], list[str]]:
    """Every version recorded under ``prefix``: of ``names``, and of other groups when ``scan``.

    Groups removed from the config are only found by a ``SCAN`` of the whole
    keyspace (no index of group names is kept), ``COUNT 1000`` per call so
    Redis is never blocked for long; the HGETALLs then go in one pipeline.
    """
    wanted = dict.fromkeys(names)
    if scan:
        head = registry_key(prefix, "")
        async for key in client.scan_iter(match=_glob_escape(head) + "*", count=1000, _type="HASH"):
            text = key.decode() if isinstance(key, bytes) else key
            wanted.setdefault(text[len(head) :])
    if not wanted:
        return [], []
    async with client.pipeline(transaction=False) as pipe:
        for name in wanted:
            pipe.hgetall(registry_key(prefix, name))
        raw = await pipe.execute()
    out: list[DeployedVersion] = []
    problems: list[str] = []
    for name, fields in zip(wanted, raw, strict=True):
        found, bad = parse_records(name, fields or {})
        out += found
        problems += bad
    return out, problems
