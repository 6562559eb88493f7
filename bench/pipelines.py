"""driftline against a raw consumer and a careful hand-written pipeline, side by side (#14).

    python bench/pipelines.py [--events 1000000] [--entities 10000] [--runs 1]
                              [--faust] [--no-processes-2] [--check-users 200]
                              [--bootstrap HOST:PORT] [--redis-url URL]

**The workload** (issue #14), produced ONCE to one 4-partition topic on the
embedded broker (Tansu, memory storage; or ``--bootstrap``): ``--events``
events ``{event_id, user_id, amount, country, ts}`` over ``--entities`` users
with Zipf(1.0) activity (weight ``1 / rank``), keyed by user (murmur2, as
Kafka's default partitioner), ``amount`` lognormal, event times ``ts`` 1 ms
apart ending just before the moment they are generated (so per partition
they only grow, and none is ahead of its record's timestamp).  The contract
is ``bench/contracts/pipelines.schema.json``, the driftline config
``bench/contracts/pipelines.yaml`` (``allowed_lateness`` and
``future_tolerance`` 1h, so nothing is refused; the worker's dead-letter
topic is checked empty at the end).

**The rows**, each reading the whole topic with a fresh consumer group (and a
fresh Redis key prefix), one after the other, in this order per run::

    raw (before), hand-written, driftline x1, driftline x2, [faust], raw (after)

1. *raw*: aiokafka ``getmany(max_records=100000)``, 8 MiB partition / 32 MiB
   request fetches (``bench/features.py``'s ``RAW_FETCH``), ``orjson.loads``
   of each value, nothing else.
2. *hand-written*: ``bench/handwritten.py`` (its docstring): fastjsonschema
   from the contract, 2 windows x 5 aggregations in 1 s buckets per user in
   memory, one pipelined HSET per touched user per batch, ADWIN + Page-Hinkley
   on every amount, offsets committed after the Redis pipeline returns.
3. *driftline x1*: ``driftline worker -c CONFIG`` (``bench/features.py``'s
   ``Worker``): the contract, one group ``amount: [count, sum, mean, min, max,
   std]`` x ``[1m, 5m, 1h]``, one field monitor on ``amount``.
4. *driftline x2*: the same with ``--processes 2``.
5. ``--faust``: a stock Faust agent, no tables, ``orjson.loads`` per event:
   the per-event overhead of Faust's stream alone.

Rows 1, 2 and 5 run as child processes of this script and print the
monotonic time of their first and last *durable* batch (raw: decoded; Faust:
the first and last event); driftline's clock is Redis: the offsets hash its
Lua script writes with the features (``bench/features.py``
``wait_applied``).  **Rate** = records after the first batch / time from the
first batch to the last (the first batch, up to 100k records for raw, is not
counted).  **CPU-s per 1M events** over that same interval, from
``/proc/<pid>/stat`` (utime + stime) deltas: of the row's process and all its
descendants (``--processes 2``: the supervisor and both workers), of Redis
(``/proc`` of the embedded server; ``INFO cpu`` with ``--redis-url``) and of
the broker (``/proc`` of Tansu; not shown with ``--bootstrap``), each divided
by the records in the interval.  ``--runs N`` repeats the whole sequence and
shows medians (per column).  The machine is shared and noisy: the figure to
compare is the **ratio to raw**, to the mean of the raw rows before and after.

driftline's notes show the worker's own breakdown (from its ``/metrics``,
summed over processes: share of wall time in batch processing and in the
Redis write, Lua time inside Redis from ``INFO commandstats``) and how long
after the features the drift monitor's checkpoint covered every value (its
``hw`` offsets in ``{prefix}:monitor:amount``; values wait for the slower
partitions, then ``drift.order_idle_after_s``), which the rate does not
include.  ``--profile FILE`` runs py-spy on the first 1-process driftline
row (``bench/features.py``'s breakdown by stage; that row's rate is lower).

**Exactness**: after each driftline row, ``--check-users`` users (the 10 most
active and a seeded sample of the rest) are read with
``driftline.AsyncFeatureClient`` as of each user's newest event time and
compared with a brute-force computation over the produced events: for each
window ``W`` at resolution ``r = W / 60`` the events with ``bucket(ts)`` in
``(bucket(t) - 60, bucket(t)]`` (``features/engine.py``), count exactly, sum /
mean / min / max / population std to 1e-9 relative.  A value that differs is a
mismatch; the table's footer gives how many of how many.

Everything it starts is stopped on exit (try/finally), even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson
import redis.asyncio as aioredis
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.features import (
    PARTITIONS,
    RAW_FETCH,
    RAW_MAX_RECORDS,
    SOURCE,
    Produced,
    Worker,
    cpu_seconds,
    create_source_topic,
    evalsha_usec,
    gc_paused,
    log,
    produce_bulk,
    redis_cpu,
    summarize_profile,
    tree_cpu,
    wait_applied,
)
from driftline.streams.local.embedded import create_topics
from driftline.streams.processes import child_preexec
from driftline.streams.settings import WorkerSettings

BENCH = ROOT / "bench"
CONTRACT = BENCH / "contracts" / "pipelines.schema.json"
CONFIG = BENCH / "contracts" / "pipelines.yaml"
HANDWRITTEN = BENCH / "handwritten.py"
GROUP = "amount_stats"
MONITOR = "amount"
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std")
#: window name -> (length ms, resolution ms): resolution W / 60 (the engine's default)
WINDOWS = {"1m": (60_000, 1_000), "5m": (300_000, 5_000), "1h": (3_600_000, 60_000)}
COUNTRIES = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE")
SHORT_LABELS = {"driftline1": "driftline, 1 process", "driftline2": "driftline --processes 2"}
ALERTS_TOPIC = "driftline.alerts"
REL_TOL = 1e-9
#: The worker's default batch (``worker.batch_max_events``, max.poll.records): the
#: hand-written pipeline's ``getmany(max_records=...)`` and Faust's poll get the same.
WORKER_BATCH = WorkerSettings().batch_max_events
FAUST_BATCH = WORKER_BATCH

ROW_LABELS = {
    "raw": "raw: aiokafka `getmany(max_records=100000)` + orjson only",
    "handwritten": "careful hand-written aiokafka pipeline: fastjsonschema, 2 windows x 5 "
    "aggregations in 1 s buckets, one pipelined HSET per touched user per batch, "
    "ADWIN + Page-Hinkley",
    "driftline1": "**driftline worker**, 1 process: JSON Schema contract, 3 windows x 6 "
    "aggregations, 1 drift monitor",
    "driftline2": "driftline `--processes 2`",
    "faust": "Faust agent without tables (per-event overhead alone)",
    "raw_after": "raw again, after the others",
}


# ----------------------------------------------------------------------------- workload


@dataclass
class Workload:
    """What was produced, kept compactly for the exactness check."""

    users: list[str]
    picks: list[int]  # event i -> user index
    amounts: list[float]
    ts: list[int]
    produced: Produced
    nbytes: int


def zipf_events(
    n: int, entities: int, seed: int = 14
) -> tuple[list[tuple[bytes, bytes]], list[str], list[int], list[float], list[int]]:
    """N events over ``entities`` users, Zipf(1.0) activity, ts 1 ms apart ending now - 1 ms."""
    rng = random.Random(seed)
    users = [f"user-{i:05d}" for i in range(entities)]
    cum: list[float] = []
    total = 0.0
    for rank in range(1, entities + 1):
        total += 1.0 / rank
        cum.append(total)
    with gc_paused():
        picks = rng.choices(range(entities), cum_weights=cum, k=n)
        amounts = [round(rng.lognormvariate(3.3, 0.8), 2) for _ in range(n)]
        base = int(time.time() * 1000) - n
        ts = [base + i for i in range(n)]
        keys = [u.encode() for u in users]
        dumps = orjson.dumps
        countries = [rng.choice(COUNTRIES) for _ in range(n)]
        records = [
            (
                keys[u],
                dumps(
                    {
                        "event_id": f"evt-{i:09d}",
                        "user_id": users[u],
                        "amount": amounts[i],
                        "country": countries[i],
                        "ts": ts[i],
                    }
                ),
            )
            for i, u in enumerate(picks)
        ]
    return records, users, picks, amounts, ts


# ----------------------------------------------------------------------------- CPU


@dataclass
class Snap:
    t: float
    proc_cpu: float
    procs: int
    redis_cpu: float
    broker_cpu: float
    lua_calls: int
    lua_usec: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Env:
    bootstrap: str
    redis_url: str
    workdir: Path
    client: aioredis.Redis
    topic: str
    redis_pid: int | None
    broker_pid: int | None
    workers: list[Worker] = field(default_factory=list)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def snap(self, pid: int, metrics: dict[str, float] | None = None) -> Snap:
        calls, usec = await evalsha_usec(self.client)
        if self.redis_pid is not None:
            r_cpu = cpu_seconds(self.redis_pid)
        else:
            r_cpu = await redis_cpu(self.client)
        cpu, procs = tree_cpu(pid)
        return Snap(
            time.monotonic(),
            cpu,
            procs,
            r_cpu,
            cpu_seconds(self.broker_pid) if self.broker_pid is not None else math.nan,
            calls,
            usec,
            metrics or {},
        )


@dataclass
class Measured:
    """One row of one run."""

    row: str
    rate: float
    events: int  # records in the measured interval
    seconds: float
    proc_cpu: float  # CPU seconds per 1M events
    redis_cpu: float
    broker_cpu: float
    notes: list[str] = field(default_factory=list)
    checked: int = 0
    mismatches: int = 0


def measured(row: str, events: int, t0: float, t1: float, a: Snap, b: Snap) -> Measured:
    per = 1e6 / events if events else math.nan
    return Measured(
        row,
        events / (t1 - t0) if t1 > t0 else math.inf,
        events,
        t1 - t0,
        (b.proc_cpu - a.proc_cpu) * per,
        (b.redis_cpu - a.redis_cpu) * per,
        (b.broker_cpu - a.broker_cpu) * per,
    )


# ----------------------------------------------------------------------------- child rows


def spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C reaches us only), dying with us, stderr to a file."""
    with log_path.open("wb") as err:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
            preexec_fn=child_preexec(os.getpid()),
        )


async def child_row(env: Env, row: str, argv: Sequence[str]) -> Measured:
    """Run a child that prints ``BENCH {"first": ..}`` / ``BENCH {"end": ..}``; snapshot at each."""
    log_path = env.workdir / f"{row}-{uuid.uuid4().hex[:6]}.log"
    proc = spawn(argv, log_path)
    env.children.append(proc)
    assert proc.stdout is not None and proc.stdin is not None
    reader = proc.stdout
    first: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    snaps: list[Snap] = []
    try:
        while end is None:
            line = (await asyncio.to_thread(reader.readline)).decode(errors="replace")
            if not line:
                raise RuntimeError(
                    f"{row} exited with {proc.wait()}:\n{log_path.read_text()[-3000:]}"
                )
            if "BENCH {" not in line:
                continue
            doc = orjson.loads(line[line.index("BENCH {") + 6 :])
            snaps.append(await env.snap(proc.pid))
            if "first" in doc:
                first = doc
            elif "end" in doc:
                end = doc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert first is not None and len(snaps) == 2
    result = measured(
        row, end["n"] - first["at_first"], first["first"], end["end"], snaps[0], snaps[1]
    )
    extra = {k: v for k, v in end.items() if k not in ("end", "n")}
    result.notes.append(
        f"{result.events:,} records in {result.seconds:.2f}s after the first batch "
        f"({first['at_first']:,} in it)" + "".join(f"; {k} {v:,}" for k, v in extra.items())
    )
    return result


def raw_argv(env: Env, n: int) -> list[str]:
    group = f"bench-raw-{uuid.uuid4().hex[:8]}"
    return [sys.executable, __file__, "--child", "raw", env.bootstrap, env.topic, str(n), group]


def handwritten_argv(env: Env, n: int) -> list[str]:
    suffix = uuid.uuid4().hex[:8]
    return [
        sys.executable,
        str(HANDWRITTEN),
        *("--bootstrap", env.bootstrap, "--topic", env.topic, "--redis-url", env.redis_url),
        *("--prefix", f"bench-hw-{suffix}", "--group", f"bench-hw-{suffix}"),
        *("--events", str(n), "--contract", str(CONTRACT)),
        *("--max-records", str(WORKER_BATCH)),
    ]


def faust_argv(env: Env, n: int) -> list[str]:
    app_id = f"bench-faust-{uuid.uuid4().hex[:8]}"
    return [sys.executable, __file__, "--child", "faust", env.bootstrap, env.topic, str(n), app_id]


def bench_report(**fields: Any) -> None:
    print("BENCH " + orjson.dumps(fields).decode(), flush=True)


async def raw_child(bootstrap: str, topic: str, n: int, group: str) -> None:
    """Row 1, in a child process: getmany(100000) + orjson.loads, a fresh group, no commits."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **RAW_FETCH,
    )
    await consumer.start()
    loads = orjson.loads
    seen = 0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=RAW_MAX_RECORDS)
            got = 0
            for messages in batch.values():
                for m in messages:
                    loads(m.value)
                got += len(messages)
            if got and not seen:
                bench_report(first=time.monotonic(), at_first=got)
            seen += got
        bench_report(end=time.monotonic(), n=seen)
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await consumer.stop()


def faust_child(bootstrap: str, topic: str, n: int, app_id: str) -> None:
    """Row 5, in a child process: a stock Faust agent, no tables, orjson.loads per event."""
    import logging

    import faust

    logging.basicConfig(level=logging.WARNING)
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=5,
        broker_max_poll_records=FAUST_BATCH,
        stream_buffer_maxsize=FAUST_BATCH,
        datadir=tempfile.mkdtemp(prefix="driftline-bench-faust-"),
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes)
    loads = orjson.loads

    @app.agent(source)
    async def ingest(stream: Any) -> None:
        seen = 0
        async for value in stream:
            loads(value)
            seen += 1
            if seen == 1:
                bench_report(first=time.monotonic(), at_first=1)
            if seen >= n:
                bench_report(end=time.monotonic(), n=seen)
                sys.stdin.read()  # blocks the loop: we are done, the parent reads our CPU
                os._exit(0)

    faust.Worker(
        app, loglevel="warning", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


# ----------------------------------------------------------------------------- driftline rows


def driftline_config(env: Env, suffix: str) -> dict[str, Any]:
    """``bench/contracts/pipelines.yaml`` with this run's addresses, topic, app_id and prefix."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["app_id"] = f"bench-pipelines-{suffix}"
    config["kafka"]["bootstrap_servers"] = env.bootstrap
    config["redis"] = {"url": env.redis_url, "key_prefix": f"bench-dl-{suffix}"}
    config["worker"]["data_dir"] = str(env.workdir / f"faust-{suffix}")
    (source,) = config["sources"]
    assert source["name"] == SOURCE
    source["topic"] = env.topic
    source["schema"] = str(CONTRACT)
    return config


def worker_metrics(worker: Worker) -> dict[str, float]:
    """The worker's /metrics, summed over its processes (and labels); {} if one does not answer.

    A busy worker can take seconds to answer (its event loop serves /metrics
    between batches), so the timeout is generous.
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for i in range(worker.processes):
        url = f"http://127.0.0.1:{worker.port + i}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                text = r.read().decode()
        except OSError:
            return {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
    out["_t"] = time.monotonic()
    return out


async def monitor_covered(
    client: aioredis.Redis, prefix: str, last: dict[int, int], limit_s: float = 60
) -> float:
    """Seconds until the monitor's checkpoint covers every partition's last offset (nan: not)."""
    key = f"{prefix}:monitor:{MONITOR}"
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        hw = await client.hget(key, "hw")
        marks = orjson.loads(hw) if hw else {}
        if all(marks.get(f"{SOURCE}/{p}", -1) >= o for p, o in last.items()):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return math.nan


async def driftline_row(
    env: Env, work: Workload, processes: int, check_users: int, profile: Path | None = None
) -> Measured:
    row = f"driftline{processes}"
    suffix = uuid.uuid4().hex[:8]
    config = driftline_config(env, suffix)
    await create_topics(env.bootstrap, {f"{config['app_id']}.monitor-values": 1})
    worker = Worker(env.workdir, config, processes)
    env.workers.append(worker)
    worker.start()
    try:
        ready_s = await worker.wait_ready()
        if profile is not None:
            worker.start_profiler(profile)
        snaps: list[Snap] = []

        async def on_first() -> None:
            snaps.append(await env.snap(worker.pid))  # CPU first, then the slower /metrics
            snaps[0].metrics = await asyncio.to_thread(worker_metrics, worker)

        n = work.produced.count
        applied = await wait_applied(
            env.client,
            worker,
            work.produced.last_offsets,
            limit_s=max(300.0, n / 1000),
            on_first=on_first,
        )
        end = await env.snap(worker.pid)
        end.metrics = await asyncio.to_thread(worker_metrics, worker)
        if profile is not None:
            worker.stop_profiler()
        result = measured(row, n - applied.at_first, applied.t_first, applied.t_end, snaps[0], end)
        lag = await monitor_covered(env.client, worker.prefix, work.produced.last_offsets)
        result.notes += driftline_notes(result, applied.at_first, ready_s, snaps[0], end, lag)
        result.checked, result.mismatches, detail = await check_features(
            env.redis_url, worker.prefix, work, check_users
        )
        result.notes.append(
            f"exactness: {result.checked:,} values of {check_users} users, "
            f"{result.mismatches} mismatches" + (f" ({detail})" if detail else "")
        )
        return result
    finally:
        worker.stop()


def driftline_notes(
    m: Measured, at_first: int, ready_s: float, a: Snap, b: Snap, monitor_lag: float
) -> list[str]:
    wall = b.metrics.get("_t", math.nan) - a.metrics.get("_t", math.nan)

    def delta(name: str) -> float:
        # a series absent at the first batch has observed nothing yet (the histograms
        # are observed just after the batch is durable, so the first one counts here)
        return b.metrics.get(name, math.nan) - a.metrics.get(name, 0.0)

    batch_s = delta("driftline_batch_processing_seconds_sum")
    write_s = delta("driftline_redis_write_seconds_sum")
    batches = delta("driftline_batch_size_events_count")
    scripts = b.lua_calls - a.lua_calls
    lua_s = (b.lua_usec - a.lua_usec) / 1e6
    valid = b.metrics.get("driftline_events_valid_total", math.nan)
    invalid = b.metrics.get("driftline_events_invalid_total", math.nan)
    return [
        f"{m.events:,} records in {m.seconds:.2f}s after the first applied batch "
        f"({at_first:,} in it); ready after {ready_s:.1f}s; {b.procs} process(es)",
        f"events valid / invalid {valid:,.0f} / {invalid:,.0f}; {batches:,.0f} batches "
        f"(mean {m.events / batches if batches else math.nan:,.0f} events)",
        f"batch processing {batch_s / wall:.0%} of wall time (summed over processes), of which "
        f"Redis write (args + Lua round trip) {write_s / batch_s if batch_s else math.nan:.0%}; "
        f"Lua inside Redis {lua_s:.1f}s = {lua_s * 1e6 / m.events:.1f}s per 1M events "
        f"({scripts:,} scripts, {lua_s * 1000 / max(scripts, 1):.1f} ms each)",
        f"drift monitor's checkpoint covered every value {monitor_lag:.1f}s after the features "
        "(not in the rate)",
    ]


# ----------------------------------------------------------------------------- exactness


def reference(amounts: list[float], times: list[int]) -> dict[str, Any]:
    """Brute force: the 18 features as of the newest of ``times``, (bucket(t)-60, bucket(t)]."""
    t = max(times)
    out: dict[str, Any] = {}
    for name, (length, res) in WINDOWS.items():
        n_buckets = length // res
        top = t // res
        xs = [a for a, x in zip(amounts, times, strict=True) if top - n_buckets < x // res <= top]
        count = len(xs)
        mean = math.fsum(xs) / count if count else None
        out[f"amount_count_{name}"] = count
        out[f"amount_sum_{name}"] = math.fsum(xs)
        out[f"amount_mean_{name}"] = mean
        out[f"amount_min_{name}"] = min(xs) if xs else None
        out[f"amount_max_{name}"] = max(xs) if xs else None
        out[f"amount_std_{name}"] = (
            math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / count) if mean is not None else None
        )
    return out


def same(expected: Any, got: Any) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, int) and not isinstance(expected, bool):
        return bool(got == expected)
    e, g = float(expected), float(got)
    return e == g or abs(e - g) <= REL_TOL * max(abs(e), abs(g))


def check_sample(work: Workload, k: int) -> list[int]:
    """The 10 most active users that have events, then a seeded sample of the rest."""
    active = sorted(set(work.picks))
    top = active[:10]
    rest = [u for u in active if u not in set(top)]
    return top + random.Random(200).sample(rest, min(max(k - len(top), 0), len(rest)))


async def check_features(
    url: str, prefix: str, work: Workload, k: int, *, cluster: bool = False
) -> tuple[int, int, str]:
    """(values checked, mismatches, first mismatches) of ``k`` users against brute force.

    ``url``: the store's Redis, or (``cluster``) a node of its Redis Cluster;
    ``bench/features.py`` checks its throughput runs with this too.
    """
    from driftline import AsyncFeatureClient

    sample = check_sample(work, k)
    wanted = set(sample)
    per_user: dict[int, tuple[list[float], list[int]]] = {u: ([], []) for u in sample}
    for u, a, t in zip(work.picks, work.amounts, work.ts, strict=True):
        if u in wanted:
            per_user[u][0].append(a)
            per_user[u][1].append(t)
    names = [f"amount_{agg}_{w}" for w in WINDOWS for agg in AGGREGATIONS]
    checked = mismatches = 0
    shown: list[str] = []
    async with AsyncFeatureClient.redis(url, prefix=prefix, cluster=cluster) as client:
        for u in sample:
            amounts, times = per_user[u]
            expected = reference(amounts, times)
            newest = max(times)
            (row,) = await client.get_online_features(
                [work.users[u]], [f"{GROUP}:{n}" for n in names], as_of_ms=newest
            )
            if row.newest_event_ms.get(GROUP) != newest:
                mismatches += 1
                shown.append(f"{work.users[u]} newest {row.newest_event_ms} != {newest}")
            for name in names:
                checked += 1
                got = row.values[f"{GROUP}:{name}"]
                if not same(expected[name], got):
                    mismatches += 1
                    if len(shown) < 3:
                        shown.append(f"{work.users[u]} {name}: {got!r} != {expected[name]!r}")
    return checked, mismatches, "; ".join(shown)


async def dead_letters(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(f"{topic}.dlq", p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        return sum(ends[p] - starts[p] for p in parts)
    finally:
        await consumer.stop()


# ----------------------------------------------------------------------------- table


def median_row(runs: list[Measured]) -> Measured:
    def med(attr: str) -> float:
        return float(statistics.median(getattr(m, attr) for m in runs))

    out = Measured(
        runs[0].row,
        med("rate"),
        int(med("events")),
        med("seconds"),
        med("proc_cpu"),
        med("redis_cpu"),
        med("broker_cpu"),
    )
    out.checked = sum(m.checked for m in runs)
    out.mismatches = sum(m.mismatches for m in runs)
    return out


def fmt_cpu(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}"


def print_table(
    results: dict[str, list[Measured]], params: dict[str, Any], command: str, extra: list[str]
) -> None:
    medians = {row: median_row(runs) for row, runs in results.items() if runs}
    raws = [medians[r].rate for r in ("raw", "raw_after") if r in medians]
    raw = statistics.mean(raws) if raws else math.nan
    runs = max(len(v) for v in results.values())
    print("\n## driftline against a raw consumer and a hand-written pipeline (#14)\n")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(f"\ncommand: `{command}`\n")
    print(
        "| pipeline | events/s | ratio to raw | CPU-s per 1M events (process / Redis / broker) "
        "| events per CPU-s (all three) |"
    )
    print("|---|---|---|---|---|")
    for row, m in medians.items():
        total = m.proc_cpu + m.redis_cpu + (0.0 if math.isnan(m.broker_cpu) else m.broker_cpu)
        bold = row == "driftline1"
        rate = f"{m.rate:,.0f}"
        ratio = f"{m.rate / raw:.3f}"
        if bold:
            rate, ratio = f"**{rate}**", f"**{ratio}**"
        print(
            f"| {ROW_LABELS[row]} | {rate} | {ratio} | {fmt_cpu(m.proc_cpu)} / "
            f"{fmt_cpu(m.redis_cpu)} / {fmt_cpu(m.broker_cpu)} | {1e6 / total:,.0f} |"
        )
    print(
        f"\nratio to raw: to the mean of the raw rows before and after ({raw:,.0f} events/s); "
        f"{'medians of ' + str(runs) + ' runs' if runs > 1 else 'one run'}, in the order "
        "of the table (raw again last)."
    )
    for row in ("driftline1", "driftline2"):
        if row in medians:
            m = medians[row]
            print(
                f"features exact ({SHORT_LABELS[row]}): {m.checked:,} values checked "
                f"(18 features of {m.checked // 18 // max(runs, 1)} users per run), "
                f"{m.mismatches} mismatches"
            )
    for line in extra:
        print(line)
    print("\nnotes per run:\n")
    for row, rs in results.items():
        for i, m in enumerate(rs):
            tag = f" (run {i + 1})" if len(rs) > 1 else ""
            print(f"- {row}{tag}: {m.rate:,.0f} events/s; " + "; ".join(m.notes))


# ----------------------------------------------------------------------------- main


def code_state() -> str:
    """The commit measured, and whether driftline's files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


async def run(
    args: argparse.Namespace, results: dict[str, list[Measured]], extra: list[str]
) -> None:
    from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis

    broker = redis_server = None
    env: Env | None = None
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    workdir = Path(tempfile.mkdtemp(prefix="driftline-pipelines-bench-"))
    try:
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
        redis_url = args.redis_url
        if redis_url is None:
            redis_server = EmbeddedRedis().start()
            redis_url = redis_server.url
        topic = f"bench-pipelines-{uuid.uuid4().hex[:8]}"
        env = Env(
            bootstrap,
            redis_url,
            workdir,
            aioredis.Redis.from_url(redis_url),
            topic,
            redis_server.pid if redis_server else None,
            broker.pid if broker else None,
        )
        await create_source_topic(bootstrap, topic)
        await create_topics(bootstrap, {ALERTS_TOPIC: PARTITIONS})
        n = args.events
        log(f"generating {n:,} events over {args.entities:,} Zipf(1.0) users ...")
        t0 = time.perf_counter()
        records, users, picks, amounts, ts = zipf_events(n, args.entities)
        nbytes = sum(len(v) for _, v in records)
        log(f"generated in {time.perf_counter() - t0:.1f}s; producing to {topic} ...")
        produced = await produce_bulk(bootstrap, topic, records)
        del records
        work = Workload(users, picks, amounts, ts, produced, nbytes)
        extra.append(
            f"produced {produced.count:,} events ({nbytes / produced.count:.0f} B avg) in "
            f"{produced.seconds:.1f}s; per partition: "
            + " / ".join(
                f"{(produced.last_offsets.get(p, -1) + 1) / produced.count:.0%}"
                for p in range(PARTITIONS)
            )
        )
        plan: list[str] = ["raw", "handwritten", "driftline1"]
        if args.processes_2:
            plan.append("driftline2")
        if args.faust:
            plan.append("faust")
        plan.append("raw_after")
        for run_i in range(args.runs):
            for row in plan:
                log(f"run {run_i + 1}/{args.runs}: {row} ...")
                if row in ("raw", "raw_after"):
                    m = await child_row(env, row, raw_argv(env, n))
                elif row == "handwritten":
                    m = await child_row(env, row, handwritten_argv(env, n))
                elif row == "faust":
                    m = await child_row(env, row, faust_argv(env, n))
                else:
                    processes = int(row[-1])
                    profile = args.profile if processes == 1 and run_i == 0 else None
                    m = await driftline_row(env, work, processes, args.check_users, profile)
                    if profile is not None:
                        extra.extend(summarize_profile(profile))
                m.row = row
                results.setdefault(row, []).append(m)
                log(
                    f"{row}: {m.rate:,.0f} events/s, CPU-s per 1M: process "
                    f"{m.proc_cpu:.1f}, Redis {m.redis_cpu:.1f}, broker {m.broker_cpu:.1f}; "
                    + "; ".join(m.notes)
                )
        extra.append(f"dead letters of the driftline rows: {await dead_letters(bootstrap, topic)}")
    finally:
        if env is not None:
            for worker in env.workers:
                worker.stop()
            for child in env.children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            with contextlib.suppress(Exception):
                await env.client.aclose()
        if redis_server is not None:
            redis_server.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=1_000_000, help="events (1,000,000)")
    ap.add_argument("--entities", type=int, default=10_000, help="Zipf(1.0) users (10,000)")
    ap.add_argument("--runs", type=int, default=1, help="repeat every row, show medians (1)")
    ap.add_argument("--faust", action="store_true", help="add a Faust agent without tables")
    ap.add_argument(
        "--no-processes-2",
        dest="processes_2",
        action="store_false",
        help="skip the driftline --processes 2 row",
    )
    ap.add_argument(
        "--check-users", type=int, default=200, help="users whose features are checked (200)"
    )
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of the embedded one")
    ap.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="run py-spy on the first 1-process driftline row, write its raw samples here",
    )
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, bootstrap, topic, n, name = args.child
        if kind == "raw":
            asyncio.run(raw_child(bootstrap, topic, int(n), name))
        else:
            faust_child(bootstrap, topic, int(n), name)
        return
    if args.runs < 1 or args.events < 1:
        ap.error("--runs and --events must be at least 1")
    command = shlex.join(["python", "bench/pipelines.py", *sys.argv[1:]])
    params = {
        "events": f"{args.events:,}",
        "users": f"{args.entities:,} (Zipf 1/rank)",
        "partitions": PARTITIONS,
        "kafka": "embedded Tansu" if args.bootstrap is None else args.bootstrap,
        "redis": "embedded" if args.redis_url is None else args.redis_url,
        "cores": os.cpu_count(),
        "driftline": code_state(),
    }
    results: dict[str, list[Measured]] = {}
    extra: list[str] = []
    started = time.monotonic()
    try:
        asyncio.run(run(args, results, extra))
    except (KeyboardInterrupt, asyncio.CancelledError):
        if results:
            print_table(results, params, command, extra)
        log("interrupted; everything it started was stopped")
        sys.exit(130)
    extra.append(f"runtime {time.monotonic() - started:.0f}s")
    print_table(results, params, command, extra)


if __name__ == "__main__":
    main()
