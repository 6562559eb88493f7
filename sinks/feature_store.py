"""Redis online feature store: bucket rings merged server-side, exactly once per offset.

Key layout (one hash per entity and feature-group version, readable names;
on Redis Cluster each entity key carries its shard's hash tag, see
:mod:`driftline.features.keys`)::

    {prefix}:fg:{group}:v{version}:{entity}     hash   (cluster: ...:v{version}:{tag}:{entity})
        _n            newest event time of the entity (epoch ms)
        _u            wall time of the last write (epoch ms)
        r{res_ms}     bucket ring of resolution res_ms (binary, see features/codec.py)
        l:{field}     last value: "{event_time_ms}|{json value}"
    {prefix}:offsets:{source}                   hash
        p{partition}  last Kafka offset whose effects are in the store
        w{partition}  event-time watermark of the partition after that offset
    {prefix}:{tag}:fence:{source}               hash, cluster only: one per shard
        p{partition}  last Kafka offset whose effects on the shard's entities are applied
    {prefix}:registry:{group}                   hash
        v{version}    JSON: fingerprint, definition, first deployed (ms)
    {prefix}:layout                             JSON: the shard count of the store

**Exactly-once effect.**  Kafka redelivers after a crash or a rebalance, and
the local broker has no transactions, so one Lua script applies *all* the
feature updates of one partition batch together with the partition's new
offset and watermark, and only if the stored offset is still the one the
worker started from (compare-and-set).  The worker filters out records at or
below the stored offset before building the batch, so a replay applies
nothing twice; a stale worker whose partition moved loses the race (its
compare-and-set fails, it reloads and re-filters), so it cannot apply
anything twice either.  Merges are commutative, so even an entity whose
events are spread over partitions stays exact.

**On Redis Cluster** a script runs on one slot, so a batch is applied as one
script per shard it touches, each with the shard's own fence (compare-and-set
on the fence: it may lag the batch's start, when the shard had no record
since, but must not have passed it).  Once every shard has applied the batch,
the partition's offset and watermark in ``{prefix}:offsets:{source}`` move
forward (never back): every record at or below it is applied everywhere.  A
worker that crashes between two shards' scripts leaves some fences past that
offset; the next owner reads them (:attr:`PartitionState.ahead`) and skips, per
shard, the records a fence already covers, while it judges every record again
from the partition's offset and watermark, so its verdicts are the ones the
crashed worker reached.

The Lua merge (:mod:`driftline.sinks.feature_store_lua`) mirrors
:func:`driftline.features.engine.apply_delta` (the reference implementation,
tested against the script on a real Redis).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from redis.asyncio import RedisCluster
from redis.exceptions import NoPermissionError, NoScriptError, RedisClusterException

from driftline.features.codec import decode_delta, decode_ring, encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, read_features
from driftline.features.keys import KeyLayout
from driftline.features.reader import Reading, read_rings
from driftline.features.registry import version_record
from driftline.features.state import Delta, EncodedDelta, EntityState, FeatureVector
from driftline.sinks import feature_store_lua as lua
from driftline.sinks.exceptions import PermanentError
from driftline.sinks.redis_client import RedisClient

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What the store holds for one source partition: last applied offset and watermark.

    ``ahead`` (sharded stores only): the shards whose fence has passed
    ``offset`` (a batch a crashed worker applied to some shards only), with
    their fence; a record at or below its entity's shard's fence is applied
    already.  ``shards`` is the store's shard count, for
    :func:`driftline.features.keys.shard_of`.
    """

    offset: int  # -1: nothing applied yet
    watermark_ms: int | None
    ahead: Mapping[int, int] = field(default_factory=dict)
    shards: int = 1

    def after(self, offset: int, watermark_ms: int | None) -> PartitionState:
        """The state once a batch up to ``offset`` is applied (fences it passed are dropped)."""
        ahead = {s: f for s, f in self.ahead.items() if f > offset}
        return PartitionState(offset, watermark_ms, ahead, self.shards)


class FeatureVersionConflict(PermanentError):
    """A feature group version is deployed with a different definition."""


class LayoutConflict(PermanentError):
    """The store was created with another shard count than this process's configuration."""


class ClusterModeMismatch(LayoutConflict):
    """A cluster client at a Redis that is not a cluster node, or the other way round."""


def entity_key(prefix: str, group: FeatureGroup, entity: str) -> str:
    """An entity's key on one Redis (:meth:`KeyLayout.entity_key` for a sharded store)."""
    return KeyLayout(prefix).entity_key(group.name, group.version, entity)


def offsets_key(prefix: str, source: str) -> str:
    return KeyLayout(prefix).offsets_key(source)


def registry_key(prefix: str, group: str) -> str:
    return KeyLayout(prefix).registry_key(group)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def stored_shards(client: RedisClient, prefix: str) -> int | None:
    """The shard count recorded under ``prefix`` (``None``: nothing recorded yet)."""
    raw = await client.get(KeyLayout(prefix).layout_key())
    if raw is None:
        return None
    return int(orjson.loads(raw)["shards"])


class RedisFeatureStore:
    """The online store on one Redis (``shards=1``) or on a Redis Cluster (``shards > 1``)."""

    def __init__(
        self, client: RedisClient, *, prefix: str, shards: int = 1, follow_layout: bool = False
    ) -> None:
        """``follow_layout``: read with the shard count the store records, not ``shards``.

        Readers without a configuration (:class:`driftline.FeatureClient`) follow
        it; the others refuse a store recorded with another count
        (:class:`LayoutConflict`), checked once before the first read.
        """
        self.client = client
        self.prefix = prefix
        self.layout = KeyLayout(prefix, shards)
        self._follow_layout = follow_layout
        self._mode_checked = False
        self._layout_known = False
        self._apply = client.register_script(lua.APPLY)
        self._progress = client.register_script(lua.PROGRESS)
        self._mark = client.register_script(lua.MARK)

    async def _check_mode(self) -> None:
        """Refuse a client of the wrong kind for the Redis it reaches, with what to set.

        A cluster client at a plain Redis fails on its first command; a plain
        client at a cluster node would get ``MOVED`` for most keys, so the node
        is asked (``INFO cluster``; skipped where an ACL forbids it), once.
        """
        if self._mode_checked or isinstance(self.client, RedisCluster):
            return
        try:
            info = await self.client.info("cluster")
        except NoPermissionError:
            info = {}
        self._mode_checked = True
        if info.get("cluster_enabled") in (1, "1"):
            raise ClusterModeMismatch(
                "the Redis at redis.url is a node of a Redis Cluster: set redis.cluster: true "
                "(DRIFTLINE_REDIS__CLUSTER=true), or FeatureClient.redis(..., cluster=True)"
            )

    async def _first_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call``, with a cluster client at a plain Redis said in words."""
        try:
            return await call()
        except RedisClusterException as exc:
            if "Cluster mode is not enabled" not in str(exc):
                raise
            raise ClusterModeMismatch(
                "redis.cluster is true, but the Redis at redis.url is not a node of a Redis "
                "Cluster (cluster mode is not enabled on it): set redis.cluster: false"
            ) from None

    async def _read_layout(self) -> None:
        """Check (or follow) the recorded shard count, once it is recorded."""
        await self._check_mode()
        self._settle(await self._first_call(lambda: stored_shards(self.client, self.prefix)))

    def _settle(self, held: int | None) -> None:
        """Take the recorded shard count: the same as ours, followed, or refused."""
        if held is None:
            return  # nothing written yet: asked again on the next read
        if held != self.layout.shards:
            if not self._follow_layout:
                raise LayoutConflict(
                    f"the online store under key prefix {self.prefix!r} was created with "
                    f"{held} shard(s) (Redis key {self.layout.layout_key()}); this "
                    f"configuration says {self.layout.shards}: set redis.shards to {held}, "
                    "or use a new key_prefix for a store with another shard count"
                )
            self.layout = KeyLayout(self.prefix, held)
        self._layout_known = True

    async def check_layout(self) -> None:
        """Record the shard count on first use; refuse a store created with another one.

        Every writer and reader must agree on it (it decides where an
        entity's key is), and it cannot change without writing the store anew.
        """
        await self._check_mode()
        record = orjson.dumps({"shards": self.layout.shards})
        key = self.layout.layout_key()
        await self._first_call(lambda: self.client.set(key, record, nx=True))
        self._settle(await stored_shards(self.client, self.prefix))

    # -- partition state --------------------------------------------------

    async def partition_state(self, source: str, partition: int) -> PartitionState:
        layout = self.layout
        fields = [f"p{partition}", f"w{partition}"]
        if not layout.sharded:
            offset, watermark = await self.client.hmget(layout.offsets_key(source), fields)
            fences: list[bytes | None] = []
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(layout.offsets_key(source), fields)
                for shard in range(layout.shards):
                    pipe.hget(layout.fence_key(source, shard), fields[0])
                (offset, watermark), *fences = await pipe.execute()
        at = int(offset) if offset is not None else -1
        ahead = {s: int(f) for s, f in enumerate(fences) if f is not None and int(f) > at}
        return PartitionState(
            at, int(watermark) if watermark is not None else None, ahead, layout.shards
        )

    async def stored_offsets(self, source: str) -> dict[int, int]:
        """Every partition's last applied offset for ``source``."""
        fields = await self.client.hgetall(self.layout.offsets_key(source))
        out: dict[int, int] = {}
        for name, value in fields.items():
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.startswith("p") and name[1:].isdigit():
                out[int(name[1:])] = int(value)
        return out

    async def reset_offsets(self, source: str, partitions: Sequence[int] | None = None) -> int:
        """Forget the stored offsets and watermarks of ``source`` (some partitions, or all).

        Returns how many partitions had an offset stored.  On a sharded store
        the shards' fences of those partitions go too.
        """
        layout = self.layout
        stored = await self.stored_offsets(source)
        targets = sorted(stored if partitions is None else set(partitions) & set(stored))
        if targets:
            gone = [f for p in targets for f in (f"p{p}", f"w{p}")]
            await self.client.hdel(layout.offsets_key(source), *gone)
            if layout.sharded:
                async with self.client.pipeline(transaction=False) as pipe:
                    for shard in range(layout.shards):
                        pipe.hdel(layout.fence_key(source, shard), *gone)
                    await pipe.execute()
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
        ahead: Mapping[int, int] | None = None,
        marks: bool = True,
        strict_last: bool = False,
    ) -> tuple[bool, int]:
        """Apply one partition batch atomically; ``(False, stored)`` when the offset moved.

        On a sharded store: atomically per shard, then the partition's offset;
        ``ahead`` are the fences past ``expected_offset`` the worker knows of
        (:attr:`PartitionState.ahead`), ``(False, fence)`` when a shard's fence
        moved under this worker (the shards before it may have applied theirs).

        ``marks``: record, for each group version not marked yet on this
        partition (and shard), that it is written live from here
        (:meth:`KeyLayout.mark_key`).  ``strict_last``: a ``last`` value replaces
        a stored one only when strictly newer (a backfill, writing older offsets).
        """
        now_ms = int(time.time() * 1000)
        layout = self.layout
        flags = (1 if marks else 0) | (2 if strict_last else 0)

        def mark(group: FeatureGroup, shard: int) -> str:
            return layout.mark_key(group.name, group.version, source, shard)

        if not layout.sharded:
            keys, args = _script(
                layout.offsets_key(source),
                [partition, expected_offset, new_offset, _or_empty(watermark_ms), now_ms],
                layout.key_head,
                deltas,
                flags,
                functools.partial(mark, shard=0),
            )
            ok, stored = await self._apply(keys=keys, args=args)
            return bool(ok), int(stored)
        calls = []
        for shard, shard_deltas in _by_shard(layout, deltas).items():
            start = max(expected_offset, (ahead or {}).get(shard, -1))
            head = [partition, f"<{start}", new_offset, "", now_ms]
            key_head = functools.partial(layout.key_head, shard=shard)
            marker = functools.partial(mark, shard=shard)
            fence = layout.fence_key(source, shard)
            calls.append(_script(fence, head, key_head, shard_deltas, flags, marker))
        for ok, stored in await self._run_sharded(calls):
            if not ok and int(stored) != new_offset:  # (== new_offset: applied by a retry)
                return False, int(stored)
        await self._progress(
            keys=[layout.offsets_key(source)],
            args=[partition, new_offset, _or_empty(watermark_ms)],
        )
        return True, new_offset

    async def mark_live(self, source: str, partition: int, groups: Sequence[FeatureGroup]) -> None:
        """Record, where not yet recorded, that ``groups`` are written live on ``partition``
        from its stored offset on (on every shard).

        A worker calls it when a partition is assigned, before it writes: the
        first write of a version marks it too (:meth:`apply`), but a partition
        without new records would otherwise never be marked, and a backfill
        could not know where to hand over.
        """
        if not groups:
            return
        layout = self.layout
        calls = []
        for shard in range(layout.shards):
            fence = layout.fence_key(source, shard) if layout.sharded else None
            keys = [fence or layout.offsets_key(source)]
            keys += [layout.mark_key(g.name, g.version, source, shard) for g in groups]
            calls.append((keys, [partition]))
        await self._pipelined(self._mark, lua.MARK, calls)

    async def live_marks(
        self, source: str, group: FeatureGroup, partitions: Sequence[int]
    ) -> dict[int, dict[int, int]]:
        """Per partition, per shard: the offset after which ``group`` is written live
        (partitions or shards not marked yet are absent)."""
        layout = self.layout
        fields = [f"p{p}" for p in partitions]
        out: dict[int, dict[int, int]] = {}
        if not fields:
            return out
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in range(layout.shards):
                pipe.hmget(layout.mark_key(group.name, group.version, source, shard), fields)
            rows = await pipe.execute()
        for shard, values in enumerate(rows):
            for p, value in zip(partitions, values, strict=True):
                if value is not None:
                    out.setdefault(p, {})[shard] = int(value)
        return out

    async def live_gaps(
        self, source: str, group: FeatureGroup, partitions: Sequence[int]
    ) -> dict[int, list[tuple[int, int, int]]]:
        """Per partition: ``(shard, after, to)`` where a writer without ``group`` wrote
        offsets ``after + 1 .. to`` after the version's live mark (its config lacked the
        version), so the version misses their events.

        A write of the version that finds such a gap keeps it (``g{n}``, the first
        one); a gap no write of the version has seen yet shows as the shard's fence
        ahead of the version's last write there (``h{n}``, else the mark).
        """
        layout = self.layout
        out: dict[int, list[tuple[int, int, int]]] = {}
        if not partitions:
            return out
        fields = [f"{k}{p}" for p in partitions for k in ("p", "h", "g")]
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in range(layout.shards):
                pipe.hmget(layout.mark_key(group.name, group.version, source, shard), fields)
                fence = layout.fence_key(source, shard) if layout.sharded else None
                pipe.hmget(fence or layout.offsets_key(source), [f"p{p}" for p in partitions])
            rows = await pipe.execute()
        for shard in range(layout.shards):
            marks, fences = rows[2 * shard], rows[2 * shard + 1]
            for i, p in enumerate(partitions):
                mark, last, gap = marks[3 * i : 3 * i + 3]
                if gap is not None:
                    after, to = (int(x) for x in _text(gap).split(":"))
                    out.setdefault(p, []).append((shard, after, to))
                elif mark is not None and fences[i] is not None:
                    written = int(last if last is not None else mark)
                    if int(fences[i]) > written:
                        out.setdefault(p, []).append((shard, written, int(fences[i])))
        return out

    async def _run_sharded(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One APPLY call per shard, in one pipeline (sent to each primary at once)."""
        return await self._pipelined(self._apply, lua.APPLY, calls)

    async def _pipelined(
        self, script: Any, source: str, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """Calls of one script in one pipeline.

        A node that lost its scripts (a restart, a failover to a replica)
        answers NOSCRIPT: the script is loaded again and the whole set is
        sent again, which the fences (or HSETNX) make harmless for the calls
        that ran.
        """
        for attempt in range(2):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    queue: Any = pipe  # (redis-py types the script's client as a client only)
                    for keys, args in calls:  # queued, not sent: the coroutine returns at once
                        await script(keys=keys, args=args, client=queue)
                    return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                await self.client.script_load(source)
        raise AssertionError("unreachable")

    # -- reads --------------------------------------------------------------

    async def _hashes(
        self, group: FeatureGroup, entities: Sequence[str]
    ) -> list[Mapping[bytes | str, bytes | str]]:
        """The stored hash of each entity (empty when unknown), in one pipelined round trip."""
        if not self._layout_known:
            await self._read_layout()
        key = self.layout.entity_key
        async with self.client.pipeline(transaction=False) as pipe:
            for entity in entities:
                pipe.hgetall(key(group.name, group.version, entity))
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
        key = self.layout.registry_key(group.name)
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
        key = self.layout.registry_key(group.name)
        await self.client.eval(lua.TOUCH, 1, key, f"v{group.version}:last_write_ms", now_ms)


def _or_empty(value: int | None) -> int | str:
    return "" if value is None else value


def _by_shard(
    layout: KeyLayout, deltas: Sequence[tuple[FeatureGroup, Mapping[str, Delta]]]
) -> dict[int, list[tuple[FeatureGroup, dict[str, Delta]]]]:
    """The batch's deltas cut by the shard of their entity (groups in the batch's order).

    A shard's script carries every group of the batch, with no entities where it
    has none on the shard: its live mark's ``h`` moves with the shard's fence, so
    only a writer without the version leaves a gap behind (see APPLY).
    """
    cuts: list[dict[int, dict[str, Delta]]] = []
    for _, entities in deltas:
        cut: dict[int, dict[str, Delta]] = {}
        shard = layout.shard
        for entity, delta in entities.items():
            cut.setdefault(shard(entity), {})[entity] = delta
        cuts.append(cut)
    touched = sorted({s for cut in cuts for s in cut})
    return {
        s: [(group, cut.get(s, {})) for (group, _), cut in zip(deltas, cuts, strict=True)]
        for s in touched
    }


def _script(
    offsets: str,
    head: list[Any],
    key_head: Callable[[str, int], str],
    deltas: Sequence[tuple[FeatureGroup, Mapping[str, Delta]]],
    flags: int = 0,
    mark_key: Callable[[FeatureGroup], str] | None = None,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one :data:`~driftline.sinks.feature_store_lua.APPLY` call.

    ``key_head(group, version)``: what the entity keys of ``deltas`` start with
    (:meth:`KeyLayout.key_head`: one shard's, on a sharded store); ``flags``
    (the script's per-group flags) and ``mark_key(group)``, needed with flag 1.
    """
    keys: list[str] = [offsets]
    args: list[Any] = [*head, len(deltas)]
    for group, entities in deltas:
        layout_ = group.layout
        resolutions = layout_.resolutions
        args += [
            len(layout_.value_fields),
            len(layout_.distinct_fields),
            group.ttl_ms,
            flags,
            len(resolutions),
        ]
        if flags & 1:
            assert mark_key is not None
            keys.append(mark_key(group))
        for r in resolutions:
            args += [r, layout_.ring_buckets[r]]
        args.append(len(entities))
        key = key_head(group.name, group.version)
        for entity, delta in entities.items():
            keys.append(key + entity)
            args.append(delta.newest_event_ms)
            args.append(len(delta.last))
            for name, (t, value) in delta.last.items():
                args += [f"l:{name}", t, orjson.dumps(value)]
            if isinstance(delta, EncodedDelta):  # rings already in blob form
                blobs = delta.blobs
                args += [blobs.get(r, b"") for r in resolutions]
                continue
            for r in resolutions:
                ring = delta.rings.get(r)
                args.append(encode_ring(group, ring) if ring else b"")
    return keys, args


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
        #: (source, partition, group, version) -> the offset it is written live after
        self.marks: dict[tuple[str, int, str, int], int] = {}

    async def mark_live(self, source: str, partition: int, groups: Sequence[FeatureGroup]) -> None:
        offset = self.partitions.get((source, partition), PartitionState(-1, None)).offset
        for g in groups:
            self.marks.setdefault((source, partition, g.name, g.version), offset)

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
        ahead: Mapping[int, int] | None = None,
        marks: bool = True,
        strict_last: bool = False,
    ) -> tuple[bool, int]:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")
        current = self.partitions.get((source, partition), PartitionState(-1, None))
        if current.offset != expected_offset:
            return False, current.offset
        if marks:
            await self.mark_live(source, partition, [g for g, _ in deltas])
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
