"""Faults at the adapters: classification, retries that never re-send, cut dead letters, health.

No I/O: real exception classes of redis-py, aiokafka and Faust, in-memory sinks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka import errors as kafka_errors
from faust.exceptions import ProducerSendError
from prometheus_client import CollectorRegistry
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser

from driftline.schemas.deadletter import (
    TRUNCATED_HEADER,
    dead_letter_headers,
    fit_dead_letter,
    parse_dead_letter_headers,
    record_size,
)
from driftline.schemas.exceptions import Rejection
from driftline.sinks.exceptions import RecordTooLarge, classify, is_too_large
from driftline.sinks.feature_store import MemoryFeatureStore, PartitionState
from driftline.sinks.kafka_sink import BufferedKafkaSink, MemoryKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.streams.worker.dead_letters import shrink_dead_letter
from driftline.streams.worker.health import WorkerHealth
from driftline.streams.worker.pipeline import SourcePipeline
from driftline.streams.worker.records import RawRecord
from driftline.streams.worker.retry import Backoff, EffectFailed, EffectTracker, until_done
from tests.unit.test_pipeline import GROUP, make_parser, tx


def reply_error(message: str) -> BaseException:
    """The exception redis-py raises for an error reply (as its parsers build it)."""
    return BaseParser.parse_error(message)  # a classmethod


def wrapped(exc: BaseException) -> BaseException:
    """What Faust's producer raises: its own error, caused by aiokafka's."""
    try:
        raise ProducerSendError(f"Error while sending: {exc!r}") from exc
    except ProducerSendError as outer:
        return outer


@pytest.mark.parametrize(
    "exc, kind",
    [
        (redis_errors.ConnectionError("refused"), "transient"),
        (redis_errors.TimeoutError("timed out"), "transient"),
        (redis_errors.BusyLoadingError("loading"), "transient"),
        (redis_errors.ReadOnlyError("replica"), "transient"),
        (reply_error("OOM command not allowed when used memory > 'maxmemory'"), "transient"),
        (reply_error("BUSY Redis is busy running a script"), "transient"),
        (reply_error("MISCONF Redis is configured to save RDB snapshots"), "transient"),
        (reply_error("NOREPLICAS Not enough good replicas to write"), "transient"),
        (reply_error("LOADING Redis is loading the dataset in memory"), "transient"),
        (reply_error("READONLY You can't write against a read only replica"), "transient"),
        (reply_error("NOPERM User x has no permissions to run the 'evalsha' command"), "permanent"),
        (reply_error("WRONGTYPE Operation against a key holding the wrong kind"), "permanent"),
        (reply_error("ERR Error running script (call to f_1): bad argument"), "permanent"),
        (redis_errors.AuthenticationError("invalid password"), "permanent"),
        (redis_errors.NoPermissionError("NOPERM"), "permanent"),
        (redis_errors.ResponseError("ERR user_script:1: bad argument"), "permanent"),
        (redis_errors.ClusterError("TTL exhausted."), "transient"),
        (redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"), "transient"),
        (redis_errors.SlotNotCoveredError("slot 5 not covered"), "transient"),
        (reply_error("TRYAGAIN Multiple keys request during rehashing of slot"), "transient"),
        (reply_error("MOVED 3999 127.0.0.1:6381"), "permanent"),  # a plain client at a cluster
        (reply_error("CROSSSLOT Keys in request don't hash to the same slot"), "permanent"),
        (
            redis_errors.RedisClusterException("Cluster mode is not enabled on this node"),
            "permanent",
        ),
        (kafka_errors.KafkaConnectionError("down"), "transient"),
        (kafka_errors.KafkaTimeoutError(), "transient"),
        (kafka_errors.RequestTimedOutError(), "transient"),
        (kafka_errors.NotLeaderForPartitionError(), "transient"),
        (kafka_errors.MessageSizeTooLargeError(), "permanent"),
        (kafka_errors.TopicAuthorizationFailedError(), "permanent"),
        (wrapped(kafka_errors.KafkaConnectionError("down")), "transient"),
        (wrapped(kafka_errors.TopicAuthorizationFailedError()), "permanent"),
        (ConnectionRefusedError(111, "refused"), "transient"),
        (TimeoutError(), "transient"),
        (TypeError("a bug"), "permanent"),
        (KeyError("a bug"), "permanent"),
        (RecursionError(), "permanent"),
    ],
)
def test_errors_are_classified_at_the_adapters(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_a_bug_while_handling_a_connection_error_is_permanent() -> None:
    try:
        try:
            raise redis_errors.ConnectionError("down")
        except redis_errors.ConnectionError:
            raise AttributeError("bug in the handler")  # noqa: B904
    except AttributeError as exc:
        assert classify(exc) == "permanent"


def test_too_large_is_recognised_through_faust() -> None:
    assert is_too_large(wrapped(kafka_errors.MessageSizeTooLargeError()))
    assert is_too_large(kafka_errors.RecordTooLargeError())
    assert not is_too_large(wrapped(kafka_errors.KafkaConnectionError()))


# -- retries ------------------------------------------------------------------


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_transient_errors_are_retried_and_counted() -> None:
    attempts: list[int] = []
    errors: list[int] = []

    async def effect() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise redis_errors.ConnectionError("down")
        return "done"

    tracker = EffectTracker()
    result = await until_done(
        effect,
        what="x",
        backoff=Backoff(0.1, 1),
        sleep=no_sleep,
        on_error=lambda: errors.append(1),
        tracker=tracker,
        target="redis",
    )
    assert (result, len(attempts), len(errors)) == ("done", 4, 3)
    assert tracker.pending() == {} and tracker.last_error == {}


async def test_a_permanent_error_is_not_retried() -> None:
    attempts: list[int] = []
    errors: list[int] = []

    async def effect() -> None:
        attempts.append(1)
        raise TypeError("a bug")

    tracker = EffectTracker()
    with pytest.raises(EffectFailed) as info:
        await until_done(
            effect,
            what="redis for source tx",
            backoff=Backoff(0.1, 1),
            sleep=no_sleep,
            on_error=lambda: errors.append(1),
            tracker=tracker,
            target="redis",
        )
    assert isinstance(info.value.cause, TypeError)
    assert (len(attempts), len(errors)) == (1, 1)
    assert tracker.pending() == {}


def test_tracker_reports_the_oldest_unfinished_effect() -> None:
    now = [100.0]
    tracker = EffectTracker(clock=lambda: now[0])
    a = tracker.start("redis")
    now[0] = 105.0
    b = tracker.start("redis")
    tracker.start("kafka")
    now[0] = 110.0
    assert tracker.pending() == {"redis": 10.0, "kafka": 5.0}
    tracker.finish(a)
    assert tracker.oldest_age("redis") == 5.0
    tracker.finish(b)
    assert tracker.oldest_age("redis") == 0.0 and tracker.oldest_age() == 5.0


# -- the Kafka sink never re-sends what the broker acknowledged ----------------


class FlakyBroker:
    """A producer double: fails the records named in ``fail``, once each, after scheduling."""

    def __init__(self, fail: dict[bytes, BaseException], refuse_at_send: bool = False) -> None:
        self.fail = fail
        self.refuse_at_send = refuse_at_send
        self.written: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[Any]
    ) -> asyncio.Future[None]:
        error = self.fail.pop(key or b"", None)
        if error is not None and self.refuse_at_send:
            raise error
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if error is not None:
            fut.set_exception(error)
        else:
            self.written.append((topic, key, value))
            fut.set_result(None)
        return fut


@pytest.mark.parametrize("refuse_at_send", [False, True])
async def test_a_retried_flush_sends_only_what_failed(refuse_at_send: bool) -> None:
    broker = FlakyBroker({b"k3": kafka_errors.KafkaConnectionError("gone")}, refuse_at_send)
    sink = BufferedKafkaSink(broker.send)
    for i in range(6):
        sink.add("dlq", f"k{i}".encode(), b"v", [])
    with pytest.raises(kafka_errors.KafkaConnectionError):
        await sink.flush()
    assert len(sink) == 1
    await sink.flush()
    keys = [key for _, key, _ in broker.written]
    assert sorted(keys) == [f"k{i}".encode() for i in range(6)]  # each exactly once
    assert len(sink) == 0


async def test_a_record_refused_for_its_size_is_cut_to_its_headers_and_sent() -> None:
    broker = FlakyBroker({b"big": wrapped(kafka_errors.MessageSizeTooLargeError())})
    shrunk: list[int] = []
    sink = BufferedKafkaSink(
        broker.send, shrink=shrink_dead_letter, on_shrink=lambda: shrunk.append(1)
    )
    headers = headers_for(offset=7)
    sink.add("dlq", b"big", b"x" * 500_000, headers)
    sink.add("dlq", b"small", b"y", headers)
    await sink.flush()  # no error: the cut record went in the same flush
    written = {key: value for _, key, value in broker.written}
    assert written[b"small"] == b"y" and written[b"big"] == b""
    assert len(shrunk) == 1


async def test_a_refused_record_that_cannot_shrink_is_a_permanent_error() -> None:
    broker = FlakyBroker({b"v": kafka_errors.MessageSizeTooLargeError()})
    sink = BufferedKafkaSink(broker.send, shrink=shrink_dead_letter)
    sink.add("values", b"v", b"{}", [])  # not a dead letter: nothing to cut
    with pytest.raises(RecordTooLarge):
        await sink.flush()
    assert classify(RecordTooLarge("x")) == "permanent"


# -- dead letters that fit -----------------------------------------------------


def headers_for(offset: int, original: Sequence[tuple[str, bytes]] = ()) -> list[Any]:
    rejection = Rejection("size", "oversize", "too big")
    return dead_letter_headers(
        rejection,
        source="tx",
        topic="transactions",
        partition=3,
        offset=offset,
        now_ms=1,
        original=original,
    )


def test_a_dead_letter_that_fits_is_kept_whole() -> None:
    headers = headers_for(5, [("trace", b"t")])
    assert fit_dead_letter(b"k", b"v" * 1000, headers, 1_000_000) == (b"k", b"v" * 1000, headers)


@pytest.mark.parametrize("size", [1_000_001, 5_000_000, 100 << 20])
def test_an_oversize_dead_letter_is_cut_and_says_so(size: int) -> None:
    value = b"z" * size
    key, cut, headers = fit_dead_letter(b"k", value, headers_for(9, [("t", b"x" * 10)]), 1_000_000)
    assert record_size(key, cut, headers) <= 1_000_000
    assert value.startswith(cut) and len(cut) > 900_000
    meta = parse_dead_letter_headers(headers)
    assert meta["truncated"] == "value,headers"
    assert meta["original.value.size"] == str(size)
    assert (meta["topic"], meta["partition"], meta["offset"]) == ("transactions", "3", "9")


def test_a_huge_key_is_cut_too() -> None:
    key, value, headers = fit_dead_letter(b"K" * 2_000_000, b"v", headers_for(1), 1_000_000)
    assert key == b"K" * 1024 and value == b"v"
    assert parse_dead_letter_headers(headers)["truncated"] == "key"
    assert record_size(key, value, headers) <= 1_000_000


# -- counters stay exact when a write timed out but was applied ------------------


class LandsThenTimesOut(MemoryFeatureStore):
    """Applies the first write, then answers it with a timeout (the reply was lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost_replies = 1

    async def apply(self, *args: Any, **kwargs: Any) -> tuple[bool, int]:
        result = await super().apply(*args, **kwargs)
        if self.lost_replies:
            self.lost_replies -= 1
            raise redis_errors.TimeoutError("Timeout reading from socket")
        return result


def pipeline_with(store: MemoryFeatureStore, dlq: Any = None) -> SourcePipeline:
    return SourcePipeline(
        source="transactions",
        dead_letter_topic="tx.dlq",
        parser=make_parser(4096),
        dead_letters=dlq if dlq is not None else MemoryKafkaSink(),
        store=store,
        groups=(GROUP,),
        metrics=WorkerMetrics(["transactions"], CollectorRegistry()),
        backoff=Backoff(0.01, 0.02),
        sleep=no_sleep,
    )


def rec(value: bytes, offset: int) -> RawRecord:
    return RawRecord("transactions", 0, offset, 1_000_000, b"k", value, [])


def sample(pipeline: SourcePipeline, name: str, **labels: str) -> float:
    value = pipeline.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_write_that_timed_out_but_landed_counts_its_events_once() -> None:
    store = LandsThenTimesOut()
    pipeline = pipeline_with(store)
    batch = [rec(tx(f"u{i}", 1_000 + i, 1.0), i) for i in range(50)]
    result = await pipeline.process(batch)
    assert len(result.valid) == 50 and result.replayed == 0
    assert sample(pipeline, "driftline_events_valid_total", source="transactions") == 50
    assert sample(pipeline, "driftline_events_replayed_total", source="transactions") == 0
    assert (
        sample(pipeline, "driftline_effect_errors_total", source="transactions", target="redis")
        == 1
    )
    assert store.applied_batches == 1
    assert store.partitions[("transactions", 0)] == PartitionState(49, 1_049)


async def test_an_oversize_record_is_dead_lettered_cut_once() -> None:
    dlq = MemoryKafkaSink()
    pipeline = pipeline_with(MemoryFeatureStore(), dlq)
    pipeline.dead_letter_max_bytes = 100_000
    big = orjson.dumps({"user_id": "u", "pad": "p" * 300_000})
    await pipeline.process(
        [rec(tx("u1", 1_000, 1.0), 0), rec(big, 1), rec(tx("u2", 1_001, 1.0), 2)]
    )
    [(_, _, value, headers)] = dlq.written
    meta = parse_dead_letter_headers(headers)
    assert (meta["reason"], meta["offset"], meta["original.value.size"]) == (
        "oversize",
        "1",
        str(len(big)),
    )
    assert big.startswith(value) and record_size(b"k", value, headers) <= 100_000
    assert any(name == TRUNCATED_HEADER for name, _ in headers)
    assert sample(pipeline, "driftline_dead_letters_truncated_total", source="transactions") == 1


async def test_a_permanent_redis_error_stops_the_batch() -> None:
    class Broken(MemoryFeatureStore):
        async def apply(self, *args: Any, **kwargs: Any) -> tuple[bool, int]:
            raise redis_errors.ResponseError("ERR Error running script: bad")

    pipeline = pipeline_with(Broken())
    with pytest.raises(EffectFailed):
        await pipeline.process([rec(tx("u1", 1_000, 1.0), 0)])
    assert sample(pipeline, "driftline_events_valid_total", source="transactions") == 0


# -- what the probes say -------------------------------------------------------


def test_health_names_every_reason_for_not_being_ready() -> None:
    now = [0.0]
    health = WorkerHealth(stall_after_s=30, clock=lambda: now[0])
    ready, details = health.verdict()
    assert not ready and details["reasons"] == ["no partitions assigned (yet)"]
    health.assigned_partitions = 4
    health.fetched()
    assert health.verdict()[0]
    token = health.tracker.start("redis")
    health.tracker.last_error["redis"] = "TimeoutError: Timeout reading from socket"
    now[0] = 45.0
    ready, details = health.verdict()
    assert not ready
    # the consumer waits for the write, not for the broker: only Redis is named
    assert details["reasons"] == [
        "redis: a write has been pending for 45s (last error: TimeoutError: Timeout reading "
        "from socket)",
    ]
    assert health.fetch_age() == 0.0
    health.tracker.finish(token)
    assert health.verdict()[0]  # fetch age counts from the end of the write
    now[0] = 80.0
    assert health.verdict()[1]["reasons"] == ["kafka: no successful fetch for 35s"]
    health.fetched()
    assert health.verdict()[0]
    health.fail("source tx: EffectFailed: bad script")
    assert health.verdict()[1]["reasons"] == ["failed: source tx: EffectFailed: bad script"]


async def test_a_redis_probe_that_hangs_is_cut_short() -> None:
    health = WorkerHealth()

    async def hangs() -> None:
        await asyncio.Event().wait()

    await health.probe_redis(hangs, 0.05)
    assert health.redis_error == "no answer to PING within 0.05s"

    async def answers() -> bool:
        return True

    await health.probe_redis(answers, 0.05)
    assert health.redis_error is None


async def test_a_null_header_value_on_a_rejected_record_is_kept() -> None:
    dlq = MemoryKafkaSink()
    pipeline = pipeline_with(MemoryFeatureStore(), dlq)
    bad = RawRecord("transactions", 0, 0, 1_000_000, b"k", b"{", [("nullable", None)])  # type: ignore[list-item]
    await pipeline.process([bad, rec(tx("u1", 1_000, 1.0), 1)])
    [(_, _, value, headers)] = dlq.written
    assert value == b"{" and ("nullable", None) in headers


def test_cutting_twice_keeps_the_first_sizes_and_then_stops() -> None:
    headers = headers_for(4)
    key, value, headers = fit_dead_letter(b"k", b"x" * 300_000, headers, 100_000)
    record = ("dlq", key, value, headers)
    smaller = shrink_dead_letter(record)
    assert smaller is not None and smaller[2] == b""
    meta = parse_dead_letter_headers(smaller[3])
    assert meta["original.value.size"] == "300000" and meta["truncated"] == "value"
    assert sum(1 for name, _ in smaller[3] if name == TRUNCATED_HEADER) == 1
    assert shrink_dead_letter(smaller) is None  # nothing left to cut: RecordTooLarge


async def test_a_dead_letter_refused_even_as_headers_fails_instead_of_looping() -> None:
    class RefusesAll:
        calls = 0

        async def send(self, *record: Any) -> asyncio.Future[None]:
            self.calls += 1
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(kafka_errors.MessageSizeTooLargeError())
            return fut

    broker = RefusesAll()
    shrunk: list[int] = []
    sink = BufferedKafkaSink(
        broker.send, shrink=shrink_dead_letter, on_shrink=lambda: shrunk.append(1)
    )
    sink.add("dlq", b"k", b"x" * 1000, headers_for(2))
    with pytest.raises(RecordTooLarge):
        await sink.flush()
    assert (broker.calls, len(shrunk)) == (2, 1)


@pytest.mark.parametrize("t, unit", [(-1e19, "ms"), (1e19, "ms"), (2**60, "ms"), (1e17, "s")])
def test_event_times_out_of_range_are_bad_event_time(t: float, unit: str) -> None:
    from driftline.schemas import EventParser, InvalidEvent

    class Plain:
        def decode(self, value: bytes) -> dict[str, Any]:
            return orjson.loads(value)  # type: ignore[no-any-return]

    parser = EventParser(
        Plain(),
        entity_key="u",
        event_time_field="t",
        event_time_unit=unit,  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidEvent) as info:
        parser.parse(orjson.dumps({"u": "a", "t": t}), 0)
    assert info.value.rejection.reason == "bad_event_time"
    assert parser.parse(orjson.dumps({"u": "a", "t": 1_700_000_000_000}), 0).event_time_ms > 0


def test_long_segment_strings_are_cut() -> None:
    from driftline.drift.samples import MAX_SEGMENT_CHARS, segment_of
    from driftline.schemas import ParsedEvent

    event = ParsedEvent("u", 0, {"country": "x" * 1_000_000, "n": [1]})
    assert segment_of(event, "country") == "x" * MAX_SEGMENT_CHARS
    assert segment_of(event, "n") is None and segment_of(event, None) is None
