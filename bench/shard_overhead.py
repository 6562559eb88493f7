"""What a batch costs to write with the store cut into shards: one script per shard it touches.

    python bench/shard_overhead.py [--shards 1,16,64] [--entities 20,100,1000] [--batches 60]
                                   [--redis-cluster]

On a Redis Cluster the worker applies a partition batch as one Lua script per
shard the batch touches (``redis.shards``, see docs/features.md, On Redis
Cluster), then one small script that moves the partition's progress.  A big
batch touches every shard with many entities each, and costs what one script
would; a small batch (a low rate, short polls) pays each script's fixed cost
in Redis and in the worker once per shard it touches.  This measures that
cost directly, without Kafka: ``RedisFeatureStore.apply`` of batches of N
distinct entities (the feature group of ``bench/features.py``: ``amount`` x 6
aggregations x 3 windows, batches encoded by ``features.batch.build_encoded``
as the worker does), on an embedded Redis with 1 shard (the one-Redis layout)
and with S shards (the cluster layout, which a single Redis runs too), and
with ``--redis-cluster`` on an embedded 3-primary cluster as well.

Per row, means over the batches after the first 10: the wall time of one
``apply``, the worker's CPU time in it (this process: building the
arguments, redis-py), Redis's own time in EVALSHA (``INFO commandstats``,
summed over the primaries, which run in parallel on a cluster) and the
scripts per apply (with shards: one per shard touched, plus the progress).
The machine is shared: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from driftline.features.batch import build_encoded
from driftline.features.definitions import FeatureGroup
from driftline.schemas import ParsedEvent
from driftline.sinks.feature_store import RedisFeatureStore
from driftline.sinks.redis_client import connect_redis
from driftline.streams.local.cluster import EmbeddedRedisCluster
from driftline.streams.local.embedded import EmbeddedRedis

GROUP = FeatureGroup.from_config(
    {
        "name": "spend",
        "version": 1,
        "source": "tx",
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
        "windows": ["1m", "5m", "1h"],
    }
)
WARM_UP = 10


@dataclass
class Row:
    store: str
    shards: int
    entities: int
    apply_ms: float
    cpu_ms: float
    redis_ms: float
    scripts: float


async def evalsha_usec(urls: list[str]) -> tuple[int, int]:
    """EVALSHA (microseconds, calls) summed over ``urls`` (each a node)."""
    usec = calls = 0
    for url in urls:
        client = connect_redis(url)
        try:
            stats: dict[str, Any] = await client.info("commandstats")
        finally:
            await client.aclose()
        stat = stats.get("cmdstat_evalsha", {})
        usec += int(stat.get("usec", 0))
        calls += int(stat.get("calls", 0))
    return usec, calls


async def measure(
    store_name: str, url: str, nodes: list[str], cluster: bool, shards: int, n: int, batches: int
) -> Row:
    client = connect_redis(url, cluster=cluster)
    store = RedisFeatureStore(client, prefix=f"bench-{uuid.uuid4().hex[:8]}", shards=shards)
    rng = random.Random(7)
    t0 = 1_700_000_000_000
    offset = -1
    spent = cpu = 0.0
    try:
        for b in range(batches):
            users = rng.sample(range(1_000_000), n)
            events = [
                ParsedEvent(f"user-{u}", t0 + b * 1000 + i, {"amount": rng.random() * 100})
                for i, u in enumerate(users)
            ]
            deltas = build_encoded(GROUP, events)
            assert deltas is not None
            if b == WARM_UP:
                usec0, calls0 = await evalsha_usec(nodes)
            started, cpu_started = time.perf_counter(), time.process_time()
            ok, _ = await store.apply(
                "tx",
                0,
                expected_offset=offset,
                new_offset=offset + n,
                watermark_ms=None,
                deltas=[(GROUP, deltas)],
            )
            if b >= WARM_UP:
                spent += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
            assert ok
            offset += n
        usec1, calls1 = await evalsha_usec(nodes)
    finally:
        await client.aclose()
    counted = batches - WARM_UP
    return Row(
        store_name,
        shards,
        n,
        spent / counted * 1000,
        cpu / counted * 1000,
        (usec1 - usec0) / counted / 1000,
        (calls1 - calls0) / counted,
    )


async def run(args: argparse.Namespace, redis_url: str, cluster: Any | None) -> list[Row]:
    rows = []
    for n in args.entities:
        for shards in args.shards:
            rows.append(
                await measure("one Redis", redis_url, [redis_url], False, shards, n, args.batches)
            )
        if cluster is not None:
            for shards in [s for s in args.shards if s > 1]:
                rows.append(
                    await measure(
                        f"cluster, {len(cluster.nodes)} primaries",
                        cluster.url,
                        cluster.urls,
                        True,
                        shards,
                        n,
                        args.batches,
                    )
                )
    return rows


def table(rows: list[Row]) -> str:
    out = [
        "| store | shards | entities per batch | apply, ms | worker CPU, ms "
        "| Redis (EVALSHA, all primaries), ms | scripts per apply |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.store} | {r.shards} | {r.entities:,} | {r.apply_ms:.2f} | {r.cpu_ms:.2f} "
            f"| {r.redis_ms:.2f} | {r.scripts:.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="1,16,64", help="shard counts to compare (1,16,64)")
    ap.add_argument("--entities", default="20,100,1000", help="distinct entities per batch")
    ap.add_argument(
        "--batches", type=int, default=60, help="batches per row (the first 10 warm up)"
    )
    ap.add_argument("--redis-cluster", action="store_true", help="also on a 3-primary cluster")
    args = ap.parse_args()
    args.shards = [int(s) for s in args.shards.split(",")]
    args.entities = [int(n) for n in args.entities.split(",")]
    if args.batches <= WARM_UP:
        ap.error(f"--batches must be more than {WARM_UP}")
    started = time.monotonic()
    with EmbeddedRedis() as redis_server:
        if args.redis_cluster:
            with EmbeddedRedisCluster() as cluster:
                rows = asyncio.run(run(args, redis_server.url, cluster))
        else:
            rows = asyncio.run(run(args, redis_server.url, None))
    print(f"command: `python bench/shard_overhead.py {' '.join(sys.argv[1:])}`")
    print(f"runtime: {time.monotonic() - started:.0f}s")
    print(table(rows))


if __name__ == "__main__":
    main()
