"""Exactly-once effect on Redis: SIGKILL the worker at random points, rebalance mid-stream.

Afterwards the features in Redis must equal a brute-force reference computed
from the input: nothing counted twice, nothing lost.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.test_worker_e2e import e2e_config, read_features
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow

WINDOWS = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}
BUCKETS = 60


def make_events(n: int, entities: int, seed: int) -> list[dict[str, Any]]:
    """Event times spread over ~n*5 ms ending well before now, out of order by up to 10 s."""
    rng = random.Random(seed)
    base = int(time.time() * 1000) - 15 * 60_000
    events = []
    for i in range(n):
        user = f"e{min(int(rng.paretovariate(1.2)), entities) - 1:05d}"
        events.append(
            {
                "event_id": f"id-{i}",
                "user_id": user,
                "amount": round(rng.lognormvariate(3, 1), 2),
                "category": rng.choice(["grocery", "fuel", "travel", "health"]),
                "event_time": base + i * 5 + rng.randint(-10_000, 0),
            }
        )
    return events


def brute_force(events: list[dict[str, Any]], as_of: int) -> dict[str, dict[str, Any]]:
    """Features straight from the definition: (t - W, t] at 60 buckets per window."""
    out: dict[str, dict[str, Any]] = {}
    by_user: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    for user, evs in by_user.items():
        features: dict[str, Any] = {}
        for name, w in WINDOWS.items():
            r = w // BUCKETS
            hi = as_of // r
            xs = [e["amount"] for e in evs if hi - BUCKETS < e["event_time"] // r <= hi]
            n = len(xs)
            mean = math.fsum(xs) / n if n else None
            features[f"amount_count_{name}"] = n
            features[f"amount_sum_{name}"] = math.fsum(xs)
            features[f"amount_mean_{name}"] = mean
            features[f"amount_min_{name}"] = min(xs) if n else None
            features[f"amount_max_{name}"] = max(xs) if n else None
            features[f"amount_std_{name}"] = (
                math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / n)
                if n and mean is not None
                else None
            )
        out[user] = features
    return out


def config_for(kafka: str, redis_url: str, suffix: str) -> dict[str, Any]:
    config = e2e_config(kafka, redis_url, suffix)
    config["sources"] = config["sources"][:1]
    config["worker"]["batch_max_events"] = 500  # many small batches: more places to be killed
    config["feature_groups"] = [
        {
            "name": "spend",
            "version": 1,
            "source": "tx",
            "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
            "windows": list(WINDOWS),
        }
    ]
    return config


class Producer(threading.Thread):
    """Sends events at a steady rate from a thread; records the last offset per partition."""

    def __init__(
        self, bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate = bootstrap, topic, events, rate
        self.last_offsets: dict[int, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            started = time.monotonic()
            pending = []
            for i, event in enumerate(self.events):
                pending.append(
                    await producer.send(
                        self.topic, orjson.dumps(event), key=event["user_id"].encode()
                    )
                )
                if i % 500 == 499:
                    for meta in await asyncio.gather(*pending):
                        self.last_offsets[meta.partition] = max(
                            self.last_offsets.get(meta.partition, -1), meta.offset
                        )
                    pending.clear()
                    ahead = (i + 1) / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            for meta in await asyncio.gather(*pending):
                self.last_offsets[meta.partition] = max(
                    self.last_offsets.get(meta.partition, -1), meta.offset
                )
        finally:
            await producer.stop()


def stored_offsets(redis_url: str, prefix: str, *, cluster: bool = False) -> dict[int, int]:
    import redis

    client = redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(f"{prefix}:offsets:tx")
    finally:
        client.close()
    return {int(k[1:]): int(v) for k, v in raw.items() if k.startswith(b"p")}


def wait_until_applied(
    redis_url: str,
    prefix: str,
    producer: Producer,
    workers: list[WorkerProcess],
    timeout: float,
    *,
    cluster: bool = False,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        offsets = stored_offsets(redis_url, prefix, cluster=cluster)
        if not producer.is_alive() and offsets == producer.last_offsets:
            return
        time.sleep(0.5)
    logs = "\n".join(w.log()[-2000:] for w in workers)
    raise AssertionError(
        f"not all offsets applied: {stored_offsets(redis_url, prefix, cluster=cluster)} vs {producer.last_offsets}\n{logs}"
    )


async def topic_duplicates(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records in the topic, event ids found more than once): tells producer retries from worker bugs."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: dict[str, int] = {}
    total = 0
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            for messages in batch.values():
                for m in messages:
                    total += 1
                    event_id = orjson.loads(m.value)["event_id"]
                    seen[event_id] = seen.get(event_id, 0) + 1
    finally:
        await consumer.stop()
    return total, sum(1 for n in seen.values() if n > 1)


def assert_features_match(
    redis_url: str,
    prefix: str,
    config: dict[str, Any],
    events: list[dict[str, Any]],
    bootstrap: str,
) -> None:
    as_of = max(e["event_time"] for e in events)
    expected = brute_force(events, as_of)
    users = sorted(expected)
    vectors = asyncio.run(read_features(redis_url, prefix, config, "spend", users, as_of_ms=as_of))
    mismatches = []
    for user, vector in zip(users, vectors, strict=True):
        for name, want in expected[user].items():
            got = vector.values[name]
            same = (
                got == want
                if not isinstance(want, float)
                else math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
            )
            if not same:
                mismatches.append((user, name, got, want))
    if mismatches:
        total, duplicated = asyncio.run(topic_duplicates(bootstrap, config["sources"][0]["topic"]))
        raise AssertionError(
            f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}; "
            f"the topic holds {total} records for {len(events)} events, {duplicated} ids more than once"
        )


def test_sigkill_five_times_features_equal_brute_force(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    prefix = f"e2e-{suffix}"
    config = config_for(kafka_bootstrap, redis_url, suffix)
    events = make_events(100_000, 10_000, seed=5)
    rng = random.Random(9)
    worker = WorkerProcess(tmp_path, config).start()
    producer = Producer(kafka_bootstrap, f"tx-{suffix}", events, rate=5_000)
    producer.start()
    kills = 0
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.5, 3.0))
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            kills += 1
            worker = WorkerProcess(tmp_path, config).start()
        producer.join(timeout=120)
        assert producer.error is None, producer.error
        wait_until_applied(redis_url, prefix, producer, [worker], timeout=120)
        replayed = worker.metric_sum("driftline_events_replayed_total")
    finally:
        worker.stop()
    assert kills == 5
    assert_features_match(redis_url, prefix, config, events, kafka_bootstrap)
    print(f"last worker skipped {replayed:.0f} replayed records")


def test_rebalance_two_workers_one_restarted(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    prefix = f"e2e-{suffix}"
    config = config_for(kafka_bootstrap, redis_url, suffix)
    events = make_events(40_000, 5_000, seed=6)
    first = WorkerProcess(tmp_path, config).start()
    second = WorkerProcess(tmp_path, config).start()
    producer = Producer(kafka_bootstrap, f"tx-{suffix}", events, rate=4_000)
    producer.start()
    try:
        time.sleep(3)
        assert second.stop() == 0  # graceful: partitions move to the first worker
        time.sleep(2)
        second = WorkerProcess(tmp_path, config).start()  # and back again
        producer.join(timeout=120)
        assert producer.error is None, producer.error
        wait_until_applied(redis_url, prefix, producer, [first, second], timeout=120)
        assert first.metric_sum("driftline_rebalances_total") >= 2
        # each partition's applied offset is exported by its owner only: the first
        # worker dropped the series of the partitions the restarted one took back
        owners: dict[str, int] = {}
        for worker in (first, second):
            for (name, labels), _ in worker.metrics().items():
                if name == "driftline_applied_offset":
                    partition = dict(labels)["partition"]
                    owners[partition] = owners.get(partition, 0) + 1
        partitions = config["kafka"]["topic_partitions"]
        assert owners == {str(p): 1 for p in range(partitions)}, owners
    finally:
        first.stop()
        second.stop()
    assert_features_match(redis_url, prefix, config, events, kafka_bootstrap)
