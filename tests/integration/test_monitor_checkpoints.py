"""Checkpoints in a real Redis that are not ours are refused, counted and replaced.

Whoever can write ``{prefix}:monitor:{name}`` must not be able to run code in
the worker: a pickled checkpoint (the format of older versions, or an
attacker's payload) is never unpickled, and neither are foreign bytes.
"""

from __future__ import annotations

import logging
import pickle
import random
import uuid

import orjson
import pytest
from prometheus_client import CollectorRegistry

from driftline.drift import ALL_SEGMENT, MonitorConfig
from driftline.sinks.kafka_sink import MemoryKafkaSink
from driftline.sinks.metrics import WorkerMetrics
from driftline.sinks.monitor_store import RedisMonitorStore, monitor_key
from driftline.sinks.redis_client import connect_redis
from driftline.streams.worker.monitors import MonitorRunner
from tests.integration.test_ownership import sample_batch

_UNPICKLED: list[str] = []


def _mark(what: str) -> str:
    _UNPICKLED.append(what)
    return what


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_mark, ("code ran in the worker",))


PICKLED = b"DLSEG\x01" + pickle.dumps({"config": {}, "payload": _Payload()}, protocol=5)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (PICKLED, "pickle"),
        (pickle.dumps(_Payload()), "pickle"),
        (b"\x00\xffnot ours", "unreadable"),
        (b'{"format": "driftline.segmented-monitor/3", "config": {}}', "config"),
        (b'{"format": "driftline.segmented-monitor/1"}', "format"),
        # a checkpoint of the lifecycle before baselines (December 2026): learned afresh
        (b'{"format": "driftline.segmented-monitor/2", "config": {}}', "format"),
    ],
)
async def test_a_foreign_checkpoint_is_refused_counted_and_replaced(
    redis_url: str, state: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect_redis(redis_url)
    registry = CollectorRegistry()
    prefix = f"ckpt-{uuid.uuid4().hex[:6]}"
    config = MonitorConfig.from_config(
        {"name": "a", "source": "tx", "field": "amount", "warmup": 100}
    )
    key = monitor_key(prefix, "a")
    runner = MonitorRunner(
        order_idle_after_s=0,  # one source partition: no wait for order
        monitors={"a": config},
        store=RedisMonitorStore(client, prefix=prefix),
        alerts=MemoryKafkaSink(),
        alerts_topic="alerts",
        metrics=WorkerMetrics(["tx"], registry),
    )
    rng = random.Random(5)
    try:
        await client.hset(key, mapping={"state": state, "seq": "7"})
        with caplog.at_level(logging.WARNING, logger="driftline.streams.worker.monitors"):
            await runner.process([sample_batch("a", 0, 0, [rng.gauss(0, 1) for _ in range(50)])])
        assert _UNPICKLED == []
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelno == logging.WARNING
        assert key in refused[0].getMessage() and reason in refused[0].getMessage()
        rejected = registry.get_sample_value(
            "driftline_monitor_checkpoint_rejected_total", {"monitor": "a", "reason": reason}
        )
        assert rejected == 1
        # learned afresh: 50 of 100 warm-up values, and the refused checkpoint is replaced
        labels = {"monitor": "a", "segment": ALL_SEGMENT}
        assert registry.get_sample_value("driftline_drift_warming_up", labels) == 1
        stored = await client.hget(key, "state")
        assert isinstance(stored, bytes)
        document = orjson.loads(stored)
        assert document["format"] == "driftline.segmented-monitor/3"
        assert document["monitors"][0]["n"] == 50
        assert await client.hget(key, "seq") == b"8"
    finally:
        await client.delete(key)
        await client.aclose()
