"""Connection trouble: the worker keeps running through a Redis outage and loses nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import pytest

from driftline.streams.local.embedded import EmbeddedRedis
from driftline.streams.local.ports import find_free_port
from tests.e2e.test_worker_e2e import e2e_config, json_source_only, produce, read_features
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow


def events(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = f"{prefix}-{i % 10}"
        event = {
            "event_id": f"{prefix}-{i}",
            "user_id": user,
            "amount": float(i),
            "category": "fuel",
            "event_time": now_ms + i,
        }
        out.append((user.encode(), orjson.dumps(event)))
    return out


def test_redis_outage_is_retried_and_nothing_is_lost(tmp_path: Path, kafka_bootstrap: str) -> None:
    port = find_free_port()
    server = EmbeddedRedis(port, log_dir=tmp_path).start()
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, server.url, suffix))
    config["worker"]["retry_backoff_max_s"] = 0.5
    config["redis"]["socket_timeout_s"] = 1
    worker = WorkerProcess(tmp_path, config).start()
    topic = f"tx-{suffix}"
    try:
        asyncio.run(produce(kafka_bootstrap, topic, events("before", 50)))
        worker.wait_for("driftline_events_valid_total", 50, source="tx")

        server.stop()
        asyncio.run(produce(kafka_bootstrap, topic, events("during", 50)))
        worker.wait_for("driftline_effect_errors_total", 2, source="tx", target="redis")
        assert (
            worker.metric_sum("driftline_events_valid_total", source="tx") == 50
        )  # blocked, not dropped
        assert worker.proc is not None and worker.proc.poll() is None

        server = EmbeddedRedis(port, log_dir=tmp_path).start()  # same address, empty memory
        worker.wait_for("driftline_events_valid_total", 100, source="tx", timeout=60)
        time.sleep(1)
        assert worker.metric_sum("driftline_events_valid_total", source="tx") == 100
        users = [f"during-{k}" for k in range(10)]
        vectors = asyncio.run(read_features(server.url, f"e2e-{suffix}", config, "spend", users))
        for k, vector in enumerate(vectors):
            assert vector.values["amount_count_24h"] == 5, users[k]  # i = k, k+10, ..., k+40
            assert vector.values["event_id_last"] == f"during-{40 + k}"
    finally:
        code = worker.stop()
        server.stop()
    assert code == 0, worker.log()
