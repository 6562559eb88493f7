"""The sharded online store (the Redis Cluster layout) keeps the exactly-once effect.

Each test runs on one Redis with the sharded key layout and on a real local
Redis Cluster of three primaries (``redis_cluster_url``): the same code, the
cluster adding that every script must stay in one slot (it refuses otherwise).

* the Lua merge over many shards equals the reference engine;
* a worker that dies between two shards' scripts (some shards applied the
  batch, others not) is followed by one that replays the partition from an
  earlier offset, in other batch sizes: every event counted once, every
  verdict (late, too) the one an uninterrupted worker reaches;
* a stale worker that loaded the partition before another applied it cannot
  apply it again;
* readers find the entities where the writers put them, and a store created
  with one shard count refuses a writer (or a reader) configured with another.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.keys import key_slot
from driftline.features.state import EntityState
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import (
    ClusterModeMismatch,
    LayoutConflict,
    MemoryFeatureStore,
    PartitionState,
    RedisFeatureStore,
)
from driftline.sinks.kafka_sink import MemoryKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.redis_client import RedisClient, connect_redis
from driftline.streams.worker.pipeline import SourcePipeline
from driftline.streams.worker.records import RawRecord
from driftline.streams.worker.retry import Backoff, EffectFailed
from tests.integration.test_feature_store import GROUP, close, random_events
from tests.unit.test_pipeline import make_parser

SPEND = FeatureGroup.from_config(
    {
        "name": "spend",
        "version": 1,
        "source": "transactions",
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum", "mean", "max"]},
        "distinct": ["category"],
        "last": ["amount"],
        "windows": ["1m", "1h"],
    }
)
T0 = 1_700_000_000_000


@pytest.fixture(params=["redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RedisClient, int]]:
    """A client and a shard count: one Redis with 8 shards, or the cluster with 64."""
    if request.param == "redis":
        client = connect_redis(request.getfixturevalue("redis_url"))
        shards = 8
    else:
        client = connect_redis(request.getfixturevalue("redis_cluster_url"), cluster=True)
        shards = 64
    try:
        yield client, shards
    finally:
        await client.aclose()


def _prefix() -> str:
    return f"sh-{uuid.uuid4().hex[:8]}"


async def test_merge_over_shards_matches_reference(backend: tuple[RedisClient, int]) -> None:
    client, shards = backend
    group = FeatureGroup.from_config(GROUP)
    store = RedisFeatureStore(client, prefix=_prefix(), shards=shards)
    rng = random.Random(7)
    events = [
        e._replace(entity=f"user-{rng.randint(0, 199)}") for e in random_events(rng, 1500, T0)
    ]
    reference: dict[str, EntityState] = {}
    offset, i = -1, 0
    while i < len(events):
        batch = events[i : i + rng.randint(1, 300)]
        i += len(batch)
        deltas = build_deltas(group, batch)
        for entity, delta in deltas.items():
            reference[entity] = apply_delta(group, reference.get(entity), delta)
        assert await store.apply(
            "tx",
            0,
            expected_offset=offset,
            new_offset=offset + len(batch),
            watermark_ms=None,
            deltas=[(group, deltas)],
        ) == (True, offset + len(batch))
        offset += len(batch)
    state = await store.partition_state("tx", 0)
    assert (state.offset, dict(state.ahead)) == (offset, {})
    entities = sorted(reference)
    touched = {store.layout.shard(e) for e in entities}
    assert len(touched) == shards  # 200 entities reach every shard (of 8 or 64)
    newest = max(e.event_time_ms for e in events)
    for as_of in (newest, newest + 400_000):
        got = await store.get(group, entities, as_of_ms=as_of)
        for entity, vector in zip(entities, got, strict=True):
            want = read_features(group, reference[entity], as_of)
            for name, value in want.values.items():
                assert close(vector.values[name], value), (entity, name)


class WorkerDied(Exception):
    """The simulated SIGKILL of a worker between two shards' scripts."""


class DiesMidBatch(RedisFeatureStore):
    """Applies the first ``keep`` shards' scripts of its ``at``-th sharded batch, then dies."""

    def __init__(self, *args: Any, at: int, keep: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at, self.keep, self.calls = at, keep, 0

    async def _run_sharded(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        self.calls += 1
        if self.calls == self.at:
            assert len(calls) > self.keep, "the batch must touch more shards than it keeps"
            await super()._run_sharded(calls[: self.keep])
            raise WorkerDied
        return await super()._run_sharded(calls)


def transactions(n: int, seed: int) -> list[RawRecord]:
    """Records of one partition: mostly in event-time order, some late, a few invalid."""
    rng = random.Random(seed)
    out = []
    t = T0
    for offset in range(n):
        t += rng.randint(0, 900)
        event_time = t - (rng.randint(60_000, 200_000) if rng.random() < 0.05 else 0)
        doc: dict[str, Any] = {
            "event_id": f"e{offset}",
            "user_id": f"user-{rng.randint(0, 79)}",
            "amount": round(rng.lognormvariate(3, 1), 2),
            "category": rng.choice(["grocery", "travel", "fuel", "health"]),
            "event_time": event_time,
        }
        if rng.random() < 0.02:
            doc["amount"] = -1  # refused by the contract
        key = doc["user_id"].encode()
        out.append(RawRecord("tx", 0, offset, t, key, orjson.dumps(doc), []))
    return out


def pipeline(store: Any, dlq: MemoryKafkaSink) -> SourcePipeline:
    async def no_sleep(_: float) -> None:
        return None

    return SourcePipeline(
        source="transactions",
        dead_letter_topic="tx.dlq",
        parser=make_parser(),
        dead_letters=dlq,
        store=store,
        groups=(SPEND,),
        metrics=WorkerMetrics(["transactions"], CollectorRegistry()),
        allowed_lateness_ms=30_000,
        backoff=Backoff(0.01, 0.02),
        sleep=no_sleep,
    )


async def run(p: SourcePipeline, records: Sequence[RawRecord], sizes: Sequence[int]) -> None:
    i = 0
    for size in sizes:
        if i >= len(records):
            return
        await p.process(records[i : i + size])
        i += size
    if i < len(records):
        await p.process(records[i:])


def dead_letter_offsets(dlq: MemoryKafkaSink) -> dict[int, str]:
    out = {}
    for _topic, _key, _value, headers in dlq.written:
        h = dict(headers)
        out[int(h["driftline.errors.offset"])] = h["driftline.errors.reason"].decode()
    return out


async def reference_run(records: Sequence[RawRecord]) -> tuple[MemoryFeatureStore, MemoryKafkaSink]:
    store, dlq = MemoryFeatureStore(), MemoryKafkaSink()
    await run(pipeline(store, dlq), records, [500] * 10)
    return store, dlq


async def assert_same_features(
    store: RedisFeatureStore, reference: MemoryFeatureStore, records: Sequence[RawRecord]
) -> None:
    entities = sorted({r.key.decode() for r in records if r.key})
    as_of = max(r.timestamp_ms for r in records) + 1
    got = await store.get(SPEND, entities, as_of_ms=as_of)
    want = await reference.get(SPEND, entities, as_of_ms=as_of)
    counted = 0
    for entity, g, w in zip(entities, got, want, strict=True):
        assert g.newest_event_ms == w.newest_event_ms, entity
        for name, value in w.values.items():
            assert close(g.values[name], value), (entity, name, g.values[name], value)
        counted += w.values["amount_count_1h"] or 0
    assert counted > 0


@pytest.mark.parametrize("keep", [1, 5])
async def test_worker_dying_between_shards_loses_and_doubles_nothing(
    backend: tuple[RedisClient, int], keep: int
) -> None:
    client, shards = backend
    records = transactions(3000, seed=keep)
    reference, reference_dlq = await reference_run(records)
    prefix = _prefix()

    # worker 1: batches of 400; its third batch reaches `keep` shards, then it dies
    dying = DiesMidBatch(client, prefix=prefix, shards=shards, at=3, keep=keep)
    first_dlq = MemoryKafkaSink()
    with pytest.raises(EffectFailed) as died:
        await run(pipeline(dying, first_dlq), records, [400] * 10)
    assert isinstance(died.value.__cause__, WorkerDied)
    state = await RedisFeatureStore(client, prefix=prefix, shards=shards).partition_state(
        "transactions", 0
    )
    assert state.offset == 799  # two whole batches
    assert set(state.ahead.values()) == {1199}  # the shards that applied the third
    assert len(state.ahead) == keep

    # worker 2 replays from an earlier committed offset, in batches of another size
    second = RedisFeatureStore(client, prefix=prefix, shards=shards)
    second_dlq = MemoryKafkaSink()
    await run(pipeline(second, second_dlq), records[500:], [130] * 40)
    assert (await second.partition_state("transactions", 0)).offset == len(records) - 1
    await assert_same_features(second, reference, records)
    # the verdicts after the crash are the uninterrupted worker's (late ones included)
    want = dead_letter_offsets(reference_dlq)
    got = {**dead_letter_offsets(first_dlq), **dead_letter_offsets(second_dlq)}
    assert got == want
    assert "late" in want.values()


async def test_stale_worker_cannot_apply_a_batch_again(backend: tuple[RedisClient, int]) -> None:
    client, shards = backend
    records = transactions(1200, seed=11)
    reference, _ = await reference_run(records)
    prefix = _prefix()
    owner = pipeline(RedisFeatureStore(client, prefix=prefix, shards=shards), MemoryKafkaSink())
    stale = pipeline(RedisFeatureStore(client, prefix=prefix, shards=shards), MemoryKafkaSink())
    await stale.adopt(0, lambda: True)
    await stale._partition_state(0)  # loaded before the owner wrote: offset -1
    await run(owner, records, [600, 600])
    await run(stale, records, [600, 600])  # its fences moved: it reloads and skips all
    await assert_same_features(
        RedisFeatureStore(client, prefix=prefix, shards=shards), reference, records
    )


async def test_keys_spread_and_layout_is_checked(backend: tuple[RedisClient, int]) -> None:
    client, shards = backend
    prefix = _prefix()
    store = RedisFeatureStore(client, prefix=prefix, shards=shards)
    await store.check_layout()
    events = [
        ParsedEvent(f"user-{i}", T0 + i, {"user_id": f"user-{i}", "amount": 1.0})
        for i in range(500)
    ]
    await store.apply(
        "tx",
        0,
        expected_offset=-1,
        new_offset=499,
        watermark_ms=None,
        deltas=[(SPEND, build_deltas(SPEND, events))],
    )
    keys = [store.layout.entity_key("spend", 1, f"user-{i}") for i in range(500)]
    slots = {key_slot(k) for k in keys}
    assert len(slots) == shards  # one slot per shard, every shard used
    # a reader without a configuration follows the recorded count
    follower = RedisFeatureStore(client, prefix=prefix, follow_layout=True)
    (read,) = await follower.get(SPEND, ["user-7"], as_of_ms=T0 + 1000)
    assert read.values["amount_count_1h"] == 1
    # a writer or a configured reader with another count is refused, naming the key
    other = RedisFeatureStore(client, prefix=prefix, shards=shards * 2)
    with pytest.raises(LayoutConflict, match=f"{prefix}:layout"):
        await other.check_layout()
    with pytest.raises(LayoutConflict, match=f"set redis.shards to {shards}"):
        await other.get(SPEND, ["user-7"])


async def test_scripts_forgotten_by_redis_are_loaded_again(
    backend: tuple[RedisClient, int],
) -> None:
    """A restarted node or a promoted replica has no scripts: NOSCRIPT, loaded, sent again."""
    client, shards = backend
    store = RedisFeatureStore(client, prefix=_prefix(), shards=shards)
    events = [
        ParsedEvent(f"user-{i}", T0 + i, {"user_id": f"user-{i}", "amount": 2.0}) for i in range(50)
    ]
    deltas = [(SPEND, build_deltas(SPEND, events))]
    assert await store.apply(
        "tx", 0, expected_offset=-1, new_offset=49, watermark_ms=None, deltas=deltas
    ) == (True, 49)
    await client.script_flush()
    assert await store.apply(
        "tx", 0, expected_offset=49, new_offset=99, watermark_ms=None, deltas=deltas
    ) == (True, 99)
    got = await store.get(SPEND, [f"user-{i}" for i in range(50)], as_of_ms=T0 + 1000)
    assert {v.values["amount_count_1h"] for v in got} == {2}


async def test_registry_and_monitor_checkpoints_on_the_cluster(redis_cluster_url: str) -> None:
    """One key per call: the registry (found by a SCAN of every primary) and checkpoints."""
    from driftline.sinks.monitor_store import MonitorCheckpoint, RedisMonitorStore
    from driftline.sinks.registry_store import read_deployed

    client = connect_redis(redis_cluster_url, cluster=True)
    prefix = _prefix()
    try:
        store = RedisFeatureStore(client, prefix=prefix, shards=64)
        names = [f"group-{i}" for i in range(12)]  # registry keys on every primary
        for name in names:
            await store.register(FeatureGroup.from_config({**GROUP, "name": name}))
            await store.touch(FeatureGroup.from_config({**GROUP, "name": name}), 1_000)
        found, problems = await read_deployed(client, prefix)  # no names: SCAN only
        assert sorted(v.group for v in found) == sorted(names) and not problems
        monitors = RedisMonitorStore(client, prefix=prefix)
        loaded = await monitors.load("amount")
        stale = await monitors.load("amount")
        assert await monitors.save("amount", MonitorCheckpoint(b"{}", loaded.seq, {"tx/0": 5}))
        assert not await monitors.save("amount", MonitorCheckpoint(b"{}", stale.seq))
        assert (await monitors.load("amount")).high_water == {"tx/0": 5}
    finally:
        await client.aclose()


async def test_progress_without_features_and_offsets_reset(
    backend: tuple[RedisClient, int],
) -> None:
    """A batch of rejected records still moves the progress; a reset forgets fences too."""
    client, shards = backend
    store = DiesMidBatch(client, prefix=_prefix(), shards=shards, at=2, keep=2)
    assert await store.apply(
        "tx", 0, expected_offset=-1, new_offset=9, watermark_ms=70, deltas=[]
    ) == (True, 9)
    assert await store.partition_state("tx", 0) == PartitionState(9, 70, {}, shards)
    events = [
        ParsedEvent(f"user-{i}", T0 + i, {"user_id": f"user-{i}", "amount": 1.0}) for i in range(40)
    ]
    with pytest.raises(WorkerDied):
        await store.apply(
            "tx",
            0,
            expected_offset=9,
            new_offset=49,
            watermark_ms=80,
            deltas=[(SPEND, build_deltas(SPEND, events))],
        )
    crashed = await store.partition_state("tx", 0)
    assert (crashed.offset, crashed.watermark_ms, len(crashed.ahead)) == (9, 70, 2)
    assert await store.reset_offsets("tx") == 1
    assert await store.partition_state("tx", 0) == PartitionState(-1, None, {}, shards)


async def test_a_client_of_the_wrong_kind_is_told_what_to_set(
    redis_url: str, redis_cluster_url: str
) -> None:
    """redis.cluster at a plain Redis, or a plain client at a cluster node: one clear error."""
    plain_at_cluster = connect_redis(redis_cluster_url)
    cluster_at_plain = connect_redis(redis_url, cluster=True)
    try:
        with pytest.raises(ClusterModeMismatch, match=r"set redis\.cluster: true"):
            await RedisFeatureStore(plain_at_cluster, prefix=_prefix()).check_layout()
        with pytest.raises(ClusterModeMismatch, match=r"set redis\.cluster: true"):
            await RedisFeatureStore(plain_at_cluster, prefix=_prefix()).get(SPEND, ["u"])
        with pytest.raises(ClusterModeMismatch, match=r"set redis\.cluster: false"):
            await RedisFeatureStore(cluster_at_plain, prefix=_prefix(), shards=64).check_layout()
        with pytest.raises(ClusterModeMismatch, match=r"set redis\.cluster: false"):
            await RedisFeatureStore(cluster_at_plain, prefix=_prefix(), follow_layout=True).get(
                SPEND, ["u"]
            )
    finally:
        await plain_at_cluster.aclose()
        await cluster_at_plain.aclose()
