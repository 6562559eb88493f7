"""``driftline backfill`` on a real Redis and a real offline log (Delta Lake).

The live workers are played by the store's own writes, as the worker makes
them: version 1 alone up to a handover offset per partition, then versions 1
and 2 together, the version 2 marks set by the first write (or by an
assignment, ``mark_live``).  The backfill then fills version 2 from the log, and
every entity's version 2 features must equal the reference engine run over
every event in offset order: the handover counts no event twice and misses
none, and a ``last`` value on a tie of event times is the later record's.
On one Redis and on the sharded layout; interrupted and resumed too.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.registry import BackfillProgress, backfill_field
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.offline_log import LogLayout, OfflineLog
from driftline.sinks.redis_client import RedisClient, connect_redis
from driftline.streams.backfill import BackfillError, backfill, backfill_source
from driftline.streams.settings import load_settings
from driftline.streams.worker.retry import EffectFailed

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "schemas" / "contracts" / "transactions.schema.json"
T0 = 1_700_000_000_000
SOURCE, TOPIC = "transactions", "transactions"
V2 = {
    "name": "spend",
    "version": 2,
    "source": SOURCE,
    "entity_key": "user_id",
    "values": {"amount": ["count", "sum", "mean", "max"]},
    "distinct": ["category"],
    "last": ["amount", "category"],
    "windows": ["1m", "1h"],
}
V1 = {**V2, "version": 1, "values": {"amount": ["sum"]}, "distinct": [], "windows": ["5m"]}


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def _config(tmp: Path, url: str, prefix: str, shards: int, cluster: bool) -> Path:
    path = tmp / "driftline.yaml"
    doc = {
        "app_id": "bf",
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "redis": {"url": url, "key_prefix": prefix, "shards": shards, "cluster": cluster},
        "offline": {"path": str(tmp / "log")},
        "sources": [
            {
                "name": SOURCE,
                "topic": TOPIC,
                "schema": str(CONTRACT),
                "encoding": "json",
                "entity_key": "user_id",
                "event_time": "event_time",
            }
        ],
        "feature_groups": [V2],
    }
    path.write_bytes(orjson.dumps(doc))  # JSON is YAML
    return path


def _events(
    rng: random.Random, partitions: int, n: int, base: int = T0
) -> dict[int, list[ParsedEvent]]:
    """Events keyed by user, each user on one partition (as Kafka keys them); many ties."""
    out: dict[int, list[ParsedEvent]] = {p: [] for p in range(partitions)}
    for _ in range(n):
        user = f"u{rng.randint(0, 40)}"
        t = base + rng.randint(0, 40) * 1000  # 41 distinct times: many ties, at the newest too
        data: dict[str, Any] = {
            "user_id": user,
            "amount": round(rng.uniform(0, 100), 2),
            "category": rng.choice(["a", "b", "c", "d", "e"]),
            "event_time": t,
        }
        out[zlib.crc32(user.encode()) % partitions].append(ParsedEvent(user, t, data))
    return out


@pytest.fixture(params=["one-redis", "sharded"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[RedisClient, Path, int, bool]]:
    if request.param == "one-redis":
        url, shards, cluster = request.getfixturevalue("redis_url"), 1, False
    else:
        url, shards, cluster = request.getfixturevalue("redis_cluster_url"), 16, True
    client = connect_redis(url, cluster=cluster)
    prefix = f"bf{uuid.uuid4().hex[:6]}"
    try:
        yield client, _config(tmp_path, url, prefix, shards, cluster), shards, cluster
    finally:
        await client.aclose()


async def _live(
    store: RedisFeatureStore,
    v1: FeatureGroup,
    v2: FeatureGroup,
    events: Sequence[ParsedEvent],
    partition: int,
    handover: int,
    rng: random.Random,
    adopt: bool,
) -> None:
    """The worker's writes of one partition: v1 alone up to ``handover``, then v1 and v2."""
    offset = -1
    while offset < len(events) - 1:
        if offset == handover and adopt:
            await store.mark_live(SOURCE, partition, [v1, v2])
        last = min(len(events) - 1, offset + rng.randint(1, 25))
        if offset < handover < last:
            last = handover  # the worker restarts with v2 in its config here
        batch = events[offset + 1 : last + 1]
        groups = [v1] if last <= handover else [v1, v2]
        state = await store.partition_state(SOURCE, partition)
        ok, _ = await store.apply(
            SOURCE,
            partition,
            expected_offset=offset,
            new_offset=last,
            watermark_ms=None,
            deltas=[(g, build_deltas(g, batch)) for g in groups],
            ahead=state.ahead,
        )
        assert ok
        offset = last
    if handover == offset and adopt:  # assigned to a worker with v2, no record since
        await store.mark_live(SOURCE, partition, [v1, v2])


def _reference(
    group: FeatureGroup, events: dict[int, list[ParsedEvent]], at: int
) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for evs in events.values():
        for e in evs:  # one at a time, in offset order: the later record wins a tie
            states[e.entity] = apply_delta(
                group, states.get(e.entity), build_deltas(group, [e])[e.entity]
            )
    return {u: read_features(group, s, at).values for u, s in states.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


async def _prepare(
    client: RedisClient,
    config: Path,
    shards: int,
    seed: int,
    events: dict[int, list[ParsedEvent]] | None = None,
    handovers: dict[int, int] | None = None,
    unassigned: int | None = 1,
) -> tuple[RedisFeatureStore, FeatureGroup, dict[int, list[ParsedEvent]], int]:
    """Log, registry and live writes; returns the events and how many are the backfill's."""
    settings = load_settings(config)
    rng = random.Random(seed)
    v1, v2 = FeatureGroup.from_config(V1), FeatureGroup.from_config(V2)
    events = _events(rng, 3, 1500) if events is None else events
    log = OfflineLog(settings.offline.path)
    layout = LogLayout.from_declared(
        {
            "user_id": ["string"],
            "amount": ["number"],
            "category": ["string"],
            "event_time": ["integer"],
        }
    )
    for p, evs in events.items():
        for lo in range(0, len(evs), 400):  # a few commits, as the archiver makes them
            chunk = evs[lo : lo + 400]
            recs = [Rec(TOPIC, p, lo + i, e.event_time_ms) for i, e in enumerate(chunk)]
            log.append(
                SOURCE, layout.to_table(chunk, recs), {(TOPIC, p): (lo - 1, lo + len(chunk) - 1)}
            )
    store = RedisFeatureStore(client, prefix=settings.redis.key_prefix, shards=shards)
    await store.check_layout()
    await store.register(v2)
    if handovers is None:
        handovers = {0: -1, 1: rng.randint(100, 400), 2: len(events[2]) - 1}
    for p, evs in events.items():
        await _live(store, v1, v2, evs, p, handovers[p], rng, adopt=p != unassigned)
    return store, v2, events, sum(h + 1 for h in handovers.values())


def _from() -> str:
    return dt.datetime.fromtimestamp((T0 - 60_000) / 1000, dt.UTC).isoformat()


async def _check(
    store: RedisFeatureStore,
    v2: FeatureGroup,
    events: dict[int, list[ParsedEvent]],
    at: int = T0 + 401_000,
) -> None:
    want = _reference(v2, events, at)
    users = sorted(want)
    got = await store.get(v2, users, as_of_ms=at)
    wrong = [
        (u, name, g.values[name], want[u][name])
        for u, g in zip(users, got, strict=True)
        for name in want[u]
        if not _same(g.values[name], want[u][name])
    ]
    assert not wrong, wrong[:10]


async def test_backfill_hands_over_at_the_live_marks(
    backend: tuple[RedisClient, Path, int, bool],
) -> None:
    client, config, shards, _ = backend
    store, v2, events, before_marks = await _prepare(client, config, shards, seed=7)
    report = await backfill(
        load_settings(config), str(config), "spend", from_text=_from(), progress=False, wait_s=5
    )
    assert report.total == report.applied == before_marks  # every event up to the marks
    await _check(store, v2, events)
    raw = await client.hget(store.layout.registry_key("spend"), backfill_field(2))
    progress = BackfillProgress.parse(raw)
    assert progress is not None and progress.state == "done" and progress.events == report.total
    # a second run applies nothing more
    again = await backfill(
        load_settings(config), str(config), "spend", from_text=_from(), progress=False, wait_s=5
    )
    assert again.applied == 0 and again.resumed == report.total
    await _check(store, v2, events)


class _Crash(Exception):
    pass


def crash_at(group: FeatureGroup, at: int) -> Any:
    """``RedisFeatureStore.apply`` that raises :class:`_Crash` at the backfill's write ``at``
    of ``group`` (1 = its first), and writes everything else as the store does."""
    real = RedisFeatureStore.apply
    calls = 0

    async def crashing(self: RedisFeatureStore, source: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if source == backfill_source(SOURCE, group):
            calls += 1
            if calls == at:
                raise _Crash
        return await real(self, source, *args, **kwargs)

    return crashing


async def test_an_interrupted_backfill_resumes_without_counting_twice(
    backend: tuple[RedisClient, Path, int, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, config, shards, _ = backend
    store, v2, events, _ = await _prepare(client, config, shards, seed=11)
    real = RedisFeatureStore.apply
    # mid-way: some partitions written, one not at all
    monkeypatch.setattr(RedisFeatureStore, "apply", crash_at(v2, 4))
    with pytest.raises(EffectFailed) as crash:  # writes of at most 5 entities: many of them
        await backfill(
            load_settings(config), str(config), "spend", from_text=_from(), progress=False,
            max_entities=5, wait_s=5,
        )  # fmt: skip
    assert isinstance(crash.value.cause, _Crash)
    raw = await client.hget(store.layout.registry_key("spend"), backfill_field(2))
    progress = BackfillProgress.parse(raw)
    assert progress is not None and progress.state == "running"
    monkeypatch.setattr(RedisFeatureStore, "apply", real)
    report = await backfill(
        load_settings(config), str(config), "spend", from_text=_from(), progress=False,
        max_entities=7, wait_s=5,
    )  # fmt: skip
    assert report.resumed > 0 and report.applied > 0
    await _check(store, v2, events)


async def test_backfill_refuses_what_it_cannot_do_right(
    backend: tuple[RedisClient, Path, int, bool],
) -> None:
    client, config, shards, _ = backend
    settings = load_settings(config)
    with pytest.raises(BackfillError, match="not deployed"):
        await backfill(settings, str(config), "spend", from_text=_from(), progress=False)
    store, *_ = await _prepare(client, config, shards, seed=3)
    with pytest.raises(Exception, match="version"):
        await backfill(settings, str(config), "spend", 5, progress=False)
    # a version recorded before live marks existed cannot be backfilled
    key = store.layout.registry_key("spend")
    doc = orjson.loads(await client.hget(key, "v2") or b"{}")
    doc.pop("marks")
    await client.hset(key, "v2", orjson.dumps(doc))
    with pytest.raises(BackfillError, match="without live marks"):
        await backfill(settings, str(config), "spend", from_text=_from(), progress=False)


#: Midnight UTC (2023-11-15): events around it fall on two event days.
MIDNIGHT = 1_700_006_400_000


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_any_handover_and_any_interruption_give_the_uninterrupted_version(
    redis_url: str, data: st.DataObject
) -> None:
    """Random streams over a day boundary, handover points, write sizes and a crash."""
    seed = data.draw(st.integers(0, 10_000), label="seed")
    rng = random.Random(seed)
    events = _events(rng, 2, data.draw(st.integers(50, 400), label="events"), MIDNIGHT - 20_000)
    handovers = {
        p: data.draw(st.integers(-1, len(evs) - 1), label=f"handover {p}")
        for p, evs in events.items()
    }
    per_write = data.draw(st.integers(1, 12), label="entities per write")
    crash_on = data.draw(st.integers(1, 30), label="crash at write")
    with tempfile.TemporaryDirectory() as tmp:
        client = connect_redis(redis_url)
        prefix = f"bfh{uuid.uuid4().hex[:6]}"
        config = _config(Path(tmp), redis_url, prefix, 1, False)
        try:
            # every partition assigned to a worker with v2 (it marks them all)
            store, v2, events, _ = await _prepare(
                client, config, 1, seed, events, handovers, unassigned=None
            )
            real = RedisFeatureStore.apply

            since = dt.datetime.fromtimestamp((MIDNIGHT - 60_000) / 1000, dt.UTC).isoformat()
            run = functools.partial(
                backfill, load_settings(config), str(config), "spend",
                from_text=since, progress=False, max_entities=per_write, wait_s=5,
            )  # fmt: skip
            RedisFeatureStore.apply = crash_at(v2, crash_on)  # type: ignore[method-assign]
            try:
                await run()
            except EffectFailed as exc:
                assert isinstance(exc.cause, _Crash)
            finally:
                RedisFeatureStore.apply = real  # type: ignore[method-assign]
            await run()
            await _check(store, v2, events, MIDNIGHT + 21_000)
        finally:
            await client.aclose()


async def test_a_worker_without_the_version_after_its_mark_is_found_and_refused(
    backend: tuple[RedisClient, Path, int, bool],
) -> None:
    """A rolling restart gone wrong: a worker with the old config (v1 alone) writes a
    partition after v2's live mark.  v2 misses those events; the backfill says so."""
    client, config, shards, _ = backend
    store, v2, events, _ = await _prepare(client, config, shards, seed=13)
    v1 = FeatureGroup.from_config(V1)
    run = functools.partial(
        backfill, load_settings(config), str(config), "spend", from_text=_from(),
        progress=False, wait_s=5,
    )  # fmt: skip

    async def write(p: int, n: int, groups: list[FeatureGroup], empty: bool = False) -> None:
        state = await store.partition_state(SOURCE, p)
        batch = events[p][:n]
        ok, _ = await store.apply(
            SOURCE,
            p,
            expected_offset=state.offset,
            new_offset=state.offset + n,
            watermark_ms=None,
            deltas=[(g, {} if empty and g is v2 else build_deltas(g, batch)) for g in groups],
            ahead=state.ahead,
        )
        assert ok

    # a worker with v2 whose batch has no event for v2: not a gap
    await write(0, 5, [v1, v2], empty=True)
    assert await store.live_gaps(SOURCE, v2, [0, 1, 2]) == {}
    end = len(events[1]) - 1
    await write(1, 6, [v1])  # the old config, after the mark
    gaps = await store.live_gaps(SOURCE, v2, [0, 1, 2])
    assert set(gaps) == {1}

    def spans() -> set[tuple[int, int]]:
        # per shard the write touched: after its last v2 write (at most the old end)
        assert all(after <= end for _, after, _ in gaps[1]), gaps
        return {(after if shards == 1 else -1, to) for _, after, to in gaps[1]}

    assert spans() == {(end if shards == 1 else -1, end + 6)}
    with pytest.raises(BackfillError, match=r"lacks spend v2 wrote partition 1 \(offsets"):
        await run()
    # a worker with v2 writes again: the gap stays on record
    await write(1, 4, [v1, v2])
    gaps = await store.live_gaps(SOURCE, v2, [0, 1, 2])
    assert spans() == {(end if shards == 1 else -1, end + 6)}
    with pytest.raises(BackfillError, match=f"-{end + 6}\\) after its live mark"):
        await run()
