"""Which version a reader serves: the cached active field, FeatureApi, FeatureClient (doubles)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.features.reader import Reading
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_client import (
    LIVE_SLACK_MS,
    AsyncFeatureClient,
    _StoreBackend,
    default_version,
)
from driftline.sinks.feature_store import MemoryFeatureStore
from driftline.sinks.registry_store import ActiveVersions, MemoryRegistryStore
from driftline.streams.serve.api import ApiError, FeatureApi
from driftline.streams.serve.models import BatchRequest

NOW = 10_000_000


def spend(version: int) -> FeatureGroup:
    windows = {1: ["5m"], 2: ["1h"], 3: ["1m"]}[version]
    return FeatureGroup.from_config(
        {
            "name": "spend",
            "version": version,
            "source": "tx",
            "entity_key": "user_id",
            "values": {"amount": ["count"]},
            "windows": windows,
        }
    )


# ------------------------------------------------------------------ the cache


class Reads:
    """A registry read that counts calls, can fail, and can be held open."""

    def __init__(self) -> None:
        self.value: int | None = None
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, name: str) -> int | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("redis down (test)")
        return self.value


async def test_the_active_version_is_reread_once_the_cache_second_is_over() -> None:
    reads, clock = Reads(), [100.0]
    active = ActiveVersions(reads, cache_s=1.0, monotonic=lambda: clock[0])
    assert await active.get("spend") is None
    reads.value = 2  # activated
    clock[0] = 100.99
    assert await active.get("spend") is None and reads.calls == 1  # within the second
    clock[0] = 101.0
    assert await active.get("spend") == 2 and reads.calls == 2
    assert await active.get("other") == 2 and reads.calls == 3  # per group


async def test_concurrent_callers_share_one_read() -> None:
    reads = Reads()
    reads.value, reads.gate = 3, asyncio.Event()
    active = ActiveVersions(reads)
    waiting = [asyncio.ensure_future(active.get("spend")) for _ in range(20)]
    await asyncio.sleep(0)
    reads.gate.set()
    assert await asyncio.gather(*waiting) == [3] * 20
    assert reads.calls == 1


async def test_a_failed_read_falls_back_to_the_last_value_or_raises() -> None:
    reads, clock = Reads(), [0.0]
    active = ActiveVersions(reads, cache_s=1.0, monotonic=lambda: clock[0])
    reads.fail = True
    with pytest.raises(ConnectionError):
        await active.get("spend")  # nothing known: the caller answers 503
    reads.fail, reads.value = False, 2
    assert await active.get("spend") == 2
    clock[0], reads.fail = 5.0, True
    assert await active.get("spend") == 2  # the last value read
    reads.fail, reads.value = False, 1
    assert await active.get("spend") == 1  # a failure is not cached


# ------------------------------------------------------------------ FeatureApi


class Store(MemoryFeatureStore):
    """Notes which version each read was for."""

    def __init__(self) -> None:
        super().__init__()
        self.read_versions: list[int] = []

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]:
        self.read_versions.append(group.version)
        return await super().read(group, entities, as_of_ms)


async def _none() -> Any:
    return []


def api(store: Store, active: Any, *groups: FeatureGroup) -> FeatureApi:
    return FeatureApi(
        store, list(groups), registry=_none, ping=_none, active=active, clock=lambda: NOW
    )


async def test_serving_reads_the_active_version_or_the_one_asked_for() -> None:
    reads, store = Reads(), Store()
    served = api(store, ActiveVersions(reads, cache_s=0.0).get, spend(2), spend(1))
    got = await served.features("spend", "u1", None, None, None)
    assert (got["version"], list(got["features"])) == (1, ["amount_count_5m"])  # the lowest
    reads.value = 2
    got = await served.batch("spend", BatchRequest(entities=["u1", "u2"]))
    assert got["version"] == 2 and list(got["results"][0]["features"]) == ["amount_count_1h"]
    reads.value = 7  # names a version not configured here: the lowest configured
    assert (await served.features("spend", "u1", None, None, None))["version"] == 1
    got = await served.features("spend", "u1", None, None, None, version=2)
    assert got["version"] == 2
    got = await served.batch("spend", BatchRequest(entities=["u1"], version=1))
    assert got["version"] == 1
    with pytest.raises(ApiError) as info:
        await served.features("spend", "u1", None, None, None, version=3)
    assert (info.value.status, info.value.message) == (
        404,
        "feature group 'spend' has no version 3 here (configured: 1, 2)",
    )
    with pytest.raises(ApiError) as info:
        await served.batch("spend", BatchRequest(entities=["u1"], version=3))
    assert info.value.status == 404
    assert store.read_versions == [1, 2, 1, 2, 1]


async def test_the_active_field_is_not_read_for_a_single_version_and_503_without_it() -> None:
    reads = Reads()
    reads.fail = True
    one = api(Store(), ActiveVersions(reads).get, spend(1))
    assert (await one.features("spend", "u1", None, None, None))["version"] == 1
    assert reads.calls == 0
    two = api(Store(), ActiveVersions(reads).get, spend(1), spend(2))
    with pytest.raises(ApiError) as info:
        await two.features("spend", "u1", None, None, None)
    assert info.value.status == 503 and "active version unknown" in info.value.message
    # an explicit version needs no registry read
    assert (await two.features("spend", "u1", None, None, None, version=2))["version"] == 2


# ------------------------------------------------------------------ FeatureClient


def test_a_reader_without_config_picks_the_lowest_version_being_written() -> None:
    registry = MemoryRegistryStore()
    for g in (spend(1), spend(2), spend(3)):
        registry.record(g, now_ms=NOW)

    def pick(fields: dict[str, str]) -> int | None:
        registry.hashes["spend"].update(fields)
        versions, _ = asyncio.run(registry.deployed(["spend"], scan=False))
        chosen = default_version(versions)
        return None if chosen is None else chosen.version

    assert pick({}) == 3  # no write recorded: the highest recorded, as before
    # v1 written, v2 and v3 not yet (just deployed): v1
    assert pick({"v1:last_write_ms": str(NOW)}) == 1
    # v1 and v2 written together: the lowest
    assert pick({"v2:last_write_ms": str(NOW)}) == 1
    # v1 retired: the others go on being written, v1 falls behind
    later = NOW + LIVE_SLACK_MS + 1
    assert pick({"v2:last_write_ms": str(later), "v3:last_write_ms": str(later)}) == 2
    assert pick({"active": "3"}) == 3  # an activated version wins


async def test_the_feature_client_follows_an_activation() -> None:
    events = [ParsedEvent("u1", NOW - 1_000, {"amount": 1.0})]
    store, registry = MemoryFeatureStore(), MemoryRegistryStore()
    for partition, group in enumerate((spend(1), spend(2))):
        registry.record(group, now_ms=NOW)
        registry.hashes["spend"][f"v{group.version}:last_write_ms"] = str(NOW)
        await store.apply(
            "tx",
            partition,
            expected_offset=-1,
            new_offset=0,
            watermark_ms=None,
            deltas=[(group, build_deltas(group, events))],
        )

    async def close() -> None:
        pass

    def reader(**versions: int) -> AsyncFeatureClient:
        return AsyncFeatureClient(
            _StoreBackend(
                store, registry, prefix="t", versions=versions, close=close, active_cache_s=0.0
            )
        )

    client = reader()
    [row] = await client.get_online_features(["u1"], ["spend:amount_count_5m"], as_of_ms=NOW)
    assert row.values == {"spend:amount_count_5m": 1}  # v1: the lowest being written
    await registry.activate("spend", 2)
    [row] = await client.get_online_features(["u1"], ["spend:amount_count_1h"], as_of_ms=NOW)
    assert row.values == {"spend:amount_count_1h": 1}  # v2 now
    pinned = reader(spend=1)
    [row] = await pinned.get_online_features(["u1"], ["spend:amount_count_5m"], as_of_ms=NOW)
    assert row.values == {"spend:amount_count_5m": 1}
