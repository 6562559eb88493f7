"""A careful hand-written aiokafka pipeline: the second row of issue #14's table.

    python bench/handwritten.py --bootstrap HOST:PORT --topic T --redis-url URL
                                --prefix P --group G --events N [--contract FILE]

Run by ``bench/pipelines.py`` in its own process (so its CPU is its own); it
reports on stdout, one ``BENCH {json}`` line each: ``first`` (monotonic time
the first batch was durable, records in it) and ``end`` (monotonic time the
last batch was durable, totals), then waits for stdin to close before it
stops its clients, so the parent reads its CPU while it still runs.

What it does, per ``getmany(max_records=...)`` (``--max-records``;
``bench/pipelines.py`` passes the worker's default ``batch_max_events``), with
large fetch sizes:

* ``orjson.loads`` + a fastjsonschema validator compiled from the contract
  (``bench/contracts/pipelines.schema.json``); an invalid event is counted and
  skipped;
* per user, in process memory, 1 s buckets ``second -> [count, sum, min,
  max]`` of ``amount`` over the last 300 s of the user's event time; for every
  user the batch touched, 2 windows (1m, 5m) x 5 aggregations (count, sum,
  mean, min, max) as of the user's newest event, over the buckets
  ``(bucket(t) - n, bucket(t)]`` (driftline's rule; older buckets are pruned);
* river's ADWIN and Page-Hinkley fed every amount;
* one HSET per touched user per batch (``{prefix}:u:{user}``, the 10 values
  and the newest event time), all in one redis-py asyncio pipeline
  (``transaction=False``);
* a manual offset commit of the batch once the Redis pipeline has returned.

The state lives in this process only (a restart loses it): what a careful
engineer writes in an afternoon, not a fault-tolerant system.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from river.drift import ADWIN, PageHinkley

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "bench" / "contracts" / "pipelines.schema.json"
#: Window lengths in 1 s buckets: 1m and 5m.
SHORT_S, LONG_S = 60, 300


def report(**fields: Any) -> None:
    print("BENCH " + orjson.dumps(fields).decode(), flush=True)


def window_values(buckets: dict[int, list[Any]], newest_ms: int) -> dict[Any, float]:
    """The 10 features of one user as of its newest event; prunes buckets no window covers."""
    t = newest_ms // 1000
    cut_long = t - LONG_S  # buckets <= this are out of every window
    cut_short = t - SHORT_S
    c1 = c5 = 0
    s1 = s5 = 0.0
    lo1 = lo5 = math.inf
    hi1 = hi5 = -math.inf
    stale: list[int] = []
    for sec, (c, s, lo, hi) in buckets.items():
        if sec <= cut_long:
            stale.append(sec)
            continue
        if sec > t:  # ahead of the newest event: cannot happen, kept out of the windows
            continue
        c5 += c
        s5 += s
        if lo < lo5:
            lo5 = lo
        if hi > hi5:
            hi5 = hi
        if sec > cut_short:
            c1 += c
            s1 += s
            if lo < lo1:
                lo1 = lo
            if hi > hi1:
                hi1 = hi
    for sec in stale:
        del buckets[sec]
    out: dict[Any, float] = {"newest_ms": newest_ms, "count_1m": c1, "sum_1m": s1, "count_5m": c5}
    out["sum_5m"] = s5
    if c1:
        out.update(mean_1m=s1 / c1, min_1m=lo1, max_1m=hi1)
    if c5:
        out.update(mean_5m=s5 / c5, min_5m=lo5, max_5m=hi5)
    return out


async def run(args: argparse.Namespace) -> None:
    validate = fastjsonschema.compile(orjson.loads(args.contract.read_bytes()), use_formats=False)
    invalid_errors = (orjson.JSONDecodeError, fastjsonschema.JsonSchemaValueException)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
    )
    client = aioredis.Redis.from_url(args.redis_url)
    prefix = args.prefix
    states: dict[str, dict[int, list[Any]]] = {}
    newest: dict[str, int] = {}
    adwin = ADWIN()  # type: ignore[no-untyped-call]
    hinkley = PageHinkley()
    loads = orjson.loads
    seen = invalid = drifts = batches = writes = 0
    started = False
    await consumer.start()
    try:
        while seen < args.events:
            batch = await consumer.getmany(timeout_ms=1000, max_records=args.max_records)
            if not batch:
                continue
            touched: set[str] = set()
            offsets = {}
            for tp, messages in batch.items():
                for m in messages:
                    try:
                        doc = loads(m.value)
                        validate(doc)
                    except invalid_errors:
                        invalid += 1
                        continue
                    user = doc["user_id"]
                    amount = float(doc["amount"])
                    ts = doc["ts"]
                    sec = ts // 1000
                    buckets = states.get(user)
                    if buckets is None:
                        buckets = states[user] = {}
                    b = buckets.get(sec)
                    if b is None:
                        buckets[sec] = [1, amount, amount, amount]
                    else:
                        b[0] += 1
                        b[1] += amount
                        if amount < b[2]:
                            b[2] = amount
                        if amount > b[3]:
                            b[3] = amount
                    if ts > newest.get(user, -1):
                        newest[user] = ts
                    touched.add(user)
                    adwin.update(amount)  # type: ignore[no-untyped-call]
                    hinkley.update(amount)  # type: ignore[no-untyped-call]
                    if adwin.drift_detected or hinkley.drift_detected:
                        drifts += 1
                offsets[tp] = messages[-1].offset + 1
                seen += len(messages)
            pipe = client.pipeline(transaction=False)
            for user in touched:
                pipe.hset(f"{prefix}:u:{user}", mapping=window_values(states[user], newest[user]))
            await pipe.execute()
            await consumer.commit(offsets)
            batches += 1
            writes += len(touched)
            if not started:
                started = True
                report(first=time.monotonic(), at_first=seen)
        report(
            end=time.monotonic(),
            n=seen,
            invalid=invalid,
            drifts=drifts,
            batches=batches,
            hsets=writes,
            users=len(states),
        )
        await asyncio.to_thread(sys.stdin.read)  # the parent reads our CPU meanwhile
    finally:
        await consumer.stop()
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", required=True, help="Redis key prefix")
    ap.add_argument("--group", required=True, help="consumer group (fresh per run)")
    ap.add_argument("--events", type=int, required=True, help="stop after this many records")
    ap.add_argument("--contract", type=Path, default=CONTRACT)
    ap.add_argument("--max-records", type=int, default=10_000, help="getmany max_records")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
