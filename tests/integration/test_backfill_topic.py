"""``driftline backfill`` where the offline log does not reach back: the topic's records.

A real broker holds the records (valid ones, records the contract refuses and
events late against the partition's watermark); the offline log holds what a
perfect archiver would have written, from some offset per partition on, or
nothing; the live worker's writes are played by the store (version 1 alone up
to a handover offset, then versions 1 and 2).  The backfill must read the
rest from the topic, judge it as the worker did, and leave version 2 equal to
the reference engine over every event the worker accepted, in offset order.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import shutil
import tempfile
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.features.registry import BackfillProgress, backfill_field
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.offline_log import LogLayout, OfflineLog
from driftline.sinks.redis_client import RedisClient, connect_redis
from driftline.streams import backfill_topic
from driftline.streams.backfill import BackfillError, backfill
from driftline.streams.backfill_topic import TopicReader
from driftline.streams.local.embedded import create_topics
from driftline.streams.settings import load_settings
from driftline.streams.worker.retry import EffectFailed
from tests.integration.test_backfill import CONTRACT, V1, V2, _check, _Crash, _from, crash_at

SOURCE = "transactions"
T0 = 1_700_000_000_000
FROM_MS = T0 - 60_000  # _from()
LATENESS_MS = 30_000  # the source's default allowed_lateness
PARTITIONS = 3
LAYOUT = LogLayout.from_declared(
    {
        "event_id": ["string"],
        "user_id": ["string"],
        "amount": ["number"],
        "category": ["string"],
        "event_time": ["integer"],
    }
)


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes
    #: the event the worker accepts (None: refused, by the contract or as late)
    accepted: ParsedEvent | None


@dataclass(frozen=True)
class Pos:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def _stream(rng: random.Random, n: int) -> dict[int, list[Record]]:
    """Records per partition (each user on one), judged by brute force as the worker does."""
    values: dict[int, list[tuple[bytes, ParsedEvent | None]]] = {p: [] for p in range(PARTITIONS)}
    for _ in range(n):
        user = f"u{rng.randint(0, 40)}"
        p = zlib.crc32(user.encode()) % PARTITIONS
        roll = rng.random()
        if roll < 0.04:
            values[p].append((b"{not json", None))
            continue
        if roll < 0.08:
            bad = {"event_id": "x", "user_id": user, "amount": "lots", "event_time": T0}
            values[p].append((orjson.dumps(bad), None))
            continue
        # an old event: late once the partition's watermark has moved past it
        t = T0 - 40_000 if roll < 0.14 else T0 + rng.randint(0, 40) * 1000
        data: dict[str, Any] = {
            "event_id": f"e{rng.getrandbits(40)}",
            "user_id": user,
            "amount": round(rng.uniform(0, 100), 2),
            "category": rng.choice(["grocery", "travel", "fuel", "health", "other"]),
            "event_time": t,
        }
        values[p].append((orjson.dumps(data), ParsedEvent(user, t, data)))
    users = [f"u{i}" for i in range(41)]
    for p in values:  # each partition starts with two events older than --from
        user = next(u for u in users if zlib.crc32(u.encode()) % PARTITIONS == p)
        for i in range(2):
            data = {"event_id": f"old{p}{i}", "user_id": user, "amount": 1.0 + i}
            data |= {"category": "fuel", "event_time": T0 - 120_000 - i * 1000}
            values[p].insert(i, (orjson.dumps(data), ParsedEvent(user, data["event_time"], data)))
    out: dict[int, list[Record]] = {}
    for p, recs in values.items():
        watermark: int | None = None
        judged = []
        for offset, (value, event) in enumerate(recs):
            if (
                event is not None
                and watermark is not None
                and event.event_time_ms < watermark - LATENESS_MS
            ):
                event = None  # late
            if event is not None and (watermark is None or event.event_time_ms > watermark):
                watermark = event.event_time_ms
            judged.append(Record(offset, value, event))
        out[p] = judged
    return out


def _config(tmp: Path, bootstrap: str, topic: str, url: str, prefix: str, shards: int) -> Path:
    path = tmp / "driftline.yaml"
    doc = {
        "app_id": "bft",
        "kafka": {"bootstrap_servers": bootstrap},
        "redis": {"url": url, "key_prefix": prefix, "shards": shards, "cluster": shards > 1},
        "offline": {"path": str(tmp / "log")},
        "sources": [
            {
                "name": SOURCE,
                "topic": topic,
                "schema": str(CONTRACT),
                "encoding": "json",
                "entity_key": "user_id",
                "event_time": "event_time",
            }
        ],
        "feature_groups": [V2],
    }
    path.write_bytes(orjson.dumps(doc))
    return path


async def _produce(bootstrap: str, topic: str, stream: Mapping[int, list[Record]]) -> None:
    await create_topics(bootstrap, {topic: PARTITIONS})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for p, records in stream.items():
            sent = await asyncio.gather(
                *[await producer.send(topic, r.value, partition=p) for r in records]
            )
            assert [m.offset for m in sent] == [r.offset for r in records]
    finally:
        await producer.stop()


def _log_from(log: OfflineLog, topic: str, p: int, records: list[Record], first: int) -> None:
    """What an archiver that started at offset ``first`` of partition ``p`` wrote (exactly)."""
    kept = [r for r in records if r.offset >= first and r.accepted is not None]
    if not kept:
        return
    end = records[-1].offset
    for lo in range(0, len(kept), 150):  # a few commits
        chunk = kept[lo : lo + 150]
        last = end if lo + 150 >= len(kept) else chunk[-1].offset
        table = LAYOUT.to_table(
            [r.accepted for r in chunk if r.accepted is not None],
            [Pos(topic, p, r.offset, T0) for r in chunk],
        )
        committed = -1 if lo == 0 else kept[lo - 1].offset
        log.append(SOURCE, table, {(topic, p): (committed, last)})


async def _live(
    store: RedisFeatureStore,
    groups: tuple[FeatureGroup, FeatureGroup],
    p: int,
    records: list[Record],
    handover: int,
    rng: random.Random,
) -> None:
    """The worker's writes of one partition: v1 alone up to ``handover``, then v1 and v2."""
    v1, v2 = groups
    offset = -1
    end = records[-1].offset if records else -1
    while offset < end:
        if offset == handover:  # a worker with v2 is assigned the partition here
            await store.mark_live(SOURCE, p, [v1, v2])
        last = min(end, offset + rng.randint(1, 25))
        if offset < handover < last:
            last = handover
        batch = [r.accepted for r in records[offset + 1 : last + 1] if r.accepted is not None]
        chosen = [v1] if last <= handover else [v1, v2]
        state = await store.partition_state(SOURCE, p)
        ok, _ = await store.apply(
            SOURCE,
            p,
            expected_offset=offset,
            new_offset=last,
            watermark_ms=None,
            deltas=[(g, build_deltas(g, batch)) for g in chosen],
            ahead=state.ahead,
        )
        assert ok
        offset = last
    if handover == end:
        await store.mark_live(SOURCE, p, [v1, v2])


@dataclass
class Setup:
    client: RedisClient
    store: RedisFeatureStore
    config: Path
    topic: str
    stream: dict[int, list[Record]]
    log: OfflineLog
    handovers: Mapping[int, int]

    def expected(self) -> dict[int, list[ParsedEvent]]:
        """What version 2 holds: the live writes' events after the marks, and the
        backfill's at or below them since --from."""
        return {
            p: [
                r.accepted
                for r in rs
                if r.accepted is not None
                and (r.offset > self.handovers[p] or r.accepted.event_time_ms >= FROM_MS)
            ]
            for p, rs in self.stream.items()
        }

    def backfilled(self, below: Mapping[int, int] | None = None) -> int:
        """Events at or below the marks since --from (and below ``below``, per partition)."""
        return sum(
            1
            for p, rs in self.stream.items()
            for r in rs
            if r.accepted is not None
            and r.offset <= self.handovers[p]
            and r.offset < (below or {}).get(p, r.offset + 1)
            and r.accepted.event_time_ms >= FROM_MS
        )


async def _prepare(
    bootstrap: str,
    url: str,
    shards: int,
    tmp: Path,
    seed: int,
    n: int,
    log_starts: Mapping[int, int | None],
    handovers: Mapping[int, int] | None = None,
    stream: dict[int, list[Record]] | None = None,
) -> Setup:
    rng = random.Random(seed)
    stream = _stream(rng, n) if stream is None else stream
    topic = f"bft-{uuid.uuid4().hex[:8]}"
    prefix = f"bft{uuid.uuid4().hex[:6]}"
    config = _config(tmp, bootstrap, topic, url, prefix, shards)
    await _produce(bootstrap, topic, stream)
    settings = load_settings(config)
    log = OfflineLog(settings.offline.path)
    for p, first in log_starts.items():
        if first is not None:
            _log_from(log, topic, p, stream[p], first)
    client = connect_redis(url, cluster=shards > 1)
    store = RedisFeatureStore(client, prefix=prefix, shards=shards)
    await store.check_layout()
    v1, v2 = FeatureGroup.from_config(V1), FeatureGroup.from_config(V2)
    await store.register(v2)
    if handovers is None:
        handovers = {p: rng.randint(-1, len(rs) - 1) for p, rs in stream.items()}
    for p, records in stream.items():
        await _live(store, (v1, v2), p, records, handovers[p], rng)
    return Setup(client, store, config, topic, stream, log, handovers)


@pytest.fixture(params=["one-redis", "sharded"])
def backend(request: pytest.FixtureRequest) -> tuple[str, int]:
    if request.param == "one-redis":
        return request.getfixturevalue("redis_url"), 1
    return request.getfixturevalue("redis_cluster_url"), 16


@pytest.fixture
async def cleanup() -> AsyncIterator[list[RedisClient]]:
    clients: list[RedisClient] = []
    yield clients
    for client in clients:
        await client.aclose()


@pytest.fixture
def small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetches of 7 records (the watermark carries over), spool files of about 37
    events (a segment spans many, applied newest first), appended 11 at a time."""
    monkeypatch.setattr(backfill_topic, "CHUNK", 37)
    monkeypatch.setattr(backfill_topic, "_FETCH", 7)
    monkeypatch.setattr(backfill_topic, "_WAITING", 11)


async def test_backfill_reads_the_topic_below_the_log(
    kafka_bootstrap: str,
    backend: tuple[str, int],
    tmp_path: Path,
    cleanup: list[RedisClient],
    small_reads: None,
) -> None:
    url, shards = backend
    rng = random.Random(3)
    stream_sizes = {p: len(rs) for p, rs in _stream(random.Random(3), 1800).items()}
    handovers = {p: rng.randint(stream_sizes[p] // 2, stream_sizes[p] - 1) for p in stream_sizes}
    # p0: nothing in the log; p1: the log starts mid-way, below the mark; p2: after the mark
    log_starts: dict[int, int | None] = {0: None, 1: handovers[1] // 2, 2: handovers[2] + 5}
    setup = await _prepare(kafka_bootstrap, url, shards, tmp_path, 3, 1800, log_starts, handovers)
    cleanup.append(setup.client)
    refused = sum(1 for rs in setup.stream.values() for r in rs if r.accepted is None)
    assert refused > 50  # the verdicts matter: bad records and late events
    report = await backfill(
        load_settings(setup.config), str(setup.config), "spend", from_text=_from(),
        progress=False, wait_s=10,
    )  # fmt: skip
    first_in_log = min(
        r.offset for r in setup.stream[1] if r.offset >= (log_starts[1] or 0) and r.accepted
    )
    below = {0: handovers[0] + 1, 1: first_in_log, 2: handovers[2] + 1}
    assert report.from_topic == setup.backfilled(below) > 0
    assert report.total == report.applied == setup.backfilled()
    v2 = FeatureGroup.from_config(V2)
    await _check(setup.store, v2, setup.expected())
    raw = await setup.client.hget(setup.store.layout.registry_key("spend"), backfill_field(2))
    progress = BackfillProgress.parse(raw)
    assert progress is not None and progress.state == "done"
    assert progress.log_from == below


async def test_a_resumed_backfill_keeps_its_plan_when_the_log_grows_below(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    cleanup: list[RedisClient],
    monkeypatch: pytest.MonkeyPatch,
    small_reads: None,
) -> None:
    """Killed while applying the topic's records; the log is then written again from
    offset 0 (an archiver started afresh); the next run still reads what the first run
    planned, in the same order, and so counts nothing twice."""
    log_starts: dict[int, int | None] = {0: None, 1: 120, 2: 0}
    sizes = {p: len(rs) for p, rs in _stream(random.Random(5), 1200).items()}
    handovers = {p: k - 1 for p, k in sizes.items()}
    setup = await _prepare(kafka_bootstrap, redis_url, 1, tmp_path, 5, 1200, log_starts, handovers)
    cleanup.append(setup.client)
    v2 = FeatureGroup.from_config(V2)
    real = RedisFeatureStore.apply
    crashing = crash_at(v2, 150)  # among the topic's records

    run = functools.partial(
        backfill, load_settings(setup.config), str(setup.config), "spend",
        from_text=_from(), progress=False, wait_s=10,
    )  # fmt: skip
    monkeypatch.setattr(RedisFeatureStore, "apply", crashing)
    with pytest.raises(EffectFailed) as crash:
        await run(max_entities=4)
    assert isinstance(crash.value.cause, _Crash)
    monkeypatch.setattr(RedisFeatureStore, "apply", real)
    shutil.rmtree(setup.log.root)
    for p in range(PARTITIONS):  # an archiver starts afresh, from the topic's first record
        _log_from(setup.log, setup.topic, p, setup.stream[p], 0)
    report = await run(max_entities=9)
    assert report.resumed > 0 and report.applied > 0 and report.from_topic > 0
    await _check(setup.store, v2, setup.expected())


async def test_a_trimmed_topic_that_misses_history_is_refused(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    cleanup: list[RedisClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The topic has dropped its first records (retention) and the log starts later:
    events since --from are gone, and the backfill says so instead of writing."""
    log_starts: dict[int, int | None] = {0: None, 1: None, 2: None}
    sizes = {p: len(rs) for p, rs in _stream(random.Random(9), 600).items()}
    handovers = {p: k - 1 for p, k in sizes.items()}
    setup = await _prepare(kafka_bootstrap, redis_url, 1, tmp_path, 9, 600, log_starts, handovers)
    cleanup.append(setup.client)

    async def trimmed(self: TopicReader, partitions: list[int]) -> dict[int, int]:
        return dict.fromkeys(partitions, 40)  # as the broker reports after retention

    monkeypatch.setattr(TopicReader, "earliest", trimmed)
    with pytest.raises(BackfillError, match="--from 2023-11-14T22:1"):
        await backfill(
            load_settings(setup.config), str(setup.config), "spend", progress=False, wait_s=10,
            from_text="2023-11-14T22:00:00Z",
        )  # fmt: skip
    raw = await setup.client.hget(setup.store.layout.registry_key("spend"), backfill_field(2))
    assert raw is None  # refused before any write


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_any_log_start_handover_and_interruption_give_the_uninterrupted_version(
    kafka_bootstrap: str, redis_url: str, small_reads: None, data: st.DataObject
) -> None:
    seed = data.draw(st.integers(0, 10_000), label="seed")
    n = data.draw(st.integers(30, 300), label="records")
    sizes = {p: len(rs) for p, rs in _stream(random.Random(seed), n).items()}
    log_starts = {
        p: data.draw(st.none() | st.integers(0, max(0, k)), label=f"log start {p}")
        for p, k in sizes.items()
    }
    handovers = {
        p: data.draw(st.integers(-1, k - 1), label=f"handover {p}") for p, k in sizes.items()
    }
    per_write = data.draw(st.integers(1, 12), label="entities per write")
    crash_on = data.draw(st.integers(1, 40), label="crash at write")
    with tempfile.TemporaryDirectory() as tmp:
        setup = await _prepare(
            kafka_bootstrap, redis_url, 1, Path(tmp), seed, n, log_starts, handovers
        )
        try:
            v2 = FeatureGroup.from_config(V2)
            real = RedisFeatureStore.apply

            run = functools.partial(
                backfill, load_settings(setup.config), str(setup.config), "spend",
                from_text=_from(), progress=False, max_entities=per_write, wait_s=10,
            )  # fmt: skip
            RedisFeatureStore.apply = crash_at(v2, crash_on)  # type: ignore[method-assign]
            try:
                await run()
            except EffectFailed as exc:
                assert isinstance(exc.cause, _Crash)
            finally:
                RedisFeatureStore.apply = real  # type: ignore[method-assign]
            await run()
            await _check(setup.store, v2, setup.expected())
        finally:
            await setup.client.aclose()


def _record(offset: int, user: str, t: int) -> Record:
    data = {"event_id": f"e{offset}", "user_id": user, "amount": 10.0 + offset}
    data |= {"category": "fuel", "event_time": t}
    return Record(offset, orjson.dumps(data), ParsedEvent(user, t, data))


async def test_records_judged_otherwise_after_retention_are_not_counted_twice(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    cleanup: list[RedisClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The topic drops its oldest records between a crash and the resumed run: the
    resumed run judges from a later start, without the watermark the dropped records
    made, and now accepts a record the first run refused as late.  Ranks by offset
    keep every record already written skipped (a rank by place among the accepted
    ones would shift and write one again); the dropped records not yet written are
    said to be missing."""
    times = [T0 + i * 1000 for i in range(5)] + [T0 + 100_000] + [T0 + 75_000 + i for i in range(4)]
    times += [T0 + 95_000, T0 + 67_000] + [T0 + 96_000 + i for i in range(8)]
    records = [_record(o, f"x{o}", t) for o, t in enumerate(times)]
    late = records[11]  # 67 s < 100 s - 30 s: late for the worker; not after offset 10 alone
    records[11] = Record(11, late.value, None)
    stream = {0: records, 1: [], 2: []}
    setup = await _prepare(
        kafka_bootstrap, redis_url, 1, tmp_path, 0, 0, {0: None, 1: None, 2: None},
        {0: 19, 1: -1, 2: -1}, stream,
    )  # fmt: skip
    cleanup.append(setup.client)
    v2 = FeatureGroup.from_config(V2)
    real = RedisFeatureStore.apply
    crashing = crash_at(v2, 10)  # offsets 19..12, then 10 written (one event each); 9 is next

    said: list[str] = []
    run = functools.partial(
        backfill, load_settings(setup.config), str(setup.config), "spend",
        from_text=_from(), progress=False, wait_s=10, max_entities=1, echo=said.append,
    )  # fmt: skip
    monkeypatch.setattr(RedisFeatureStore, "apply", crashing)
    with pytest.raises(EffectFailed):
        await run()
    monkeypatch.setattr(RedisFeatureStore, "apply", real)
    real_earliest = TopicReader.earliest

    async def retained(self: TopicReader, partitions: list[int]) -> dict[int, int]:
        return {p: max(o, 10) for p, o in (await real_earliest(self, partitions)).items()}

    monkeypatch.setattr(TopicReader, "earliest", retained)  # offsets 0..9 dropped
    await run()
    assert any("offsets 0-9" in line and "misses their events" in line for line in said), said
    users = [f"x{o}" for o in range(20)]
    got = await setup.store.get(v2, users, as_of_ms=T0 + 401_000)
    counts = {u: g.values["amount_count_1h"] for u, g in zip(users, got, strict=True)}
    # written once each: offset 10 and 12..19; not 11 (late for the worker); 0..9 lost
    assert counts == {
        u: (1 if u in {"x10", *(f"x{o}" for o in range(12, 20))} else 0) for u in users
    }


async def test_history_the_topic_has_dropped_entirely_is_refused(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    cleanup: list[RedisClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No log, and the topic keeps nothing up to a partition's mark: whether events
    since --from are gone is told by the oldest retained record's timestamp."""
    log_starts: dict[int, int | None] = {0: None, 1: None, 2: None}
    sizes = {p: len(rs) for p, rs in _stream(random.Random(4), 300).items()}
    handovers = {0: sizes[0] - 10, 1: sizes[1] - 1, 2: sizes[2] - 1}
    setup = await _prepare(kafka_bootstrap, redis_url, 1, tmp_path, 4, 300, log_starts, handovers)
    cleanup.append(setup.client)
    real_earliest = TopicReader.earliest

    async def retained(self: TopicReader, partitions: list[int]) -> dict[int, int]:
        firsts = await real_earliest(self, partitions)
        return {**firsts, 0: sizes[0] - 5}  # partition 0 keeps only records after its mark

    monkeypatch.setattr(TopicReader, "earliest", retained)
    run = functools.partial(
        backfill, load_settings(setup.config), str(setup.config), "spend", progress=False,
        wait_s=10,
    )  # fmt: skip
    # the records were produced now: their timestamps are after a --from in 2023
    with pytest.raises(BackfillError, match=r"partition\(s\) 0 of source .* --from 20[2-9]") as no:
        await run(from_text=_from())
    raw = await setup.client.hget(setup.store.layout.registry_key("spend"), backfill_field(2))
    assert raw is None  # refused before any write
    # as advised, from the retained record on: what was dropped is older, nothing is missing
    advised = re.search(r"--from (\S+),", str(no.value))
    assert advised is not None
    report = await run(from_text=advised[1])
    assert report.total == 0


async def test_a_broker_or_topic_that_cannot_be_read_is_said_in_words(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from driftline.streams.backfill_topic import TopicError
    from driftline.streams.local.ports import find_free_port
    from driftline.streams.sources import build_sources

    for bootstrap, topic, said in [
        (f"127.0.0.1:{find_free_port()}", "bft-any", "failed: KafkaConnectionError"),
        (kafka_bootstrap, f"bft-missing-{uuid.uuid4().hex[:6]}", "does not exist"),
    ]:
        config = _config(tmp_path, bootstrap, topic, "redis://127.0.0.1:1/0", "bft", 1)
        settings = load_settings(config)
        sources = build_sources(settings, str(config))
        reader = TopicReader(
            settings, settings.sources[0], sources.parsers[SOURCE], None, LAYOUT,
            from_ms=0, spool=tmp_path,
        )  # fmt: skip
        with pytest.raises(TopicError, match=said) as error:
            await reader.earliest([0])
        assert topic in str(error.value)
