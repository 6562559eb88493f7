"""Reads in the past are exact or refused: serve's API on a real Redis and a real offline log.

The store holds what the worker wrote for every event; the log holds the same
accepted events.  A read as of ``t`` must equal the reference engine over the
events with an event time at or before ``t`` (``last`` the newest of them, a
tie the later record's), whether the online store answers it (``t`` at or
after the entity's newest event) or the log does (before it, or an entity
whose key expired).  Without a log, or with a log behind the worker, such a
read is a 409 that says why.
"""

from __future__ import annotations

import math
import random
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.offline_log import LogLayout, OfflineLog
from driftline.sinks.redis_client import RedisClient, connect_redis
from driftline.streams.serve import past as past_module
from driftline.streams.serve.api import ApiError, FeatureApi
from driftline.streams.serve.models import BatchRequest
from driftline.streams.serve.past import PastReader

T0 = 1_700_000_000_000
SOURCE = TOPIC = "transactions"
GROUP = FeatureGroup.from_config(
    {
        "name": "spend",
        "version": 1,
        "source": SOURCE,
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum", "max"]},
        "distinct": ["category"],
        "last": ["amount", "category"],
        "windows": ["1m", "10m"],
    }
)
LAYOUT = LogLayout.from_declared(
    {"user_id": ["string"], "amount": ["number"], "category": ["string"], "event_time": ["integer"]}
)


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def _events(rng: random.Random) -> dict[int, list[ParsedEvent]]:
    out: dict[int, list[ParsedEvent]] = {0: [], 1: []}
    for _ in range(800):
        user = f"u{rng.randint(0, 15)}"
        t = T0 + rng.randint(0, 1200) * 1000  # 20 minutes, many equal times
        data = {"user_id": user, "amount": rng.randint(0, 50) * 1.0, "category": rng.choice("abc")}
        out[zlib.crc32(user.encode()) % 2].append(ParsedEvent(user, t, data))
    return out


async def _ready(client: RedisClient, root: Path, events: dict[int, list[ParsedEvent]]) -> str:
    """The worker's writes in Redis and the archiver's log; returns the key prefix."""
    prefix = f"past{uuid.uuid4().hex[:6]}"
    store = RedisFeatureStore(client, prefix=prefix)
    log = OfflineLog(str(root))
    for p, evs in events.items():
        for lo in range(0, len(evs), 150):
            chunk = evs[lo : lo + 150]
            recs = [Rec(TOPIC, p, lo + i, e.event_time_ms) for i, e in enumerate(chunk)]
            log.append(
                SOURCE, LAYOUT.to_table(chunk, recs), {(TOPIC, p): (lo - 1, lo + len(chunk) - 1)}
            )
            ok, _ = await store.apply(
                SOURCE, p, expected_offset=lo - 1, new_offset=lo + len(chunk) - 1,
                watermark_ms=None, deltas=[(GROUP, build_deltas(GROUP, chunk))],
            )  # fmt: skip
            assert ok
    return prefix


def _api(client: RedisClient, prefix: str, root: Path | None, now: int) -> FeatureApi:
    store = RedisFeatureStore(client, prefix=prefix)
    past = None
    if root is not None:
        past = PastReader(
            OfflineLog(str(root)),
            topics={SOURCE: TOPIC},
            layouts={SOURCE: LAYOUT},
            entity_keys={SOURCE: "user_id"},
            offsets=store,
        )

    async def nothing() -> list[dict[str, Any]]:
        return []

    return FeatureApi(store, [GROUP], registry=nothing, ping=nothing, clock=lambda: now, past=past)


def _reference(events: dict[int, list[ParsedEvent]], entity: str, t: int) -> dict[str, Any]:
    mine = [
        (e.event_time_ms, p, o, e)
        for p, evs in events.items()
        for o, e in enumerate(evs)
        if e.entity == entity and e.event_time_ms <= t
    ]
    state = None
    for *_, e in sorted(mine, key=lambda x: x[:3]):  # a tie: the later record wins
        state = apply_delta(GROUP, state, build_deltas(GROUP, [e])[entity])
    return read_features(GROUP, state, t).values


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    c = connect_redis(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


async def test_reads_in_the_past_equal_the_engine_over_the_events_before_them(
    client: RedisClient, tmp_path: Path
) -> None:
    rng = random.Random(3)
    events = _events(rng)
    prefix = await _ready(client, tmp_path / "log", events)
    # one entity's key expired (its events are only in the log)
    await client.delete(f"{prefix}:fg:spend:v1:u3")
    api = _api(client, prefix, tmp_path / "log", now=T0 + 3_600_000)
    users = [f"u{i}" for i in range(17)]  # u16 never had an event
    times = [T0 - 1, T0 + 1_200_000, T0 + 1_500_000] + [
        T0 + rng.randint(0, 1_300) * 1000 for _ in range(12)
    ]
    wrong = []
    for t in times:
        doc = await api.batch("spend", BatchRequest(entities=users, as_of_ms=t))
        for row in doc["results"]:
            want = _reference(events, row["entity"], t)
            wrong += [
                (row["entity"], t, n, row["features"][n], want[n])
                for n in want
                if not _same(row["features"][n], want[n])
            ]
    assert not wrong, wrong[:10]
    # the comparison has teeth: reads before the newest event see a different last value
    mid = T0 + 600_000
    u1 = (await api.features("spend", "u1", None, None, mid))["features"]
    assert u1["amount_count_10m"] == _reference(events, "u1", mid)["amount_count_10m"] > 0


async def test_a_read_the_online_store_cannot_answer_is_refused_with_the_reason(
    client: RedisClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events(random.Random(4))
    prefix = await _ready(client, tmp_path / "log", events)
    now = T0 + 3_600_000
    newest = max(e.event_time_ms for e in events[0] + events[1] if e.entity == "u1")
    # without a log: refused, saying why and what answers it
    bare = _api(client, prefix, None, now)
    with pytest.raises(ApiError) as refused:
        await bare.features("spend", "u1", None, None, newest - 1)
    assert refused.value.status == 409
    assert "before the newest stored event of entity 'u1'" in refused.value.message
    assert "offline log" in refused.value.message
    # at or after the newest event, or not in the past: the online store answers
    assert (await bare.features("spend", "u1", None, None, newest))["features"]
    assert (await bare.features("spend", "nobody", None, None, None))["newest_event_ms"] is None
    # a log that is behind the worker: refused once serve has waited a little
    monkeypatch.setattr(past_module, "CATCH_UP_S", 0.2)
    store = RedisFeatureStore(client, prefix=prefix)
    ok, _ = await store.apply(
        SOURCE, 0, expected_offset=len(events[0]) - 1, new_offset=len(events[0]) + 9,
        watermark_ms=None, deltas=[],
    )  # fmt: skip
    assert ok
    lagging = _api(client, prefix, tmp_path / "log", now)
    with pytest.raises(ApiError) as behind:
        await lagging.features("spend", "u1", None, None, newest - 1)
    assert behind.value.status == 409 and "10 record(s) behind the worker" in behind.value.message
    # a missing log
    gone = _api(client, prefix, tmp_path / "elsewhere", now)
    with pytest.raises(ApiError) as missing:
        await gone.features("spend", "u1", None, None, newest - 1)
    assert "no offline log of source transactions" in missing.value.message
