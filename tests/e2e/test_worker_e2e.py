"""The worker as a user runs it: a subprocess, a real broker, a real Redis.

Valid events must be processed exactly once, every invalid kind must reach the
dead-letter topic byte for byte with its reason, and the worker must stay up.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from driftline.features.definitions import FeatureGroup
from driftline.schemas import REASONS
from driftline.schemas.avro_contract import AvroContract
from driftline.schemas.deadletter import parse_dead_letter_headers
from driftline.schemas.wire import frame
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis
from driftline.streams.local.demo import DemoEvents
from tests.worker_process import CONTRACTS, WorkerProcess

pytestmark = pytest.mark.slow


def e2e_config(bootstrap: str, redis_url: str, suffix: str) -> dict[str, Any]:
    return {
        "app_id": f"e2e-{suffix}",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "session_timeout_s": 6,
            "heartbeat_interval_s": 1,
            "rebalance_timeout_s": 5,
            "commit_interval_s": 1,
            "create_topics": True,
            "topic_partitions": 4,
        },
        "redis": {"url": redis_url, "key_prefix": f"e2e-{suffix}"},
        "worker": {"log_level": "info"},
        "sources": [
            {
                "name": "tx",
                "topic": f"tx-{suffix}",
                "schema": str(CONTRACTS / "transactions.schema.json"),
                "entity_key": "user_id",
                "event_time": "event_time",
                "max_event_bytes": 4096,
            },
            {
                "name": "tx-avro",
                "topic": f"txa-{suffix}",
                "schema": str(CONTRACTS / "transactions.avsc"),
                "encoding": "confluent-avro",
                "schema_ids": {1: str(CONTRACTS / "transactions.avsc")},
                "entity_key": "user_id",
                "event_time": "event_time",
            },
        ],
        "feature_groups": [
            {
                "name": "spend",
                "version": 1,
                "source": "tx",
                "values": {"amount": ["count", "sum", "max"]},
                "last": ["event_id"],
                "windows": ["1h", "24h"],
            },
            {
                "name": "spend-avro",
                "version": 1,
                "source": "tx-avro",
                "values": {"amount": ["sum"]},
                "windows": ["24h"],
            },
        ],
    }


def json_source_only(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with only the JSON source ``tx`` and its group ``spend``."""
    config["sources"] = config["sources"][:1]
    config["feature_groups"] = config["feature_groups"][:1]
    return config


def avro_body(record: dict[str, Any]) -> bytes:
    contract = AvroContract.from_file(CONTRACTS / "transactions.avsc")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, contract.parsed, record)
    return buf.getvalue()


async def read_features(
    redis_url: str,
    prefix: str,
    config: dict[str, Any],
    group_name: str,
    entities: list[str],
    as_of_ms: int | None = None,
) -> list[Any]:
    spec = next(g for g in config["feature_groups"] if g["name"] == group_name)
    source = next(s for s in config["sources"] if s["name"] == spec["source"])
    group = FeatureGroup.from_config({"entity_key": source["entity_key"], **spec})
    client = connect_redis(redis_url)
    try:
        return await RedisFeatureStore(client, prefix=prefix).get(
            group, entities, as_of_ms=as_of_ms
        )
    finally:
        await client.aclose()


async def registry_hash(redis_url: str, key: str) -> dict[bytes, bytes]:
    client = connect_redis(redis_url)
    try:
        fields: dict[bytes, bytes] = await client.hgetall(key)
        return fields
    finally:
        await client.aclose()


async def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes | None]]
) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


async def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                out.extend(messages)
        # a short grace period to catch duplicates
        extra = await consumer.getmany(timeout_ms=1000)
        for messages in extra.values():
            out.extend(messages)
    finally:
        await consumer.stop()
    return out


def test_valid_events_once_invalid_ones_dead_lettered(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = e2e_config(kafka_bootstrap, redis_url, suffix)
    worker = WorkerProcess(tmp_path, config).start()
    try:
        demo = DemoEvents(users=50, seed=11, max_event_bytes=4096)
        json_records: list[tuple[bytes, bytes]] = []
        expected_reason: dict[int, str] = {}  # index in json_records -> reason
        invalid_payloads = [
            ("invalid_utf8", b'{"user_id": "u1", "note": "\xff\xfe"}'),
            ("malformed_json", b'{"event_id": "x", "user_id": "u1", "amount": 1'),
            (
                "non_finite_number",
                b'{"event_id": "x", "user_id": "u1", "amount": NaN, "category": "fuel", "event_time": 1}',
            ),
            (
                "non_finite_number",
                b'{"event_id": "x", "user_id": "u1", "amount": Infinity, "category": "fuel", "event_time": 1}',
            ),
            (
                "wrong_type",
                b'{"event_id": "x", "user_id": "u1", "amount": "12.0", "category": "fuel", "event_time": 1}',
            ),
            (
                "missing_field",
                b'{"event_id": "x", "user_id": "u1", "amount": 1.0, "event_time": 1}',
            ),
            ("not_an_object", b"[1, 2, 3]"),
            ("oversize", orjson.dumps({"event_id": "x", "user_id": "u1", "pad": "x" * 5000})),
        ]
        n_valid = 400
        for i in range(n_valid):
            json_records.append(demo.valid())
            if i % 50 == 7:
                reason, payload = invalid_payloads[(i // 50) % len(invalid_payloads)]
                expected_reason[len(json_records)] = reason
                json_records.append((b"bad-" + str(i).encode(), payload))
        # make sure every kind appears at least once
        for reason, payload in invalid_payloads:
            expected_reason[len(json_records)] = reason
            json_records.append((b"bad-tail", payload))

        good = {
            "event_id": "a1",
            "user_id": "avro-user",
            "amount": 3.5,
            "currency": None,
            "category": "fuel",
            "country": "DE",
            "event_time": int(time.time() * 1000) - 1000,
        }
        body = avro_body(good)
        avro_records = [(b"avro-user", frame(1, body))] * 20
        avro_invalid = [
            ("unknown_schema_id", frame(99, body)),
            ("bad_wire_format", b"\x07" + frame(1, body)[1:]),
            ("avro_decode_error", frame(1, body[:-4])),
        ]
        avro_expected: dict[int, str] = {}
        for reason, payload in avro_invalid:
            avro_expected[len(avro_records)] = reason
            avro_records.append((b"avro-bad", payload))

        tx_meta = asyncio.run(produce(kafka_bootstrap, f"tx-{suffix}", json_records))
        txa_meta = asyncio.run(produce(kafka_bootstrap, f"txa-{suffix}", avro_records))

        worker.wait_for("driftline_events_consumed_total", len(json_records), source="tx")
        worker.wait_for("driftline_events_consumed_total", len(avro_records), source="tx-avro")
        time.sleep(1.0)  # anything processed twice would show up now

        assert worker.metric_sum("driftline_events_consumed_total", source="tx") == len(
            json_records
        )
        assert worker.metric_sum("driftline_events_valid_total", source="tx") == n_valid
        assert worker.metric_sum("driftline_events_valid_total", source="tx-avro") == 20
        # operational metrics: applied offsets match the log, lag drained, latency observed
        last_offsets: dict[int, int] = {}
        for partition, offset in tx_meta:
            last_offsets[partition] = max(last_offsets.get(partition, -1), offset)
        for partition, offset in last_offsets.items():
            applied = worker.metric_sum(
                "driftline_applied_offset", source="tx", partition=str(partition)
            )
            assert applied == offset, (partition, applied, offset)
        assert worker.metric_sum("driftline_consumer_lag_records", topic=f"tx-{suffix}") == 0
        assert worker.metric_sum("driftline_worker_ready") == 1
        assert worker.metric_sum("driftline_event_time_lag_seconds_count", source="tx") > 0
        assert worker.metric_sum("driftline_processing_latency_seconds_count", source="tx") > 0
        assert 0 <= worker.metric_sum("driftline_feature_freshness_seconds", group="spend") < 120
        for reason in set(expected_reason.values()):
            want = sum(1 for r in expected_reason.values() if r == reason)
            got = worker.metric_sum("driftline_events_invalid_total", source="tx", reason=reason)
            assert got == want, (reason, got, want)

        # dead letters: byte-identical payloads, reason headers, origin coordinates
        for topic, records, meta, expected in (
            (f"tx-{suffix}", json_records, tx_meta, expected_reason),
            (f"txa-{suffix}", avro_records, txa_meta, avro_expected),
        ):
            dead = asyncio.run(consume_all(kafka_bootstrap, f"{topic}.dlq", len(expected)))
            assert len(dead) == len(expected), (
                f"{topic}: {len(dead)} dead letters, want {len(expected)}"
            )
            by_origin = {(p, o): i for i, (p, o) in enumerate(meta)}
            for message in dead:
                headers = parse_dead_letter_headers(message.headers)
                index = by_origin[(int(headers["partition"]), int(headers["offset"]))]
                assert headers["topic"] == topic
                assert headers["reason"] == expected[index]
                assert headers["stage"] == REASONS[headers["reason"]]
                assert headers["exception.message"]
                assert message.value == records[index][1]
                assert message.key == records[index][0]

        # Redis holds each user's window aggregates, every valid event counted once
        expected_users: dict[str, list[dict[str, Any]]] = {}
        for key, value in json_records:
            if key.startswith(b"bad"):
                continue
            expected_users.setdefault(key.decode(), []).append(orjson.loads(value))
        vectors = asyncio.run(
            read_features(redis_url, f"e2e-{suffix}", config, "spend", sorted(expected_users))
        )
        for user, vector in zip(sorted(expected_users), vectors, strict=True):
            events = expected_users[user]
            assert vector.values["amount_count_24h"] == len(events), user
            assert vector.values["amount_sum_24h"] == pytest.approx(
                sum(e["amount"] for e in events), rel=1e-9
            )
            # ``last`` breaks event-time ties by arrival: the later record wins. Demo
            # event times are in ms and collide, so take the last of the maxima in
            # partition (= production) order, not max()'s first.
            newest = max(reversed(events), key=lambda e: e["event_time"])
            assert vector.newest_event_ms == newest["event_time"]
            assert vector.values["event_id_last"] == newest["event_id"]
        [avro_vector] = asyncio.run(
            read_features(redis_url, f"e2e-{suffix}", config, "spend-avro", ["avro-user"])
        )
        assert avro_vector.values["amount_sum_24h"] == pytest.approx(20 * 3.5)

        # the registry records each group version with the topic and contract it was deployed with
        registry = asyncio.run(registry_hash(redis_url, f"e2e-{suffix}:registry:spend"))
        record = orjson.loads(registry[b"v1"])
        assert record["lineage"]["topic"] == f"tx-{suffix}"
        assert record["lineage"]["schema"]["file"] == "transactions.schema.json"
        fingerprint = record["lineage"]["schema"]["fingerprint"]
        assert fingerprint.startswith("sha256:") and f"v1@{fingerprint}".encode() in registry
        written = int(registry[b"v1:last_write_ms"])  # so the registry knows when keys expire
        assert abs(written - time.time() * 1000) < 120_000

        assert worker.proc is not None and worker.proc.poll() is None, (
            "worker must survive bad input"
        )
        assert worker.get("/healthz")[0] == 200
    finally:
        code = worker.stop()
    assert code == 0, f"worker exit code {code} after SIGTERM:\n{worker.log()}"


def test_a_group_keyed_by_another_field_counts_each_event_once(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    """Users spread over 4 partitions; per-category features merge every partition's batches."""
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, redis_url, suffix))
    config["feature_groups"] = [
        {
            "name": "per_category",
            "version": 1,
            "source": "tx",
            "entity_key": "category",
            "values": {"amount": ["count", "sum"]},
            "distinct": ["user_id"],
            "windows": ["1h"],
        }
    ]
    demo = DemoEvents(users=20, seed=21, max_event_bytes=4096)  # distinct exact up to 32
    records = [demo.valid() for _ in range(600)]
    worker = WorkerProcess(tmp_path, config).start()
    try:
        asyncio.run(produce(kafka_bootstrap, f"tx-{suffix}", records))
        worker.wait_for("driftline_events_valid_total", 600, source="tx")
        events = [orjson.loads(v) for _, v in records]
        by_category: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            by_category.setdefault(e["category"], []).append(e)
        categories = sorted(by_category)
        as_of = max(e["event_time"] for e in events)
        vectors = asyncio.run(
            read_features(redis_url, f"e2e-{suffix}", config, "per_category", categories, as_of)
        )
        for category, vector in zip(categories, vectors, strict=True):
            mine = by_category[category]
            assert vector.values["amount_count_1h"] == len(mine), category
            assert vector.values["amount_sum_1h"] == pytest.approx(
                sum(e["amount"] for e in mine), rel=1e-9
            )
            assert vector.values["user_id_distinct_count_1h"] == len({e["user_id"] for e in mine})
    finally:
        worker.kill()
