"""Redis online feature store: bucket rings merged server-side, exactly once per offset.

Key layout (one hash per entity and feature-group version, readable names)::

    {prefix}:fg:{group}:v{version}:{entity}     hash
        _n            newest event time of the entity (epoch ms)
        _u            wall time of the last write (epoch ms)
        r{res_ms}     bucket ring of resolution res_ms (binary, see features/codec.py)
        l:{field}     last value: "{event_time_ms}|{json value}"
    {prefix}:offsets:{source}                   hash
        p{partition}  last Kafka offset whose effects are in the store
        w{partition}  event-time watermark of the partition after that offset
    {prefix}:registry:{group}                   hash
        v{version}    JSON: fingerprint, definition, first deployed (ms)

**Exactly-once effect.**  Kafka redelivers after a crash or a rebalance, and
the local broker has no transactions, so one Lua script applies *all* the
feature updates of one partition batch together with the partition's new
offset and watermark, and only if the stored offset is still the one the
worker started from (compare-and-set).  The worker filters out records at or
below the stored offset before building the batch, so a replay applies
nothing twice; a stale worker whose partition moved loses the race (its
compare-and-set fails, it reloads and re-filters), so it cannot apply
anything twice either.  Merges are commutative, so even an entity whose
events are spread over partitions stays exact.  Single Redis (or a primary
with replicas); Redis Cluster is not supported because one script touches
keys of many slots.

The Lua merge (:mod:`driftline.sinks.feature_store_lua`) mirrors
:func:`driftline.features.engine.apply_delta` (the reference implementation,
tested against the script on a real Redis).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from driftline.features.codec import decode_delta, decode_ring, encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, read_features
from driftline.features.reader import Reading, read_rings
from driftline.features.registry import version_record
from driftline.features.state import Delta, EncodedDelta, EntityState, FeatureVector
from driftline.sinks import feature_store_lua as lua
from driftline.sinks.exceptions import PermanentError


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What the store holds for one source partition: last applied offset and watermark."""

    offset: int  # -1: nothing applied yet
    watermark_ms: int | None


class FeatureVersionConflict(PermanentError):
    """A feature group version is deployed with a different definition."""


def entity_key(prefix: str, group: FeatureGroup, entity: str) -> str:
    return f"{prefix}:fg:{group.name}:v{group.version}:{entity}"


def offsets_key(prefix: str, source: str) -> str:
    return f"{prefix}:offsets:{source}"


def registry_key(prefix: str, group: str) -> str:
    return f"{prefix}:registry:{group}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisFeatureStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._apply = client.register_script(lua.APPLY)

    # -- partition state --------------------------------------------------

    async def partition_state(self, source: str, partition: int) -> PartitionState:
        offset, watermark = await self.client.hmget(
            offsets_key(self.prefix, source), [f"p{partition}", f"w{partition}"]
        )
        return PartitionState(
            int(offset) if offset is not None else -1,
            int(watermark) if watermark is not None else None,
        )

    async def stored_offsets(self, source: str) -> dict[int, int]:
        """Every partition's last applied offset for ``source``."""
        fields = await self.client.hgetall(offsets_key(self.prefix, source))
        out: dict[int, int] = {}
        for name, value in fields.items():
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.startswith("p") and name[1:].isdigit():
                out[int(name[1:])] = int(value)
        return out

    async def reset_offsets(self, source: str, partitions: Sequence[int] | None = None) -> int:
        """Forget the stored offsets and watermarks of ``source`` (some partitions, or all).

        Returns how many partitions had an offset stored.
        """
        key = offsets_key(self.prefix, source)
        stored = await self.stored_offsets(source)
        targets = sorted(stored if partitions is None else set(partitions) & set(stored))
        if targets:
            await self.client.hdel(key, *[f for p in targets for f in (f"p{p}", f"w{p}")])
        return len(targets)

    # -- writes -------------------------------------------------------------

    async def apply(
        self,
        source: str,
        partition: int,
        *,
        expected_offset: int,
        new_offset: int,
        watermark_ms: int | None,
        deltas: Sequence[tuple[FeatureGroup, Mapping[str, Delta]]],
    ) -> tuple[bool, int]:
        """Apply one partition batch atomically; ``(False, stored)`` when the offset moved."""
        keys: list[str] = [offsets_key(self.prefix, source)]
        args: list[Any] = [
            partition,
            expected_offset,
            new_offset,
            "" if watermark_ms is None else watermark_ms,
            int(time.time() * 1000),
            len(deltas),
        ]
        for group, entities in deltas:
            layout = group.layout
            resolutions = layout.resolutions
            args += [
                len(layout.value_fields),
                len(layout.distinct_fields),
                group.ttl_ms,
                len(resolutions),
            ]
            for r in resolutions:
                args += [r, layout.ring_buckets[r]]
            args.append(len(entities))
            for entity, delta in entities.items():
                keys.append(entity_key(self.prefix, group, entity))
                args.append(delta.newest_event_ms)
                args.append(len(delta.last))
                for field, (t, value) in delta.last.items():
                    args += [f"l:{field}", t, orjson.dumps(value)]
                if isinstance(delta, EncodedDelta):  # rings already in blob form
                    blobs = delta.blobs
                    args += [blobs.get(r, b"") for r in resolutions]
                    continue
                for r in resolutions:
                    ring = delta.rings.get(r)
                    args.append(encode_ring(group, ring) if ring else b"")
        ok, stored = await self._apply(keys=keys, args=args)
        return bool(ok), int(stored)

    # -- reads --------------------------------------------------------------

    async def _hashes(
        self, group: FeatureGroup, entities: Sequence[str]
    ) -> list[Mapping[bytes | str, bytes | str]]:
        """The stored hash of each entity (empty when unknown), in one pipelined round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for entity in entities:
                pipe.hgetall(entity_key(self.prefix, group, entity))
            raw: list[Mapping[bytes | str, bytes | str]] = await pipe.execute()
        return raw

    async def read_states(
        self, group: FeatureGroup, entities: Sequence[str]
    ) -> list[EntityState | None]:
        """The stored state of each entity (``None`` when unknown), in one round trip."""
        return [decode_state(group, f) if f else None for f in await self._hashes(group, entities)]

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]:
        """Features (and which windows hold data) of ``entities``, in one round trip."""
        return [read_stored(group, f, as_of_ms) for f in await self._hashes(group, entities)]

    async def get(
        self, group: FeatureGroup, entities: Sequence[str], *, as_of_ms: int | None = None
    ) -> list[FeatureVector]:
        """Features of ``entities`` as of ``as_of_ms`` (default: now), one round trip."""
        as_of = int(time.time() * 1000) if as_of_ms is None else as_of_ms
        return [reading.vector for reading in await self.read(group, entities, as_of)]

    # -- registry -----------------------------------------------------------

    async def register(self, group: FeatureGroup, lineage: Mapping[str, Any] | None = None) -> None:
        """Record the group version's definition; refuse a changed definition under one version.

        ``lineage`` (the source's topic and contract: file, encoding,
        fingerprint) is kept with the first deployment, so a retired version
        still shows what fed it; every contract fingerprint a worker deploys
        the version with is recorded too, as ``v{version}@{fingerprint}`` =
        first time seen (``HSETNX``: concurrent workers cannot race).
        """
        key = registry_key(self.prefix, group.name)
        now_ms = int(time.time() * 1000)
        doc = version_record(group, now_ms, lineage)
        field = f"v{group.version}"
        if not await self.client.hsetnx(key, field, orjson.dumps(doc)):
            existing = orjson.loads(await self.client.hget(key, field) or b"{}")
            if existing.get("fingerprint") != group.fingerprint():
                raise FeatureVersionConflict(
                    f"feature group {group.name!r} version {group.version} is already deployed "
                    f"with a different definition (fingerprint "
                    f"{str(existing.get('fingerprint'))[:12]}, this config "
                    f"{group.fingerprint()[:12]}): bump 'version' to write the new definition "
                    "to a new key space"
                )
        schema = (lineage or {}).get("schema")
        contract = schema.get("fingerprint") if isinstance(schema, Mapping) else None
        if contract:
            await self.client.hsetnx(key, f"{field}@{contract}", now_ms)

    async def touch(self, group: FeatureGroup, now_ms: int) -> None:
        """Record that the group version was written at ``now_ms`` (``v{N}:last_write_ms``).

        Its keys expire ``ttl_ms`` after their last write, so the registry can
        tell when a retired version's key space is gone.  Workers call it at
        most once a minute per group; a newer value is never overwritten.
        """
        key = registry_key(self.prefix, group.name)
        await self.client.eval(lua.TOUCH, 1, key, f"v{group.version}:last_write_ms", now_ms)


def split_hash(
    fields: Mapping[bytes | str, bytes | str],
) -> tuple[dict[int, bytes], dict[str, tuple[int, Any]], int | None]:
    """An entity hash's ring blobs by resolution, ``last`` values and newest event time."""
    blobs: dict[int, bytes] = {}
    last: dict[str, tuple[int, Any]] = {}
    newest: int | None = None
    for raw_name, raw_value in fields.items():
        name = _text(raw_name)
        if name == "_n":
            newest = int(_text(raw_value))
        elif name.startswith("r"):
            blobs[int(name[1:])] = raw_value if isinstance(raw_value, bytes) else raw_value.encode()
        elif name.startswith("l:"):
            t, _, value = _text(raw_value).partition("|")
            last[name[2:]] = (int(t), orjson.loads(value))
    return blobs, last, newest


def read_stored(
    group: FeatureGroup, fields: Mapping[bytes | str, bytes | str], as_of_ms: int
) -> Reading:
    """The features of one stored entity hash (empty for ``{}``), without decoding objects."""
    blobs, last, newest = split_hash(fields)
    return read_rings(group, blobs, last, newest, as_of_ms)


def decode_state(group: FeatureGroup, fields: Mapping[bytes | str, bytes | str]) -> EntityState:
    """The engine's state object of one stored entity hash."""
    blobs, last, newest = split_hash(fields)
    rings = {r: decode_ring(group, blob) for r, blob in blobs.items()}
    return EntityState(rings, last, newest)


class MemoryFeatureStore:
    """In-memory double with the same compare-and-set contract, for unit tests.

    Merges with :func:`driftline.features.engine.apply_delta`, the reference the Lua
    script is tested against.
    """

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionState] = {}
        self.states: dict[tuple[str, int, str], EntityState] = {}
        self.last_writes: dict[tuple[str, int], int] = {}
        self.fail_next = 0
        self.applied_batches = 0

    async def partition_state(self, source: str, partition: int) -> PartitionState:
        return self.partitions.get((source, partition), PartitionState(-1, None))

    async def apply(
        self,
        source: str,
        partition: int,
        *,
        expected_offset: int,
        new_offset: int,
        watermark_ms: int | None,
        deltas: Sequence[tuple[FeatureGroup, Mapping[str, Delta]]],
    ) -> tuple[bool, int]:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")
        current = self.partitions.get((source, partition), PartitionState(-1, None))
        if current.offset != expected_offset:
            return False, current.offset
        for group, entities in deltas:
            for entity, delta in entities.items():
                key = (group.name, group.version, entity)
                self.states[key] = apply_delta(
                    group, self.states.get(key), decode_delta(group, delta)
                )
        self.partitions[(source, partition)] = PartitionState(new_offset, watermark_ms)
        self.applied_batches += 1
        return True, new_offset

    async def read_states(
        self, group: FeatureGroup, entities: Sequence[str]
    ) -> list[EntityState | None]:
        return [self.states.get((group.name, group.version, e)) for e in entities]

    async def touch(self, group: FeatureGroup, now_ms: int) -> None:
        key = (group.name, group.version)
        self.last_writes[key] = max(self.last_writes.get(key, 0), now_ms)

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]:
        """As :meth:`RedisFeatureStore.read`: the rings encoded as stored, then read from bytes."""
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")
        out = []
        for entity in entities:
            state = self.states.get((group.name, group.version, entity))
            if state is None:
                out.append(read_rings(group, {}, {}, None, as_of_ms))
                continue
            blobs = {r: encode_ring(group, ring) for r, ring in state.rings.items() if ring}
            out.append(read_rings(group, blobs, state.last, state.newest_event_ms, as_of_ms))
        return out

    async def get(
        self, group: FeatureGroup, entities: Sequence[str], *, as_of_ms: int | None = None
    ) -> list[FeatureVector]:
        as_of = int(time.time() * 1000) if as_of_ms is None else as_of_ms
        return [
            read_features(group, self.states.get((group.name, group.version, e)), as_of)
            for e in entities
        ]
