"""Data-quality checks in the running worker, on a real broker and Redis.

Producer retries (the same record sent again), out-of-range amounts, a
category outside the declared domain and events without ``country`` go
through ``driftline worker``; the routed ones must reach the dead-letter topic
with their reason and stay out of the features, and every check must be
counted exactly in the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftline.schemas.deadletter import parse_dead_letter_headers
from tests.e2e.test_worker_e2e import (
    consume_all,
    e2e_config,
    json_source_only,
    produce,
    read_features,
)
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow


def event(i: int, rng: random.Random, now_ms: int, **overrides: Any) -> dict[str, Any]:
    doc = {
        "event_id": f"q-{i:05d}",
        "user_id": f"u{rng.randrange(10)}",
        "amount": round(rng.uniform(1, 500), 2),
        "category": rng.choice(["grocery", "fuel"]),
        "country": "DE",
        "event_time": now_ms - rng.randrange(20_000),  # within the 30 s lateness
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def test_quality_checks_count_route_and_keep_features_clean(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, redis_url, suffix))
    config["sources"][0]["quality"] = {
        "completeness": {"country": 0.05, "currency": 1.0},
        "unique": {"field": "event_id", "horizon": "1h", "action": "dead_letter"},
        "fields": {
            "amount": {"min": 0, "max": 1000},
            "category": {"allowed": ["grocery", "fuel"]},
        },
        "on_violation": "dead_letter",
    }
    rng = random.Random(5)
    now_ms = int(time.time() * 1000)
    good = [event(i, rng, now_ms, country=None if i % 20 == 0 else "DE") for i in range(200)]
    over = [event(1000 + i, rng, now_ms, amount=5000.0 + i) for i in range(10)]
    travel = [event(2000 + i, rng, now_ms, category="travel") for i in range(5)]
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in good + over + travel]
    retries = [records[i] for i in range(1, 200, 10)]  # 20 retries of events with a country
    expected_reasons = Counter({"duplicate": 20, "out_of_range": 10, "not_allowed": 5})

    worker = WorkerProcess(tmp_path, config).start()
    try:
        topic = f"tx-{suffix}"
        asyncio.run(produce(kafka_bootstrap, topic, records))
        asyncio.run(produce(kafka_bootstrap, topic, retries))  # after their originals
        total = len(records) + len(retries)
        worker.wait_for("driftline_events_consumed_total", total, source="tx")

        assert worker.metric_sum("driftline_quality_events_total", source="tx") == total
        assert worker.metric_sum("driftline_quality_duplicates_total", source="tx") == 20
        missing = worker.metric_sum("driftline_quality_missing_total", source="tx", field="country")
        assert missing == 10  # every 20th good event
        currency = worker.metric_sum("driftline_quality_missing_total", field="currency")
        assert currency == total  # nobody sends it
        violations = {
            (f, c): worker.metric_sum("driftline_quality_violations_total", field=f, check=c)
            for f, c in (("amount", "max"), ("amount", "min"), ("category", "allowed"))
        }
        assert violations == {
            ("amount", "max"): 10,
            ("amount", "min"): 0,
            ("category", "allowed"): 5,
        }
        for reason, n in expected_reasons.items():
            assert worker.metric_sum("driftline_events_invalid_total", reason=reason) == n
        limit = worker.metric_sum("driftline_quality_missing_ratio_limit", field="country")
        assert limit == 0.05
        assert worker.metric_sum("driftline_quality_dedup_ids", source="tx") == 215

        dead = asyncio.run(consume_all(kafka_bootstrap, f"{topic}.dlq", 35))
        reasons = Counter(parse_dead_letter_headers(m.headers)["reason"] for m in dead)
        assert reasons == expected_reasons
        for message in dead:
            headers = parse_dead_letter_headers(message.headers)
            assert headers["stage"] == "quality" and headers["exception.message"]

        # the features count each good event once: no retry, no violation
        by_user: dict[str, list[dict[str, Any]]] = {}
        for e in good:
            by_user.setdefault(e["user_id"], []).append(e)
        users = sorted(by_user)
        vectors = asyncio.run(read_features(redis_url, f"e2e-{suffix}", config, "spend", users))
        for user, vector in zip(users, vectors, strict=True):
            assert vector.values["amount_count_24h"] == len(by_user[user]), user
            assert vector.values["amount_max_24h"] == max(e["amount"] for e in by_user[user])
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    finally:
        worker.kill()
