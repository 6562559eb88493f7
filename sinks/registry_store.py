"""Reading the feature registry from Redis: the hashes ``{prefix}:registry:{group}``.

The records' model is pure (:mod:`driftline.features.registry`); this is the I/O,
shared by ``driftline serve``, ``driftline registry`` and
:class:`driftline.FeatureClient`: :func:`read_deployed`; the ``active`` field
(the version serving reads) by :func:`read_active` and written by
:func:`activate` (``driftline registry activate``); and the same as a
store object (:class:`RedisRegistryStore`) with its in-memory double
(:class:`MemoryRegistryStore`) for unit tests of the readers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable

import orjson

from driftline.features.definitions import FeatureGroup
from driftline.features.registry import (
    ACTIVE_FIELD,
    DeployedVersion,
    parse_records,
    served_field,
    version_record,
)
from driftline.sinks.feature_store import registry_key
from driftline.sinks.redis_client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)

#: How long a reader (a ``driftline serve`` replica, ``FeatureClient``) reuses the
#: active version it read: an activation reaches every reader within this time.
ACTIVE_CACHE_S = 1.0


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def read_deployed(
    client: RedisClient, prefix: str, names: Iterable[str] = (), *, scan: bool = True
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


def _version(raw: bytes | str | None) -> int | None:
    """A version number as stored in the ``active`` field (``None``: absent or unreadable)."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text) if text.isdigit() and int(text) > 0 else None


async def read_active(client: RedisClient, prefix: str, group: str) -> int | None:
    """The version the registry's ``active`` field names (``None``: none activated)."""
    return _version(await client.hget(registry_key(prefix, group), ACTIVE_FIELD))


async def activate(
    client: RedisClient, prefix: str, group: str, version: int, served: int | None = None
) -> int | None:
    """Name ``version`` in the registry's ``active`` field; the version it named before.

    One ``MULTI``/``EXEC`` (``HGET`` then ``HSET`` of one key, so one slot on a
    cluster): the previous value returned is the one this write replaced.
    ``served``: the version served until now (the lowest configured one when
    none was activated); it and ``version`` are recorded as served
    (``v{N}:served_ms``, first time only): a served version the workers keep
    writing stays complete, so switching back to it needs no backfill.
    Whether the version may be activated is the caller's decision
    (``driftline registry activate``).
    """
    key = registry_key(prefix, group)
    now_ms = int(time.time() * 1000)
    async with client.pipeline(transaction=True) as pipe:
        pipe.hget(key, ACTIVE_FIELD)
        pipe.hset(key, ACTIVE_FIELD, str(version))
        for v in {version, served} - {None}:
            assert v is not None
            pipe.hsetnx(key, served_field(v), now_ms)
        previous, *_ = await pipe.execute()
    return _version(previous)


class ActiveVersions:
    """The registry's ``active`` field of each group, read at most every ``cache_s``.

    What serving does on every request that names no version, so it must cost
    (almost) nothing: a value read less than ``cache_s`` ago (counted from the
    start of its read) is reused, so an activation reaches every reader within
    ``cache_s``; concurrent callers share one read per group; a failed read
    falls back to the last value read (logged), and raises only when there is
    none (the caller answers 503).
    """

    def __init__(
        self,
        read: Callable[[str], Awaitable[int | None]],
        *,
        cache_s: float = ACTIVE_CACHE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.cache_s = cache_s
        self._monotonic = monotonic
        self._known: dict[str, tuple[float, int | None]] = {}
        self._reading: dict[str, asyncio.Future[int | None]] = {}
        self._warned_at = float("-inf")
        #: reads of Redis made (tests: one per group per cache period)
        self.reads = 0

    async def get(self, name: str) -> int | None:
        """The version ``name``'s ``active`` field names (``None``: none activated)."""
        known = self._known.get(name)
        if known is not None and self._monotonic() - known[0] < self.cache_s:
            return known[1]
        pending = self._reading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh(name))
            self._reading[name] = pending
            pending.add_done_callback(lambda _: self._reading.pop(name, None))
        # shielded: a caller that is cancelled (its client left) does not cancel the
        # read the others wait for
        return await asyncio.shield(pending)

    async def _refresh(self, name: str) -> int | None:
        started = self._monotonic()
        self.reads += 1
        try:
            value = await self._read(name)
        except REDIS_ERRORS as exc:
            known = self._known.get(name)
            if known is None:
                raise
            now = time.monotonic()
            if now - self._warned_at >= 10.0:
                log.warning(
                    "cannot read the active version of %s (%s: %s); using the last read (%s)",
                    name,
                    type(exc).__name__,
                    exc,
                    "none activated" if known[1] is None else f"v{known[1]}",
                )
                self._warned_at = now
            return known[1]
        self._known[name] = (started, value)
        return value


class RedisRegistryStore:
    """The registry under one key prefix, read from Redis (:func:`read_deployed`)."""

    def __init__(self, client: RedisClient, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def deployed(
        self, names: Iterable[str] = (), *, scan: bool = True
    ) -> tuple[list[DeployedVersion], list[str]]:
        """Every version recorded of ``names`` (and of other groups when ``scan``), and problems."""
        return await read_deployed(self.client, self.prefix, names, scan=scan)

    async def active(self, name: str) -> int | None:
        """The version the registry's ``active`` field names for group ``name``."""
        return await read_active(self.client, self.prefix, name)

    async def activate(self, name: str, version: int, served: int | None = None) -> int | None:
        """:func:`activate`: name ``version`` active; returns the version named before."""
        return await activate(self.client, self.prefix, name, version, served)


class MemoryRegistryStore:
    """In-memory double: the registry hashes as workers write them, parsed as Redis's are.

    :meth:`record` writes what :meth:`RedisFeatureStore.register
    <driftline.sinks.feature_store.RedisFeatureStore.register>` writes on a first
    deployment; :attr:`hashes` can be written directly (a corrupt field, a
    ``v{N}:last_write_ms``).  ``fail_next`` makes that many reads raise
    ``ConnectionError`` first.
    """

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes | str, bytes | str]] = {}
        self.fail_next = 0

    def record(self, group: FeatureGroup, now_ms: int | None = None) -> None:
        """Record ``group``'s version as a worker deploying it does."""
        at = int(time.time() * 1000) if now_ms is None else now_ms
        fields = self.hashes.setdefault(group.name, {})
        fields.setdefault(f"v{group.version}", orjson.dumps(version_record(group, at)))

    async def active(self, name: str) -> int | None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")
        return _version(self.hashes.get(name, {}).get(ACTIVE_FIELD))

    async def activate(self, name: str, version: int, served: int | None = None) -> int | None:
        fields = self.hashes.setdefault(name, {})
        previous = _version(fields.get(ACTIVE_FIELD))
        fields[ACTIVE_FIELD] = str(version)
        for v in {version, served} - {None}:
            assert v is not None
            fields.setdefault(served_field(v), str(int(time.time() * 1000)))
        return previous

    async def deployed(
        self, names: Iterable[str] = (), *, scan: bool = True
    ) -> tuple[list[DeployedVersion], list[str]]:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")
        wanted = dict.fromkeys(names)
        if scan:
            wanted.update(dict.fromkeys(self.hashes))
        out: list[DeployedVersion] = []
        problems: list[str] = []
        for name in wanted:
            found, bad = parse_records(name, self.hashes.get(name, {}))
            out += found
            problems += bad
        return out, problems
