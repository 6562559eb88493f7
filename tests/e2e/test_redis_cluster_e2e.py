"""The real worker, serve and CLI on a real Redis Cluster (three primaries).

Two workers share the topic's partitions (one consumer group) while 40k
events stream in; one of them is SIGKILLed three times (each kill and each
restart is a rebalance).  Afterwards the features on the cluster equal the
brute-force reference (nothing counted twice, nothing lost), read three
ways: the store directly, ``driftline serve``'s HTTP API and ``driftline
features get``; the keys are spread over every primary, and expire; a replay
of the whole topic by another consumer group changes nothing.  Then a
primary of a cluster with replicas is SIGKILLed under a running worker.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml

from driftline.features.definitions import FeatureGroup
from driftline.features.keys import KeyLayout
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis
from tests.e2e.test_exactly_once import (
    Producer,
    brute_force,
    config_for,
    make_events,
    wait_until_applied,
)
from tests.worker_process import WorkerProcess, run_cli

pytestmark = pytest.mark.slow


class ServeProcess(WorkerProcess):
    """``driftline serve -c FILE`` on the free port a WorkerProcess picks."""

    command = "serve"
    ready_path = "/healthz"

    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        super().__init__(tmp_path, {**config, "serve": {"host": "127.0.0.1", "port": 0}})
        doc = yaml.safe_load(self.config_path.read_text())
        doc["serve"]["port"] = self.port
        doc["metrics"]["port"] = 0
        self.config_path.write_text(yaml.safe_dump(doc))


def cluster_client(url: str) -> redis.RedisCluster:
    return redis.RedisCluster.from_url(url)


def read_features(
    url: str, prefix: str, group: FeatureGroup, users: list[str], at: int
) -> list[Any]:
    """The group's features of ``users`` as of ``at``, read from the cluster (64 shards)."""

    async def read() -> list[Any]:
        client = connect_redis(url, cluster=True)
        try:
            return await RedisFeatureStore(client, prefix=prefix, shards=64).get(
                group, users, as_of_ms=at
            )
        finally:
            await client.aclose()

    return asyncio.run(read())


def mismatches(
    url: str, prefix: str, group: FeatureGroup, expected: dict[str, dict[str, Any]], at: int
) -> list[tuple[str, str, Any, Any]]:
    """Every feature on the cluster that differs from the brute-force ``expected``."""
    users = sorted(expected)
    vectors = read_features(url, prefix, group, users, at)
    return [
        (user, name, vector.values[name], want)
        for user, vector in zip(users, vectors, strict=True)
        for name, want in expected[user].items()
        if not same(vector.values[name], want)
    ]


def spend_group(config: dict[str, Any]) -> FeatureGroup:
    """The config's feature group, as the worker builds it."""
    return FeatureGroup.from_config({"entity_key": "user_id", **config["feature_groups"][0]})


def same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def test_workers_killed_and_rebalanced_on_a_cluster_count_each_event_once(
    tmp_path: Path, kafka_bootstrap: str, redis_cluster_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    prefix = f"e2e-{suffix}"
    config = config_for(kafka_bootstrap, redis_cluster_url, suffix)
    config["redis"]["cluster"] = True
    config["feature_groups"][0]["last"] = ["category"]
    events = make_events(40_000, 5_000, seed=15)
    rng = random.Random(15)
    steady = WorkerProcess(tmp_path, config).start()
    killed = WorkerProcess(tmp_path, config).start()
    producer = Producer(kafka_bootstrap, f"tx-{suffix}", events, rate=4_000)
    producer.start()
    try:
        for _ in range(3):
            time.sleep(rng.uniform(1.0, 3.0))
            killed.kill()  # SIGKILL
            killed = WorkerProcess(tmp_path, config).start()
        producer.join(timeout=120)
        assert producer.error is None, producer.error
        wait_until_applied(
            redis_cluster_url, prefix, producer, [steady, killed], timeout=180, cluster=True
        )
        assert steady.metric_sum("driftline_rebalances_total") >= 3
    finally:
        steady.stop()
        killed.stop()

    as_of = max(e["event_time"] for e in events)
    expected = brute_force(events, as_of)
    users = sorted(expected)
    group = spend_group(config)

    bad = mismatches(redis_cluster_url, prefix, group, expected, as_of)
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"
    later = read_features(redis_cluster_url, prefix, group, users, as_of + 2 * 3_600_000)
    assert {v.values["amount_count_1h"] for v in later} == {0}

    # the entity keys are on every primary, each with its TTL
    client = cluster_client(redis_cluster_url)
    layout = KeyLayout(prefix, 64)
    keys = [layout.entity_key("spend", 1, u) for u in users]
    owners = {client.nodes_manager.get_node_from_slot(client.keyslot(k)).name for k in keys}
    assert len(owners) == 3
    ttls = [client.pttl(k) for k in keys[:50]]
    assert all(0 < t <= group.ttl_ms for t in ttls), ttls[:5]

    # driftline serve and driftline features get read the same values from the cluster
    sample = users[:20]
    serve = ServeProcess(tmp_path, config).start()
    try:
        for user in sample:
            status, body = serve.get(f"/v1/features/spend/{user}?as_of={as_of}")
            assert status == 200, body
            served = orjson.loads(body)["features"]
            for name, want in expected[user].items():
                assert same(served[name], want), (user, name, served[name], want)
    finally:
        serve.stop()
    cli = run_cli(
        "features", "get", "-c", str(serve.config_path), "--json", "--as-of", str(as_of),
        *sample[:3],
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    rows = [orjson.loads(line) for line in cli.stdout.splitlines() if line.strip()]
    assert [r["entity"] for r in rows] == sample[:3]
    for row in rows:
        for name, want in expected[row["entity"]].items():
            assert same(row["features"][name], want), (row["entity"], name)

    # a replay: another consumer group reads the whole topic again into the same store,
    # and every record is skipped as applied
    replay = WorkerProcess(tmp_path, {**config, "app_id": f"e2e-{suffix}-replay"}).start()
    try:
        replay.wait_for("driftline_events_replayed_total", len(events), timeout=180, source="tx")
    finally:
        replay.stop()
    bad = mismatches(redis_cluster_url, prefix, group, expected, as_of)
    assert not bad, f"after the replay, {len(bad)} mismatches, e.g. {bad[:5]}"


def test_worker_rides_through_a_primary_killed_and_failed_over(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """kill -9 of a primary mid-stream: its replica takes over, the worker retries and goes on.

    Redis replication is asynchronous, so the replica may lack the primary's
    last writes (docs/features.md, On Redis Cluster): a count may fall short by
    what it lacked, but never exceed the reference (a fence and the features it
    guards are one script, replicated together), and the worker never stops.
    """
    from driftline.streams.local.cluster import EmbeddedRedisCluster

    with EmbeddedRedisCluster(primaries=3, replicas_per_primary=1) as cluster:
        suffix = uuid.uuid4().hex[:8]
        prefix = f"e2e-{suffix}"
        config = config_for(kafka_bootstrap, cluster.url, suffix)
        config["redis"]["cluster"] = True
        events = make_events(30_000, 3_000, seed=21)
        worker = WorkerProcess(tmp_path, config).start()
        producer = Producer(kafka_bootstrap, f"tx-{suffix}", events, rate=4_000)
        producer.start()
        try:
            worker.wait_for("driftline_events_valid_total", 5_000, timeout=120)
            victim = next(n for n in cluster.primaries if n.port != cluster.nodes[0].port)
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            producer.join(timeout=120)
            assert producer.error is None, producer.error
            wait_until_applied(cluster.url, prefix, producer, [worker], timeout=180, cluster=True)
            assert worker.proc is not None and worker.proc.poll() is None
            assert worker.metric_sum("driftline_effect_errors_total", target="redis") > 0
        finally:
            worker.stop()
        as_of = max(e["event_time"] for e in events)
        expected = brute_force(events, as_of)
        users = sorted(expected)
        group = spend_group(config)

        vectors = read_features(cluster.url, prefix, group, users, as_of)
        counted = want_total = 0
        for user, vector in zip(users, vectors, strict=True):
            got, want = vector.values["amount_count_1h"], expected[user]["amount_count_1h"]
            assert got <= want, (user, got, want)  # never counted twice
            counted += got
            want_total += want
        print(f"counted {counted} of {want_total} events in the 1h windows after the failover")
        assert counted >= 0.95 * want_total
