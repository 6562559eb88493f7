"""Parsing and the per-batch pipeline, with in-memory sinks (no I/O)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from driftline.drift import MonitorConfig
from driftline.drift.quality import QualityChecker, QualityConfig
from driftline.drift.samples import decode_samples
from driftline.features.definitions import FeatureGroup
from driftline.schemas import REASONS, InvalidEvent, ParsedEvent, build_parser
from driftline.schemas.deadletter import parse_dead_letter_headers
from driftline.sinks.feature_store import MemoryFeatureStore
from driftline.sinks.kafka_sink import MemoryKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.local.demo import INVALID_KINDS, DemoEvents
from driftline.streams.worker.pipeline import SourcePipeline, split_by_keys
from driftline.streams.worker.records import RawRecord, classify
from driftline.streams.worker.retry import Backoff

TX_JSON = Path(__file__).resolve().parents[2] / "schemas" / "contracts" / "transactions.schema.json"


def make_parser(max_event_bytes: int = 4096, event_time_unit: str = "ms"):
    return build_parser(
        encoding="json",
        contract_path=TX_JSON,
        entity_key="user_id",
        event_time_field="event_time",
        event_time_unit=event_time_unit,
        max_event_bytes=max_event_bytes,
    )


def record(value: bytes | None, offset: int = 0, key: bytes | None = b"k") -> RawRecord:
    return RawRecord("tx", 1, offset, 1_000, key, value, [("trace", b"abc")])


GROUP = FeatureGroup.from_config(
    {
        "name": "spend",
        "version": 1,
        "source": "transactions",
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum", "max"]},
        "distinct": ["category"],
        "last": ["amount"],
        "windows": ["1m", "1h"],
    }
)


def make_pipeline(store=None, dlq=None, max_event_bytes=4096, groups=(GROUP,), quality=None):
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)

    pipeline = SourcePipeline(
        source="transactions",
        dead_letter_topic="tx.dlq",
        parser=make_parser(max_event_bytes),
        dead_letters=dlq or MemoryKafkaSink(),
        store=store if store is not None else MemoryFeatureStore(),
        groups=groups,
        metrics=WorkerMetrics(["transactions"], CollectorRegistry()),
        backoff=Backoff(0.1, 0.4),
        sleep=fake_sleep,
        quality=quality,
    )
    return pipeline, sleeps


def test_every_demo_invalid_kind_gets_its_reason() -> None:
    demo = DemoEvents(max_event_bytes=4096, seed=3)
    parser = make_parser(4096)
    for kind in INVALID_KINDS:
        expected, _, value = demo.invalid(kind)
        with pytest.raises(InvalidEvent) as info:
            parser.parse(value, 0)
        assert info.value.rejection.reason == expected
        assert info.value.rejection.stage == REASONS[expected]
    key, value = demo.valid(now_ms=5_000_000)
    event = parser.parse(value, 0)
    assert event.entity == key.decode()
    assert 5_000_000 - 2000 < event.event_time_ms <= 5_000_000


def test_event_time_sources_and_units(tmp_path: Path) -> None:
    schema = tmp_path / "loose.json"
    schema.write_text('{"type": "object", "properties": {"id": {}, "t": {}}}')

    def parser(unit: str):
        return build_parser(
            encoding="json",
            contract_path=schema,
            entity_key="id",
            event_time_field="t",
            event_time_unit=unit,
            max_event_bytes=100,
        )

    # no event-time field in the event: falls back to the record timestamp
    assert parser("ms").parse(b'{"id": 1}', 777).event_time_ms == 777
    assert parser("ms").parse(b'{"id": 1, "t": null}', 778).event_time_ms == 778
    assert parser("ms").parse(b'{"id": 1, "t": 1234}', 0).event_time_ms == 1234
    assert parser("s").parse(b'{"id": 1, "t": 2.5}', 0).event_time_ms == 2500
    # ISO 8601 strings are accepted whatever the unit, when they carry an offset
    assert (
        parser("ms").parse(b'{"id": 1, "t": "1970-01-01T00:00:01+00:00"}', 0).event_time_ms == 1000
    )


def test_entity_key_must_be_a_non_empty_string_or_integer(tmp_path: Path) -> None:
    schema = tmp_path / "loose.json"
    schema.write_text('{"type": "object", "properties": {"id": {}, "t": {}}}')
    parser = build_parser(
        encoding="json",
        contract_path=schema,
        entity_key="id",
        event_time_field="t",
        event_time_unit="iso8601",
        max_event_bytes=100,
    )
    assert parser.parse(b'{"id": 5, "t": "2024-01-01T00:00:00Z"}', 0) == ParsedEvent(
        "5", 1704067200000, {"id": 5, "t": "2024-01-01T00:00:00Z"}
    )
    for bad in (b'{"t": 1}', b'{"id": "", "t": 1}', b'{"id": true}', b'{"id": [1]}'):
        with pytest.raises(InvalidEvent) as info:
            parser.parse(bad, 0)
        assert info.value.rejection.reason == "missing_entity_key"
    for bad_time in (
        b'{"id": 1, "t": "yesterday"}',
        b'{"id": 1, "t": "2024-01-01T00:00:00"}',
        b'{"id": 1, "t": true}',
    ):
        with pytest.raises(InvalidEvent) as info:
            parser.parse(bad_time, 0)
        assert info.value.rejection.reason == "bad_event_time"


async def test_batch_dead_letters_bytes_unchanged_with_reason_headers() -> None:
    demo = DemoEvents(max_event_bytes=4096, seed=1)
    now_ms = int(time.time() * 1000)  # one clock for event and record times
    records, expected = [], {}
    for offset in range(60):
        if offset % 10 == 3:
            reason, key, value = demo.invalid(
                INVALID_KINDS[(offset // 10) % len(INVALID_KINDS)], now_ms
            )
            expected[offset] = (reason, value)
        else:
            key, value = demo.valid(now_ms)
        records.append(RawRecord("transactions", 2, offset, now_ms, key, value, [("trace", b"t")]))
    pipeline, _ = make_pipeline()
    result = await pipeline.process(records)
    assert len(result.valid) == 60 - len(expected)
    dlq = pipeline.dead_letters
    assert isinstance(dlq, MemoryKafkaSink)
    assert len(dlq.written) == len(expected)
    for topic, _key, value, headers in dlq.written:
        meta = parse_dead_letter_headers(headers)
        offset = int(meta["offset"])
        assert topic == "tx.dlq"
        assert (meta["reason"], value) == expected[offset]  # payload byte-identical
        assert meta["topic"] == "transactions" and meta["partition"] == "2"
        assert meta["stage"] == REASONS[meta["reason"]]
        assert ("trace", b"t") in headers  # original headers kept
    m = pipeline.metrics
    assert m.valid.labels(source="transactions")._value.get() == len(result.valid)
    for reason, n in Counter(r for r, _ in expected.values()).items():
        assert m.invalid.labels(source="transactions", reason=reason)._value.get() == n


async def test_failed_effects_are_retried_with_backoff_and_nothing_is_lost() -> None:
    store = MemoryFeatureStore()
    store.fail_next = 3
    dlq = MemoryKafkaSink()
    dlq.fail_next = 2
    pipeline, sleeps = make_pipeline(store=store, dlq=dlq)
    demo = DemoEvents(seed=2)
    records = [record(demo.valid(now_ms=900)[1], i) for i in range(5)] + [record(b"{", 5)]
    await pipeline.process(records)
    assert store.applied_batches == 1
    assert (await store.partition_state("transactions", 1)).offset == 5
    assert len(dlq.written) == 1 and not dlq.pending
    # 2 dead-letter failures, then 3 Redis failures; backoff doubles to its cap and resets between
    assert sleeps == [0.1, 0.2, 0.1, 0.2, 0.4]
    errors = pipeline.metrics.effect_errors
    assert errors.labels(source="transactions", target="dead_letter")._value.get() == 2
    assert errors.labels(source="transactions", target="redis")._value.get() == 3


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.none(), max_size=30))
def test_classify_accounts_for_every_record(values: list[bytes | None]) -> None:
    parser = make_parser(max_event_bytes=48)
    records = [record(v, i) for i, v in enumerate(values)]
    result = classify(parser, records)
    assert len(result.valid) + len(result.rejected) == len(records)
    for _, rejection in result.rejected:
        assert rejection.reason in REASONS


def tx(user: str, t: int, amount: float, category: str = "fuel") -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{user}-{t}",
            "user_id": user,
            "amount": amount,
            "category": category,
            "event_time": t,
        }
    )


def rec(value: bytes, offset: int, ts: int = 10_000_000, partition: int = 0) -> RawRecord:
    return RawRecord("transactions", partition, offset, ts, b"k", value, ())


async def test_replayed_records_are_applied_once() -> None:
    store = MemoryFeatureStore()
    pipeline, _ = make_pipeline(store=store)
    batch = [rec(tx("u1", 1_000 + i, 1.0), i) for i in range(10)]
    await pipeline.process(batch[:6])
    # a crash before the Kafka commit: the consumer redelivers from offset 3
    fresh_pipeline, _ = make_pipeline(store=store)
    result = await fresh_pipeline.process(batch[3:])
    assert result.replayed == 3 and len(result.valid) == 4
    [vector] = await store.get(GROUP, ["u1"], as_of_ms=1_009)
    assert vector.values["amount_count_1m"] == 10 and vector.values["amount_sum_1h"] == 10.0
    assert fresh_pipeline.metrics.replayed.labels(source="transactions")._value.get() == 3
    assert fresh_pipeline.metrics.valid.labels(source="transactions")._value.get() == 4


async def test_late_and_future_events_are_dead_lettered_with_reasons() -> None:
    store = MemoryFeatureStore()
    dlq = MemoryKafkaSink()
    pipeline, _ = make_pipeline(store=store, dlq=dlq)
    ts = 10_000_000  # Kafka record timestamp
    batch = [
        rec(tx("u1", ts, 5.0), 0, ts),
        rec(tx("u1", ts - 20_000, 1.0), 1, ts),  # 20 s behind: within the 30 s lateness
        rec(tx("u1", ts - 31_000, 2.0), 2, ts),  # 31 s behind the watermark: late
        rec(tx("u1", ts + 301_000, 3.0), 3, ts),  # 5 min + 1 s ahead of its record: future
        rec(
            tx("u1", ts + 299_000, 4.0), 4, ts
        ),  # inside the tolerance: accepted, moves the watermark
        rec(tx("u1", ts + 260_000, 6.0), 5, ts),  # 39 s behind the new watermark: late
    ]
    result = await pipeline.process(batch)
    reasons = {
        int(parse_dead_letter_headers(h)["offset"]): parse_dead_letter_headers(h)["reason"]
        for *_, h in dlq.written
    }
    assert reasons == {2: "late", 3: "future", 5: "late"}
    assert len(result.valid) == 3
    assert (await store.partition_state("transactions", 0)).watermark_ms == ts + 299_000
    [vector] = await store.get(GROUP, ["u1"], as_of_ms=ts + 299_000)
    assert vector.values["amount_sum_1h"] == 10.0
    m = pipeline.metrics
    assert m.invalid.labels(source="transactions", reason="late")._value.get() == 2


async def test_a_moved_offset_is_reloaded_and_nothing_is_applied_twice() -> None:
    store = MemoryFeatureStore()
    stale, _ = make_pipeline(store=store)
    owner, _ = make_pipeline(store=store)
    batch = [rec(tx("u1", 1_000 + i, 1.0), i) for i in range(8)]
    await stale.process(batch[:2])  # the stale worker caches offset 1
    await owner.process(batch[:5])  # the new owner applies 2..4 (0..1 are skipped)
    result = await stale.process(batch[2:8])  # compare-and-set fails, reloads offset 4
    assert len(result.valid) == 3 and result.replayed == 3
    [vector] = await store.get(GROUP, ["u1"], as_of_ms=1_007)
    assert vector.values["amount_count_1m"] == 8


async def test_sources_without_feature_groups_only_validate() -> None:
    pipeline, _ = make_pipeline(store=MemoryFeatureStore(), groups=())
    result = await pipeline.process([rec(tx("u1", 1, 1.0), 0), rec(b"nope", 1)])
    assert len(result.valid) == 1 and len(result.rejected) == 1


def quality_checker(**raw: object) -> QualityChecker:
    contract_fields = make_parser().decoder.contract.top_level_properties
    return QualityChecker(QualityConfig.model_validate(raw), contract_fields)


def metric(pipeline: SourcePipeline, name: str, **labels: str) -> float:
    value = pipeline.metrics.registry.get_sample_value(name, {"source": "transactions", **labels})
    assert value is not None, (name, labels)
    return value


async def test_quality_checks_count_and_route_violations_and_duplicates() -> None:
    store = MemoryFeatureStore()
    dlq = MemoryKafkaSink()
    quality = quality_checker(
        completeness=["currency", "country"],
        unique={"field": "event_id", "action": "dead_letter"},
        fields={"amount": {"min": 0, "max": 100}, "category": {"allowed": ["fuel", "food"]}},
        on_violation="dead_letter",
    )
    pipeline, _ = make_pipeline(store=store, dlq=dlq, quality=quality)
    # the metric series exist before any event: dashboards show zeros, not gaps
    assert metric(pipeline, "driftline_quality_missing_total", field="currency") == 0
    assert metric(pipeline, "driftline_quality_violations_total", field="amount", check="max") == 0
    assert metric(pipeline, "driftline_quality_missing_ratio_limit", field="country") == 0.05
    batch = [
        rec(tx("u1", 1_000, 5.0), 0),
        rec(tx("u1", 1_000, 5.0), 1),  # the same event again: duplicate
        rec(tx("u1", 2_000, 500.0), 2),  # above max
        rec(tx("u1", 3_000, 7.0, category="health"), 3),  # not allowed here
        rec(tx("u1", 4_000, 1.0), 4),
    ]
    result = await pipeline.process(batch)
    reasons = {
        int(parse_dead_letter_headers(h)["offset"]): parse_dead_letter_headers(h)["reason"]
        for *_, h in dlq.written
    }
    assert reasons == {1: "duplicate", 2: "out_of_range", 3: "not_allowed"}
    for *_, headers in dlq.written:
        assert parse_dead_letter_headers(headers)["stage"] == "quality"
    assert len(result.valid) == 2
    [vector] = await store.get(GROUP, ["u1"], as_of_ms=4_000)
    assert vector.values["amount_count_1m"] == 2 and vector.values["amount_sum_1h"] == 6.0
    assert metric(pipeline, "driftline_quality_events_total") == 5
    assert metric(pipeline, "driftline_quality_missing_total", field="currency") == 5
    assert metric(pipeline, "driftline_quality_duplicates_total") == 1
    assert metric(pipeline, "driftline_quality_violations_total", field="amount", check="max") == 1
    check = {"field": "category", "check": "allowed"}
    assert metric(pipeline, "driftline_quality_violations_total", **check) == 1
    assert metric(pipeline, "driftline_events_invalid_total", reason="duplicate") == 1
    assert metric(pipeline, "driftline_quality_dedup_ids") == 4


async def test_quality_counts_only_by_default_and_replays_keep_their_verdicts() -> None:
    store = MemoryFeatureStore()
    quality = quality_checker(unique={"field": "event_id"}, fields={"amount": {"max": 100}})
    pipeline, _ = make_pipeline(store=store, quality=quality)
    batch = [rec(tx("u1", 1_000, 5.0), 0), rec(tx("u1", 1_000, 5.0), 1), rec(tx("u1", 2, 500), 2)]
    result = await pipeline.process(batch[:2])
    assert len(result.valid) == 2 and not result.rejected  # counted, not routed
    # a redelivery of the batch (offsets already applied) is skipped, not re-counted
    again = await pipeline.process(batch)
    assert again.replayed == 2 and len(again.valid) == 1
    assert metric(pipeline, "driftline_quality_duplicates_total") == 1
    assert metric(pipeline, "driftline_quality_violations_total", field="amount", check="max") == 1
    assert metric(pipeline, "driftline_quality_events_total") == 3


def feature_monitor(feature: str = "spend.amount_sum_1h", **extra: object) -> MonitorConfig:
    return MonitorConfig.from_config(
        {"name": "spend-sum", "source": "transactions", "feature": feature, **extra}
    )


def value_records(dlq: MemoryKafkaSink) -> list[dict[str, object]]:
    return [orjson.loads(v) for t, _, v, _ in dlq.written if t == "values"]


def samples_of(doc: dict[str, object]) -> list[tuple[int, int, float, object]]:
    decoded = decode_samples(orjson.dumps(doc))
    assert decoded is not None
    return decoded[3]


async def test_feature_monitors_get_each_entity_feature_after_the_batch() -> None:
    store = MemoryFeatureStore()
    dlq = MemoryKafkaSink()
    pipeline = SourcePipeline(
        source="transactions",
        dead_letter_topic="tx.dlq",
        parser=make_parser(),
        dead_letters=dlq,
        store=store,
        groups=(GROUP,),
        metrics=WorkerMetrics(["transactions"], CollectorRegistry()),
        monitors=(feature_monitor(segment_by="category"),),
        values_topic="values",
    )
    await pipeline.process([rec(tx("u1", 1_000, 5.0), 0), rec(tx("u2", 1_500, 1.0), 1)])
    await pipeline.process(
        [
            rec(tx("u1", 2_000, 2.0), 2),
            rec(tx("u3", 2_100, 4.0, category="grocery"), 3),
            rec(tx("u1", 2_500, 3.0), 4),
        ]
    )
    first, second = value_records(dlq)
    assert first["m"] == "spend-sum" and first["p"] == 0
    # one sample per entity: (offset of its last event, its newest event time, value, segment)
    assert samples_of(first) == [(0, 1_000, 5.0, "fuel"), (1, 1_500, 1.0, "fuel")]
    # u1's sum covers the stored 5.0 and this batch's 2.0 + 3.0: the value once applied
    assert samples_of(second) == [(3, 2_100, 4.0, "grocery"), (4, 2_500, 10.0, "fuel")]
    [u1] = await store.get(GROUP, ["u1"], as_of_ms=2_500)
    assert u1.values["amount_sum_1h"] == 10.0


def test_sampled_entities_are_spread_over_the_batch_and_deterministic() -> None:
    from driftline.drift.samples import sampled_entities

    parser = make_parser()
    records = [rec(tx(f"u{i}", 1_000 + i, 1.0), i) for i in range(10)]
    events = [parser.parse(r.value, r.timestamp_ms) for r in records]
    chosen = sampled_entities(events, records, 4)
    assert [(entity, offset) for entity, offset, _ in chosen] == [
        ("u0", 0),
        ("u2", 2),
        ("u5", 5),
        ("u7", 7),
    ]
    assert sampled_entities(events, records, 4) == chosen
    assert len(sampled_entities(events, records, 100)) == 10


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 100_000)), max_size=30),
    st.none() | st.integers(0, 100_000),
    st.integers(0, 40_000),
    st.integers(0, 40_000),
)
def test_judging_fast_path_decides_as_event_by_event(
    times: list[tuple[int, int]], watermark: int | None, lateness: int, tolerance: int
) -> None:
    from driftline.streams.worker.event_time import _judge_each, judge_event_time

    events = [ParsedEvent("u", t, {}) for t, _ in times]
    records = [RawRecord("tx", 0, i, ts, b"k", b"", ()) for i, (_, ts) in enumerate(times)]
    kwargs = {"allowed_lateness_ms": lateness, "future_tolerance_ms": tolerance}
    fast = judge_event_time(events, records, watermark, **kwargs)
    slow = _judge_each(events, records, watermark, **kwargs)
    assert fast.accepted == slow.accepted
    assert fast.watermark_ms == slow.watermark_ms
    assert [(r.offset, j.reason) for r, j in fast.rejected] == [
        (r.offset, j.reason) for r, j in slow.rejected
    ]


async def test_the_registry_hears_of_writes_at_most_once_a_minute() -> None:
    store = MemoryFeatureStore()
    pipeline, _ = make_pipeline(store=store)
    before = int(time.time() * 1000)
    await pipeline.process([rec(tx("u1", 1_000, 1.0), 0)])
    after = int(time.time() * 1000)
    first = store.last_writes[("spend", 1)]
    assert before - 1 <= first <= after + 1  # the wall time of the write
    await pipeline.process([rec(tx("u1", 1_001, 1.0), 1)])
    assert store.last_writes[("spend", 1)] == first  # not again within TOUCH_EVERY_S


async def test_a_group_keyed_by_another_field_aggregates_per_that_field() -> None:
    by_category = FeatureGroup.from_config(
        {
            "name": "per_category",
            "version": 1,
            "source": "transactions",
            "entity_key": "category",
            "values": {"amount": ["count", "sum"]},
            "distinct": ["user_id"],
            "windows": ["1h"],
        }
    )
    by_country = FeatureGroup.from_config(
        {
            "name": "per_country",
            "version": 1,
            "source": "transactions",
            "entity_key": "country",  # optional in the contract, absent in these events
            "values": {"amount": ["count"]},
            "windows": ["1h"],
        }
    )
    store = MemoryFeatureStore()
    pipeline, _ = make_pipeline(store=store, groups=(GROUP, by_category, by_country))
    batch = [
        rec(tx("u1", 1_000, 5.0, category="fuel"), 0),
        rec(tx("u2", 1_100, 2.0, category="fuel"), 1),
        rec(tx("u1", 1_200, 4.0, category="grocery"), 2),
    ]
    await pipeline.process(batch)
    fuel, grocery = await store.get(by_category, ["fuel", "grocery"], as_of_ms=1_200)
    assert (fuel.values["amount_count_1h"], fuel.values["amount_sum_1h"]) == (2, 7.0)
    assert fuel.values["user_id_distinct_count_1h"] == 2
    assert grocery.values["amount_sum_1h"] == 4.0
    [u1] = await store.get(GROUP, ["u1"], as_of_ms=1_200)  # the user-keyed group is unchanged
    assert u1.values["amount_count_1m"] == 2

    def missing(group: str) -> float | None:
        return pipeline.metrics.registry.get_sample_value(
            "driftline_feature_key_missing_total", {"group": group}
        )

    assert (missing("per_category"), missing("per_country")) == (0, 3)
    assert not [k for k in store.states if k[0] == "per_country"]


def test_rekey_keeps_events_with_a_usable_key() -> None:
    from driftline.features.engine import rekey

    events = [
        ParsedEvent("u1", 1, {"m": "a"}),
        ParsedEvent("u2", 2, {"m": 7}),
        ParsedEvent("u3", 3, {"m": ""}),
        ParsedEvent("u4", 4, {"m": True}),
        ParsedEvent("u5", 5, {}),
        ParsedEvent("u6", 6, {"m": 1.5}),
    ]
    keyed, kept = rekey(events, "m")
    assert [(e.entity, e.event_time_ms) for e in keyed] == [("a", 1), ("7", 2)]
    assert kept == [0, 1]


@given(
    keys=st.lists(
        st.one_of(st.none(), st.sampled_from([b"a", b"b", b"c", b"d", b"e"])), max_size=40
    ),
    most=st.integers(1, 6),
)
def test_a_batch_is_cut_into_runs_of_few_distinct_keys(keys: list[bytes | None], most: int) -> None:
    records = [record(b"{}", offset=i, key=k) for i, k in enumerate(keys)]
    runs = split_by_keys(records, most)
    assert [r for run in runs for r in run] == records  # in order, nothing lost or repeated
    assert all(run for run in runs) or records == []

    def distinct(run: list[RawRecord]) -> int:
        return len({r.key if r.key is not None else ("none", r.offset) for r in run})

    assert all(distinct(run) <= most for run in runs)
    # each cut is where one more key would not fit: runs are as long as they can be
    for run, after in itertools.pairwise(runs):
        assert distinct([*run, after[0]]) > most


def test_a_batch_of_many_entities_is_applied_in_several_fenced_writes() -> None:
    store = MemoryFeatureStore()
    pipeline, _ = make_pipeline(store=store)
    pipeline.max_keys_per_write = 3
    now = 500  # before the records' timestamps (1,000): nothing is from the future
    events = [
        {
            "event_id": f"e{i}",
            "user_id": f"u{i % 7}",
            "amount": 1.0 + i,
            "category": "fuel",
            "event_time": now + i,
        }
        for i in range(20)
    ]
    records = [
        record(orjson.dumps(e), offset=100 + i, key=str(e["user_id"]).encode())
        for i, e in enumerate(events)
    ]
    result = asyncio.run(pipeline.process(records))
    assert len(result.valid) == 20
    assert store.applied_batches == len(split_by_keys(records, 3)) > 1
    assert asyncio.run(store.partition_state("transactions", 1)).offset == 119
    # every event counted once, whichever write carried it
    [vector] = asyncio.run(store.get(GROUP, ["u0"], as_of_ms=now + 100))
    assert vector.values["amount_count_1m"] == len([e for e in events if e["user_id"] == "u0"])
