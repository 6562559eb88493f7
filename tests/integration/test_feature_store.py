"""The Redis Lua merge equals the Python reference engine, and applies each offset once."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.features.batch import build_encoded
from driftline.features.codec import decode_delta, encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.state import Delta, EntityState
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import FeatureVersionConflict, RedisFeatureStore, entity_key
from driftline.sinks.redis_client import connect_redis

GROUP = {
    "name": "spend",
    "version": 1,
    "source": "tx",
    "entity_key": "user_id",
    "values": {"amount": ["count", "sum", "mean", "min", "max", "std"], "qty": ["sum", "max"]},
    "distinct": ["category"],
    "last": ["amount", "category"],
    "windows": ["1m", "5m", "1h"],
}


def close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def random_events(rng: random.Random, n: int, t0: int) -> list[ParsedEvent]:
    events = []
    t = t0
    for i in range(n):
        t += rng.randint(0, 4000)
        user = f"u{rng.randint(0, 6)}"
        data = {
            "user_id": user,
            "amount": round(rng.lognormvariate(3, 1), 2) if rng.random() > 0.05 else "n/a",
            "qty": rng.randint(1, 5),
            "category": rng.choice(["a", "b", "c", "d"] + [f"x{i}" for i in range(40)]),
        }
        events.append(ParsedEvent(user, t - rng.randint(0, 20_000), data))
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lua_merge_matches_reference_engine(redis_url: str, seed: int) -> None:
    group = FeatureGroup.from_config(GROUP)
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=f"it-{uuid.uuid4().hex[:6]}")
    rng = random.Random(seed)
    events = random_events(rng, 600, 1_700_000_000_000)
    reference: dict[str, object] = {}
    offset = -1
    try:
        i = 0
        while i < len(events):
            size = rng.randint(1, 80)
            batch = events[i : i + size]
            i += size
            deltas = build_deltas(group, batch)
            for entity, delta in deltas.items():
                reference[entity] = apply_delta(group, reference.get(entity), delta)  # type: ignore[arg-type]
            ok, stored = await store.apply(
                "tx",
                0,
                expected_offset=offset,
                new_offset=offset + len(batch),
                watermark_ms=None,
                deltas=[(group, deltas)],
            )
            assert ok and stored == offset + len(batch)
            offset = stored
        entities = sorted(reference)
        newest = max(e.event_time_ms for e in events)
        for as_of in (newest, newest + 30_000, newest + 400_000, newest + 4_000_000):
            got = await store.get(group, entities, as_of_ms=as_of)
            for entity, vector in zip(entities, got, strict=True):
                want = read_features(group, reference[entity], as_of)  # type: ignore[arg-type]
                assert vector.newest_event_ms == want.newest_event_ms
                for name, value in want.values.items():
                    assert close(vector.values[name], value), (
                        entity,
                        as_of,
                        name,
                        vector.values[name],
                        value,
                    )
    finally:
        await client.aclose()


async def test_offset_compare_and_set_applies_each_batch_once(redis_url: str) -> None:
    group = FeatureGroup.from_config(GROUP)
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=f"it-{uuid.uuid4().hex[:6]}")
    try:
        event = ParsedEvent(
            "u1", 1_700_000_000_000, {"user_id": "u1", "amount": 5.0, "qty": 1, "category": "a"}
        )
        deltas = [(group, build_deltas(group, [event]))]
        assert (await store.partition_state("tx", 3)).offset == -1
        assert await store.apply(
            "tx", 3, expected_offset=-1, new_offset=10, watermark_ms=5, deltas=deltas
        ) == (True, 10)
        # a replay (or a stale worker) that still believes the offset is -1 is refused
        assert await store.apply(
            "tx", 3, expected_offset=-1, new_offset=10, watermark_ms=5, deltas=deltas
        ) == (False, 10)
        state = await store.partition_state("tx", 3)
        assert (state.offset, state.watermark_ms) == (10, 5)
        [vector] = await store.get(group, ["u1"], as_of_ms=1_700_000_000_000)
        assert vector.values["amount_count_1m"] == 1
        assert vector.values["amount_last"] == 5.0 and vector.values["category_last"] == "a"
        [missing] = await store.get(group, ["nobody"], as_of_ms=1_700_000_000_000)
        assert missing.values["amount_count_1m"] == 0 and missing.newest_event_ms is None
        ttl = await client.pttl(f"{store.prefix}:fg:spend:v1:u1")
        assert 0 < ttl <= group.ttl_ms
    finally:
        await client.aclose()


async def test_changed_definition_needs_a_new_version(redis_url: str) -> None:
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=f"it-{uuid.uuid4().hex[:6]}")
    try:
        await store.register(FeatureGroup.from_config(GROUP))
        await store.register(FeatureGroup.from_config(GROUP))  # same definition: fine
        changed = {**GROUP, "windows": ["1m", "5m", "24h"]}
        with pytest.raises(FeatureVersionConflict, match="bump 'version'"):
            await store.register(FeatureGroup.from_config(changed))
        await store.register(FeatureGroup.from_config({**changed, "version": 2}))
    finally:
        await client.aclose()


async def test_registration_records_lineage_and_every_contract(redis_url: str) -> None:
    from driftline.sinks.registry_store import read_deployed

    client = connect_redis(redis_url)
    prefix = f"it-{uuid.uuid4().hex[:6]}"
    store = RedisFeatureStore(client, prefix=prefix)
    group = FeatureGroup.from_config(GROUP)

    def lineage(fingerprint: str, topic: str = "tx") -> dict[str, object]:
        schema = {"file": "c.json", "encoding": "json", "fingerprint": fingerprint}
        return {"topic": topic, "schema": {**schema, "schema_ids": {}}}

    try:
        await store.register(group, lineage("sha256:aa"))
        await store.register(group, lineage("sha256:aa", topic="later"))  # same contract
        await store.register(group, lineage("sha256:bb"))  # a compatible contract change
        [deployed], problems = await read_deployed(client, prefix, ["spend"], scan=False)
        assert problems == []
        assert deployed.lineage == lineage("sha256:aa")  # as first deployed
        assert [fp for fp, _ in deployed.contracts] == ["sha256:aa", "sha256:bb"]
        assert deployed.contracts[0][1] <= deployed.contracts[1][1]
    finally:
        await client.aclose()


async def test_touch_keeps_the_latest_write_time(redis_url: str) -> None:
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=f"it-{uuid.uuid4().hex[:6]}")
    group = FeatureGroup.from_config(GROUP)
    try:
        await store.touch(group, 2_000)
        await store.touch(group, 1_000)  # a worker with a slower clock
        key = f"{store.prefix}:registry:spend"
        assert await client.hget(key, "v1:last_write_ms") == b"2000"
        await store.touch(group, 3_000)
        assert await client.hget(key, "v1:last_write_ms") == b"3000"
    finally:
        await client.aclose()


VALUES_ONLY = {
    "name": "plain",
    "version": 1,
    "source": "tx",
    "entity_key": "user_id",
    "values": {"amount": ["count", "mean", "std"]},
    "windows": ["30s", "2m"],
}


@pytest.mark.parametrize(
    ("config", "encoded"),
    [(GROUP, False), (VALUES_ONLY, False), (VALUES_ONLY, True)],
    ids=["sketches", "values-only", "values-only-batch-form"],
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
async def test_stored_rings_are_the_reference_rings_byte_for_byte(
    redis_url: str, config: dict[str, object], encoded: bool, data: st.DataObject
) -> None:
    """The script's merge join keeps, drops and merges exactly the reference's buckets.

    Batches jump forward (pruning whole rings), go back in time (delta buckets
    before, between and after the stored ones, some already pruned) and repeat
    buckets, so every branch of the join runs; the stored blobs must be the
    encoding of the reference state, bit for bit.  ``encoded``: the worker's
    batch form (features/batch.py) hands the script blobs it made with numpy.
    """
    group = FeatureGroup.from_config(config)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = random.Random(seed)
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=f"it-{uuid.uuid4().hex[:6]}")
    reference: dict[str, EntityState] = {}
    offset = -1
    t = 1_700_000_000_000
    try:
        for _ in range(data.draw(st.integers(1, 12), label="batches")):
            t += rng.choice([0, 500, 3_000, 70_000, 4_000_000])
            batch = []
            for _ in range(rng.randint(1, 30)):
                user = f"u{rng.randint(0, 3)}"
                when = t - rng.choice([0, 0, 200, 5_000, 20_000, 90_000, 400_000])
                amount = rng.choice([rng.uniform(-5, 50), 3.0, None])
                row = {"user_id": user, "amount": amount, "qty": rng.randint(1, 3)}
                row["category"] = rng.choice(["a", "b", None] + [f"x{i}" for i in range(50)])
                batch.append(ParsedEvent(user, when, row))
            deltas: Mapping[str, Delta] = build_deltas(group, batch)
            if encoded:
                batch_form = build_encoded(group, batch)
                assert batch_form is not None
                deltas = batch_form
            for entity, delta in deltas.items():
                reference[entity] = apply_delta(
                    group, reference.get(entity), decode_delta(group, delta)
                )
            ok, offset = await store.apply(
                "tx",
                0,
                expected_offset=offset,
                new_offset=offset + len(batch),
                watermark_ms=None,
                deltas=[(group, deltas)],
            )
            assert ok
        for entity, want in reference.items():
            stored = await client.hgetall(entity_key(store.prefix, group, entity))
            for r in group.layout.resolutions:
                ring = want.rings.get(r)
                blob = stored.get(f"r{r}".encode())
                if ring:
                    assert blob == encode_ring(group, ring), (entity, r)
                else:
                    assert blob is None, (entity, r)
    finally:
        await client.aclose()
