"""``FeatureClient`` over the store and the registry, on their in-memory doubles.

The client's Redis backend reads group definitions from the registry the
workers keep and features from the online store; ``MemoryRegistryStore`` and
``MemoryFeatureStore`` stand in for both (the Redis ones are read in
``tests/integration/test_readme.py`` and ``tests/e2e/test_serve.py``), so the
client's own rules are pinned here: versions, names, freshness, errors.
"""

from __future__ import annotations

import pytest

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas, read_features
from driftline.schemas import ParsedEvent
from driftline.sinks.exceptions import TransientError
from driftline.sinks.feature_client import AsyncFeatureClient, FeatureClientError, _StoreBackend
from driftline.sinks.feature_store import MemoryFeatureStore
from driftline.sinks.registry_store import MemoryRegistryStore


def spend(version: int = 1, windows: tuple[str, ...] = ("5m", "1h")) -> FeatureGroup:
    return FeatureGroup.from_config(
        {
            "name": "user_spend",
            "version": version,
            "source": "tx",
            "entity_key": "user_id",
            "values": {"amount": ["count", "mean"]},
            "last": ["country"],
            "windows": list(windows),
        }
    )


NOW = 10_000_000
EVENTS = [
    ParsedEvent("u1", NOW - 60_000, {"amount": 10.0, "country": "DE"}),
    ParsedEvent("u1", NOW - 30_000, {"amount": 30.0, "country": "FR"}),
    ParsedEvent("u2", NOW - 20 * 60_000, {"amount": 5.0, "country": "DE"}),
]


async def stores(*groups: FeatureGroup) -> tuple[MemoryFeatureStore, MemoryRegistryStore]:
    store, registry = MemoryFeatureStore(), MemoryRegistryStore()
    for offset, group in enumerate(groups):
        registry.record(group, now_ms=NOW)
        ok, _ = await store.apply(
            "tx",
            offset,
            expected_offset=-1,
            new_offset=len(EVENTS) - 1,
            watermark_ms=None,
            deltas=[(group, build_deltas(group, EVENTS))],
        )
        assert ok
    return store, registry


def client(
    store: MemoryFeatureStore, registry: MemoryRegistryStore, **versions: int
) -> AsyncFeatureClient:
    async def close() -> None:
        pass

    backend = _StoreBackend(store, registry, prefix="test", versions=versions, close=close)
    return AsyncFeatureClient(backend)


async def test_features_are_read_as_the_engine_computes_them_in_the_order_asked() -> None:
    group = spend()
    read_client = client(*await stores(group))
    asked = ["user_spend:country_last", "user_spend:amount_mean_5m", "user_spend:amount_count_1h"]
    # in the past, an entity without a key cannot be answered exactly: its events may
    # have expired (serve answers it from the offline log)
    with pytest.raises(FeatureClientError, match="'nobody' \\(or it has none\\)"):
        await read_client.get_online_features(["u1", "u2", "nobody"], asked, as_of_ms=NOW)
    # nor u2 as of a time before its newest event
    with pytest.raises(FeatureClientError, match="'u2'"):
        await read_client.get_online_features(["u2"], asked, as_of_ms=NOW - 21 * 60_000)
    rows = await read_client.get_online_features(["u1", "u2"], asked, as_of_ms=NOW)
    rows += await read_client.get_online_features(["nobody"], asked)  # now: exact, empty
    assert [r.entity for r in rows] == ["u1", "u2", "nobody"]
    assert list(rows[0].values) == asked  # the caller's order
    for row, entity in zip(rows[:2], ["u1", "u2"], strict=True):
        [mine] = [e for e in EVENTS if e.entity == entity][-1:]
        engine = read_features(group, build_deltas(group, EVENTS)[entity], NOW).values
        assert row.values == {
            "user_spend:country_last": mine.data["country"],
            "user_spend:amount_mean_5m": engine["amount_mean_5m"],
            "user_spend:amount_count_1h": engine["amount_count_1h"],
        }
        assert row.as_of_ms == NOW and row.newest_event_ms == {"user_spend": mine.event_time_ms}
    assert rows[0].values["user_spend:amount_mean_5m"] == 20.0
    assert rows[1].freshness == {  # u2's last event is 20 minutes old: out of the 5m window
        "user_spend:country_last": "fresh",
        "user_spend:amount_mean_5m": "empty",
        "user_spend:amount_count_1h": "fresh",
    }
    assert rows[2].values["user_spend:amount_count_1h"] == 0
    assert set(rows[2].freshness.values()) == {"empty"}


async def test_the_highest_version_is_read_unless_one_is_pinned() -> None:
    store, registry = await stores(spend(1, ("5m",)), spend(2, ("1h",)))
    [latest] = await client(store, registry).get_online_features(
        ["u2"], ["user_spend:amount_count_1h"], as_of_ms=NOW
    )
    assert latest.values == {"user_spend:amount_count_1h": 1}
    pinned = client(store, registry, user_spend=1)
    [row] = await pinned.get_online_features(["u1"], ["user_spend:amount_count_5m"], as_of_ms=NOW)
    assert row.values == {"user_spend:amount_count_5m": 2}
    with pytest.raises(FeatureClientError, match="amount_count_1h"):
        await pinned.get_online_features(["u1"], ["user_spend:amount_count_1h"], as_of_ms=NOW)
    with pytest.raises(FeatureClientError, match=r"version 3 .*\(versions: v1, v2\)"):
        await client(store, registry, user_spend=3).get_online_features(
            ["u1"], ["user_spend:amount_count_1h"]
        )


async def test_unknown_groups_and_bad_names_are_the_callers_error() -> None:
    reader = client(*await stores(spend()))
    with pytest.raises(
        FeatureClientError, match=r"'other' is not in the registry .*versions: none"
    ):
        await reader.get_online_features(["u1"], ["other:x"])
    with pytest.raises(FeatureClientError, match="group:feature"):
        await reader.get_online_features(["u1"], ["amount_mean_5m"])
    with pytest.raises(FeatureClientError, match="not a string"):
        await reader.get_online_features("u1", ["user_spend:amount_mean_5m"])


async def test_an_unreachable_store_is_a_transient_error() -> None:
    store, registry = await stores(spend())
    store.fail_next = 1
    with pytest.raises(TransientError, match="feature store unavailable"):
        await client(store, registry).get_online_features(["u1"], ["user_spend:amount_mean_5m"])
