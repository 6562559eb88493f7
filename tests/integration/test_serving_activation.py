"""Serving follows ``registry activate`` on a real Redis: FeatureApi and FeatureClient.

Features of two versions of one group are written through
``RedisFeatureStore.apply`` (what a worker computing both does), then the
registry's ``active`` field is switched (``sinks.registry_store.activate``,
what ``driftline registry activate`` writes): every reader switches within
its cache second, and an explicit version reads the other one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_client import AsyncFeatureClient, FeatureClientError
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import RedisClient, connect_redis
from driftline.sinks.registry_store import ActiveVersions, RedisRegistryStore, activate
from driftline.streams.serve.api import ApiError, FeatureApi
from driftline.streams.serve.models import BatchRequest

T = 1_700_000_000_000
V1 = FeatureGroup.from_config(
    {
        "name": "spend",
        "version": 1,
        "source": "tx",
        "entity_key": "user_id",
        "values": {"amount": ["count"]},
        "windows": ["5m"],
    }
)
V2 = FeatureGroup.from_config(
    {
        "name": "spend",
        "version": 2,
        "source": "tx",
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum"]},
        "windows": ["1h"],
    }
)
EVENTS = [
    ParsedEvent("u1", T - 1_000, {"user_id": "u1", "amount": 2.0}),
    ParsedEvent("u1", T - 600_000, {"user_id": "u1", "amount": 5.0}),  # in 1h, not in 5m
]
#: generous: the cache holds a value for 1 s, the rest is a loaded machine's slack
DEADLINE_S = 10.0


@pytest.fixture
async def seeded(redis_url: str) -> AsyncIterator[tuple[RedisClient, str]]:
    prefix = f"activation-{uuid.uuid4().hex[:8]}"
    client = connect_redis(redis_url)
    store = RedisFeatureStore(client, prefix=prefix)
    for group in (V1, V2):
        await store.register(group)
    ok, _ = await store.apply(
        "tx",
        0,
        expected_offset=-1,
        new_offset=len(EVENTS) - 1,
        watermark_ms=None,
        deltas=[(V1, build_deltas(V1, EVENTS)), (V2, build_deltas(V2, EVENTS))],
    )
    assert ok
    now = int(time.time() * 1000)
    for group in (V1, V2):
        await store.touch(group, now)  # as a worker writing both records it
    try:
        yield client, prefix
    finally:
        await client.aclose()


async def until(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], what: str
) -> tuple[Any, float]:
    """Probe until ``done``; the last answer and the seconds it took (fails at the deadline)."""
    start = time.monotonic()
    while True:
        got = await probe()
        if done(got):
            return got, time.monotonic() - start
        if time.monotonic() - start > DEADLINE_S:
            raise AssertionError(f"{what}: still {got!r} after {DEADLINE_S} s")
        await asyncio.sleep(0.02)


async def _none() -> list[dict[str, Any]]:
    return []


def serving(client: RedisClient, prefix: str) -> tuple[FeatureApi, ActiveVersions]:
    active = ActiveVersions(RedisRegistryStore(client, prefix=prefix).active)
    api = FeatureApi(
        RedisFeatureStore(client, prefix=prefix),
        [V2, V1],
        registry=_none,
        ping=client.ping,
        active=active.get,
        clock=lambda: T,
    )
    return api, active


async def test_serving_switches_to_the_activated_version_within_the_cache_second(
    seeded: tuple[RedisClient, str],
) -> None:
    client, prefix = seeded
    api, active = serving(client, prefix)
    first = await api.features("spend", "u1", None, None, None)
    assert (first["version"], first["features"]) == (1, {"amount_count_5m": 1})

    assert await activate(client, prefix, "spend", 2) is None  # nothing was active before
    switched, took = await until(
        lambda: api.features("spend", "u1", None, None, None),
        lambda doc: doc["version"] == 2,
        "GET after activating v2",
    )
    assert switched["features"] == {"amount_count_1h": 2, "amount_sum_1h": 7.0}
    assert took < 1.0 + 2.0  # one cache second, and slack for a loaded machine
    # within a cache second, requests share one read of the registry
    reads = active.reads
    for _ in range(50):
        await api.features("spend", "u1", None, None, None)
    assert active.reads - reads <= 2
    batch = await api.batch("spend", BatchRequest(entities=["u1", "nobody"]))
    assert batch["version"] == 2 and batch["results"][1]["features"]["amount_count_1h"] == 0

    # an explicit version reads the other one; an unconfigured one is a 404
    old = await api.features("spend", "u1", None, None, None, version=1)
    assert (old["version"], old["features"]) == (1, {"amount_count_5m": 1})
    old_batch = await api.batch("spend", BatchRequest(entities=["u1"], version=1))
    assert old_batch["version"] == 1
    assert old_batch["results"][0]["features"] == {"amount_count_5m": 1}
    for call in (
        api.features("spend", "u1", None, None, None, version=3),
        api.batch("spend", BatchRequest(entities=["u1"], version=3)),
    ):
        with pytest.raises(ApiError) as info:
            await call
        assert info.value.status == 404 and "(configured: 1, 2)" in info.value.message

    # switching back is the same write
    assert await activate(client, prefix, "spend", 1) == 2
    back, _ = await until(
        lambda: api.features("spend", "u1", None, None, None),
        lambda doc: doc["version"] == 1,
        "GET after switching back to v1",
    )
    assert back["features"] == {"amount_count_5m": 1}


async def test_a_failed_read_of_the_active_version_keeps_the_last_one(
    seeded: tuple[RedisClient, str], redis_url: str
) -> None:
    client, prefix = seeded
    await activate(client, prefix, "spend", 2)
    # the registry is read from a Redis that goes away (nothing listens on port 1)
    broken = connect_redis("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    registries = [RedisRegistryStore(client, prefix=prefix)]

    async def read_active(name: str) -> int | None:
        return await registries[-1].active(name)

    active = ActiveVersions(read_active, cache_s=0.0)
    api = FeatureApi(
        RedisFeatureStore(client, prefix=prefix),
        [V1, V2],
        registry=_none,
        ping=client.ping,
        active=active.get,
        clock=lambda: T,
    )
    try:
        assert (await api.features("spend", "u1", None, None, None))["version"] == 2
        registries.append(RedisRegistryStore(broken, prefix=prefix))
        assert (await api.features("spend", "u1", None, None, None))["version"] == 2
        assert active.reads == 2  # it did read again, and kept the last value
        fresh, _ = serving(client, prefix)
        fresh.active = ActiveVersions(read_active).get  # no earlier read to fall back to
        with pytest.raises(ApiError) as info:
            await fresh.features("spend", "u1", None, None, None)
        assert info.value.status == 503
    finally:
        await broken.aclose()


async def test_the_feature_client_reads_the_active_version_or_the_one_pinned(
    seeded: tuple[RedisClient, str], redis_url: str
) -> None:
    client, prefix = seeded
    reader = AsyncFeatureClient.redis(redis_url, prefix=prefix)
    pinned = AsyncFeatureClient.redis(redis_url, prefix=prefix, versions={"spend": 2})
    try:
        # none activated: the lowest version the workers write (what serve reads too)
        [row] = await reader.get_online_features(["u1"], ["spend:amount_count_5m"], as_of_ms=T)
        assert row.values == {"spend:amount_count_5m": 1}
        [row] = await pinned.get_online_features(["u1"], ["spend:amount_sum_1h"], as_of_ms=T)
        assert row.values == {"spend:amount_sum_1h": 7.0}

        await activate(client, prefix, "spend", 2)

        async def read_v2() -> Any:
            try:
                [got] = await reader.get_online_features(
                    ["u1"], ["spend:amount_sum_1h"], as_of_ms=T
                )
            except FeatureClientError as exc:  # v1 has no such feature until the switch
                return exc
            return got.values

        values, took = await until(read_v2, lambda got: isinstance(got, dict), "FeatureClient")
        assert values == {"spend:amount_sum_1h": 7.0} and took < 1.0 + 2.0
    finally:
        await reader.aclose()
        await pinned.aclose()
