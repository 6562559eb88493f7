"""Parsing and the per-batch pipeline, with in-memory sinks (no I/O)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from schemas import REASONS, InvalidEvent, ParsedEvent, build_parser
from schemas.deadletter import parse_dead_letter_headers
from sinks.deadletter import MemoryDeadLetterSink
from sinks.metrics import WorkerMetrics
from sinks.redis_store import newest_per_entity
from streams.demo import INVALID_KINDS, DemoEvents
from streams.pipeline import Backoff, RawRecord, SourcePipeline, classify

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


class MemoryStore:
    def __init__(self, fail_next: int = 0) -> None:
        self.written: list[ParsedEvent] = []
        self.fail_next = fail_next

    async def write_latest(self, source: str, events) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("redis down (test double)")
        self.written.extend(events)
        return len(events)


def make_pipeline(store=None, dlq=None, max_event_bytes=4096):
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)

    pipeline = SourcePipeline(
        source="transactions",
        dead_letter_topic="tx.dlq",
        parser=make_parser(max_event_bytes),
        dead_letters=dlq or MemoryDeadLetterSink(),
        store=store or MemoryStore(),
        metrics=WorkerMetrics(["transactions"], CollectorRegistry()),
        backoff=Backoff(0.1, 0.4),
        sleep=fake_sleep,
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
    records, expected = [], {}
    for offset in range(60):
        if offset % 10 == 3:
            reason, key, value = demo.invalid(INVALID_KINDS[(offset // 10) % len(INVALID_KINDS)])
            expected[offset] = (reason, value)
        else:
            key, value = demo.valid()
        records.append(RawRecord("transactions", 2, offset, 1, key, value, [("trace", b"t")]))
    pipeline, _ = make_pipeline()
    result = await pipeline.process(records)
    assert len(result.valid) == 60 - len(expected)
    dlq = pipeline.dead_letters
    assert isinstance(dlq, MemoryDeadLetterSink)
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
    store = MemoryStore(fail_next=3)
    dlq = MemoryDeadLetterSink()
    dlq.fail_next = 2
    pipeline, sleeps = make_pipeline(store=store, dlq=dlq)
    demo = DemoEvents(seed=2)
    records = [record(demo.valid()[1], i) for i in range(5)] + [record(b"{", 5)]
    await pipeline.process(records)
    assert len(store.written) == 5
    assert len(dlq.written) == 1 and not dlq.pending
    # 2 dead-letter failures, then 3 Redis failures; backoff doubles to its cap and resets between
    assert sleeps == [0.1, 0.2, 0.1, 0.2, 0.4]
    errors = pipeline.metrics.effect_errors
    assert errors.labels(source="transactions", target="dead_letter")._value.get() == 2
    assert errors.labels(source="transactions", target="redis")._value.get() == 3


def test_newest_per_entity_keeps_the_latest_event_time() -> None:
    events = [
        ParsedEvent("a", 5, {"n": 1}),
        ParsedEvent("a", 3, {"n": 2}),
        ParsedEvent("b", 1, {}),
        ParsedEvent("a", 5, {"n": 3}),
    ]
    newest = newest_per_entity(events)
    assert newest["a"].data == {"n": 3}  # later offset wins a tie
    assert newest["b"].event_time_ms == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.none(), max_size=30))
def test_classify_accounts_for_every_record(values: list[bytes | None]) -> None:
    parser = make_parser(max_event_bytes=48)
    records = [record(v, i) for i, v in enumerate(values)]
    result = classify(parser, records)
    assert len(result.valid) + len(result.rejected) == len(records)
    for _, rejection in result.rejected:
        assert rejection.reason in REASONS
