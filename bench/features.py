"""The whole features pipeline, end to end: throughput, latency, memory.

    python bench/features.py [--events 1000000] [--entities 10000] [--quick]
                             [--entity-dist zipf|uniform|both] [--check-users 200]
                             [--redis-cluster [--primaries 3] [--shards S]]
                             [--latency-seconds 30] [--latency-rate 5000]
                             [--memory-entities 1000000] [--phases throughput,latency,memory]
                             [--bootstrap HOST:PORT] [--redis-url URL] [--profile FILE]
                             [--quality]

What runs: the embedded broker and Redis (or ``--bootstrap`` / ``--redis-url``),
and ``driftline worker -c CONFIG`` as a subprocess, as a user runs it, with one
source (``schemas/contracts/transactions.schema.json``) and ONE feature group:
``amount: [count, sum, mean, min, max, std]`` over ``[1m, 5m, 1h]`` (6
aggregations x 3 windows, 3 rings of 60 buckets).  Each phase uses a fresh
4-partition topic, consumer group, Redis key prefix and worker.

What is measured, and why that way:

1. **Throughput.**  N demo transactions over ``--entities`` users with Zipf
   activity (weight ``1 / rank**1.1``, as ``streams/local/demo.py``; or
   ``--entity-dist uniform``, every user equally likely; ``both``: a topic of
   each, one after the other), event times close to now and up to 3 s out of
   order, keyed by user, are produced before the worker starts.  The worker's
   rate is taken from Redis, not from the worker: the offsets hash
   ``{prefix}:offsets:{source}`` (``p{partition}`` = last applied offset) is
   written by the same Lua script that applies the batch's features, so it is
   the honest "effects durable" clock (Faust's commits lag behind it).  Rate =
   records applied after the first batch / time from the first batch applied to
   the last (also shown per quarter of the records: state grows during the run,
   and the tail waits on fetches).  The **raw baseline** is a plain aiokafka
   consumer (no group, earliest, ``getmany(max_records=100000)``, 8/32 MiB
   partition/request fetch sizes: as fast a consumer as
   ``bench/pipelines.py``'s raw row) that only ``orjson.loads`` every record,
   measured in the same run, before and after the worker.  The machine is
   shared and noisy (2 cores here, also running the broker and Redis), so the
   figure to compare across runs and machines is the **ratio to raw**, not
   events/s.  **Exactness**: once the worker has stopped, ``--check-users``
   users (user-00000 to -00009, the most active under Zipf, and a seeded
   sample) are read back with ``driftline.AsyncFeatureClient`` as of each one's
   newest event and compared with brute force over the produced events
   (``bench/pipelines.py``'s ``check_features``: counts exactly, the rest to
   1e-9 relative); the events are at most 3 s late, well inside the default
   ``allowed_lateness`` (30 s), so the worker refuses none of them.

   ``--redis-cluster`` starts an embedded Redis Cluster
   (``EmbeddedRedisCluster``: ``--primaries`` valkey servers, no replicas, the
   slots split evenly) and runs a second worker on the same topic, after the
   one on one Redis and before the raw consumer's second pass: ``redis.cluster:
   true`` and ``redis.shards: --shards`` (default: the worker's, 64).  Its
   clock is the same offsets hash, read through a cluster client: on a
   cluster the worker applies one script per shard a batch touches, then
   moves the partition's progress in that hash forward, so it still means
   "every record up to here is durable on every shard".  Two more tables
   follow the figures: one Redis against the cluster (events/s, ratio to the
   mean of both raw passes, CPU-seconds per 1M events of the worker, the
   broker and Redis, Lua time inside Redis, the exactness check), and per
   primary: its slots and shards, its entity keys and all the store's keys
   (``SCAN`` of that node), the events whose entity's shard it serves, its
   CPU-seconds per 1M events (``/proc/<pid>/stat``) and share of the
   primaries' CPU, its Lua time, and max/mean of each (1.00 = even).  Under
   Zipf a few users carry most events, and a user's shard lives on one
   primary, so the events spread less evenly than the keys; a primary's CPU
   follows the keys and buckets a batch touches (the worker merges a batch
   per entity and bucket first), which the table shows against the events.
   A Redis's CPU-seconds include what it spends idle (a cluster
   node's bus and cron); the per-primary table shows that rate, measured
   before its worker started.  CPU-seconds are taken between the first
   applied batch and the last (as ``bench/pipelines.py``), from ``/proc`` for
   every process started here (the worker with its children), ``INFO cpu``
   for ``--redis-url``.  The latency phase also runs on the cluster (below);
   the memory phase uses one Redis only.
2. **Latency** at a steady ``--latency-rate`` for ``--latency-seconds``: each
   event carries its produce wall time (``sent_at_ms``); the producer keeps
   every event's (partition, offset) from its RecordMetadata; a poller reads
   the offsets hash every ~5 ms.  An event's latency is the first poll that saw
   its partition's applied offset reach it, minus its produce time: produce
   to *visible in Redis*, including Kafka, the worker's fetch wait, the batch
   and the Lua script (resolution: the poll period plus one Redis round trip).
   Two plain aiokafka consumers read the same topic meanwhile, one with the
   ``fetch_max_wait_ms`` Faust's driver hard-codes (1500) and one with 50 ms:
   on the embedded Tansu, delivery latency grows with that wait (measured:
   p50 ~15 ms at 50, ~130 ms at 500, ~390 ms at 1500) where Apache Kafka
   answers as soon as ``fetch_min_bytes`` (1) are there, so the first is the
   floor of any Faust worker on this broker.  Percentiles: p50, p90, p95, p99
   and max (nearest rank).  With ``--redis-cluster`` the whole run is done
   twice, a worker on one Redis and then one on the cluster, each with its own
   fresh topic, raw consumers and key prefix; on the cluster the poller reads
   the same offsets hash through a cluster client (it is one key, moved
   forward once every shard's script of a batch has applied, so "visible"
   still means visible on every shard).  A table after the figures sets both
   side by side: p50 / p90 / p99 / max of the worker and of the two raw
   consumers of each run.
3. **Memory.**  The worker keeps no per-entity state, so its RSS should stay
   flat while ``--memory-entities`` distinct entities (one event each) stream
   through: RSS at start (ready, idle, empty topic) vs. after all are applied,
   and at each quarter of them (a plateau is the batch high-water mark, a
   steady climb would be a leak).  Its events/s is shown too: every event
   creates a key, the worst case for the Lua script.  Redis bytes
   per entity: ``INFO memory`` ``used_memory`` delta over the number of entity
   keys, plus ``MEMORY USAGE`` of a few sample keys.  The same figure is shown
   for the Zipf entities of the throughput phase (many buckets each).

Besides, from the worker's ``/metrics`` and Redis ``INFO``: the worker's CPU
use (from ``/proc``), the share of wall time in batch processing and in the
Redis write (``driftline_redis_write_seconds``: encoding the arguments + the
Lua round trip), and the Lua script's own time inside Redis
(``INFO commandstats``, evalsha).  ``--profile FILE`` runs py-spy on the
throughput-phase worker (``py-spy record -f raw --idle``), writes the raw
samples to FILE and prints the top self-time functions and a breakdown by
stage; the throughput of a profiled run is lower (py-spy shares the cores).

``--quality`` adds the data-quality checks a production config would have
(completeness of the contract's 7 fields, duplicate ``event_id`` within 1 h,
a range on ``amount`` and a domain on ``category``: ``QUALITY`` below); run
with and without it to see their cost as a change of the ratio to raw.

Everything it starts is stopped on exit (try/finally), even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import math
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson
import redis.asyncio as aioredis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from driftline.features.keys import MAX_SHARDS, key_slot, shard_of, shard_tags
from driftline.sinks.feature_store import stored_shards
from driftline.sinks.redis_client import RedisClient
from driftline.streams.local.embedded import create_topics
from driftline.streams.local.ports import find_free_port
from driftline.streams.processes import child_preexec
from driftline.streams.settings import DEFAULT_CLUSTER_SHARDS

CONTRACT = ROOT / "schemas" / "contracts" / "transactions.schema.json"
SOURCE = "transactions"
GROUP = "amount_stats"
PARTITIONS = 4
AGGREGATIONS = ["count", "sum", "mean", "min", "max", "std"]
WINDOWS = ["1m", "5m", "1h"]
CATEGORIES = ("grocery", "restaurant", "travel", "electronics", "fuel", "entertainment")
COUNTRIES = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE")
#: Nominal event-time rate of the pre-produced streams: N events cover N / rate s
#: of event time ending near "now" (1M events: 20 s, i.e. ~20 1-s buckets per hot user).
EVENT_TIME_RATE = 50_000
#: Events are up to this much out of order (event time behind their position).
DISORDER_MS = 3_000
LATENCY_POLL_S = 0.005
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Faust's aiokafka driver fixes ``fetch_max_wait_ms=1500`` for the worker's consumer.
FAUST_FETCH_MAX_WAIT_MS = 1500
#: The source's ``quality`` section with ``--quality``.
QUALITY: dict[str, Any] = {
    "unique": {"field": "event_id", "horizon": "1h"},
    "fields": {"amount": {"min": 0, "max": 100_000}, "category": {"allowed": list(CATEGORIES)}},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- events


def zipf_users(entities: int) -> tuple[list[str], list[float]]:
    """User ids and cumulative Zipf weights (``1 / rank**1.1``, as ``streams/local/demo.py``)."""
    users = [f"user-{i:05d}" for i in range(entities)]
    cum: list[float] = []
    total = 0.0
    for rank in range(entities):
        total += 1.0 / (rank + 1) ** 1.1
        cum.append(total)
    return users, cum


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No collections while building millions of tuples (they would rescan them all)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


#: ``--entity-dist``: how the throughput phase's events pick their entity.
DISTRIBUTIONS = {"zipf": "Zipf 1/rank^1.1", "uniform": "uniform"}


@dataclass
class Truth:
    """What the throughput phase produced, per event, for the exactness check.

    The fields of ``bench/pipelines.py``'s ``Workload`` (whose check this is).
    """

    users: list[str]
    picks: array[int]  # event i -> user index
    amounts: array[float]
    ts: array[int]  # event times (ms)


def entity_events(
    n: int, entities: int, dist: str = "zipf", seed: int = 1
) -> tuple[list[tuple[bytes, bytes]], Truth]:
    """N transactions over ``entities`` users, ``dist`` activity, event times ending near now."""
    with gc_paused():
        return _entity_events(n, entities, dist, seed)


def _entity_events(
    n: int, entities: int, dist: str, seed: int
) -> tuple[list[tuple[bytes, bytes]], Truth]:
    rng = random.Random(seed)
    users, cum = zipf_users(entities)
    if dist == "zipf":
        picks = rng.choices(range(entities), cum_weights=cum, k=n)
    elif dist == "uniform":
        picks = rng.choices(range(entities), k=n)
    else:
        raise ValueError(f"unknown entity distribution {dist!r}")
    keys = [u.encode() for u in users]
    base = int(time.time() * 1000) - n * 1000 // EVENT_TIME_RATE
    out: list[tuple[bytes, bytes]] = []
    truth = Truth(users, array("i", picks), array("d"), array("q"))
    add = out.append
    add_amount = truth.amounts.append
    add_ts = truth.ts.append
    lognorm = rng.lognormvariate
    expo = rng.expovariate
    choice = rng.choice
    dumps = orjson.dumps
    for i, u in enumerate(picks):
        amount = round(lognorm(3.3, 0.8), 2)
        category = choice(CATEGORIES)
        country = choice(COUNTRIES)
        ts = base + i * 1000 // EVENT_TIME_RATE - int(expo(1 / 400.0)) % DISORDER_MS
        add_amount(amount)
        add_ts(ts)
        add(
            (
                keys[u],
                dumps(
                    {
                        "event_id": f"evt-{i:09d}",
                        "user_id": users[u],
                        "amount": amount,
                        "currency": "EUR",
                        "category": category,
                        "country": country,
                        "event_time": ts,
                    }
                ),
            )
        )
    return out, truth


def distinct_events(n: int, seed: int = 2) -> list[tuple[bytes, bytes]]:
    """N transactions, each of its own entity (``mem-0000000`` ...), event times near now."""
    with gc_paused():
        return list(_distinct_events(n, seed))


def _distinct_events(n: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    base = int(time.time() * 1000)
    for i in range(n):
        user = f"mem-{i:07d}"
        yield (
            user.encode(),
            orjson.dumps(
                {
                    "event_id": f"evt-{i:09d}",
                    "user_id": user,
                    "amount": round(rng.lognormvariate(3.3, 0.8), 2),
                    "currency": "EUR",
                    "category": rng.choice(CATEGORIES),
                    "country": rng.choice(COUNTRIES),
                    "event_time": base - rng.randrange(DISORDER_MS),
                }
            ),
        )


# ----------------------------------------------------------------------------- kafka


@dataclass
class Produced:
    count: int
    seconds: float
    last_offsets: dict[int, int]  # partition -> offset of its last record


async def create_source_topic(bootstrap: str, topic: str) -> None:
    """The source topic and its dead-letter topic (the worker runs with create_topics: false)."""
    await create_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": PARTITIONS})


async def produce_bulk(
    bootstrap: str, topic: str, records: Iterator[tuple[bytes, bytes]] | list[tuple[bytes, bytes]]
) -> Produced:
    """As fast as aiokafka goes: whole record batches per partition (murmur2 of the key)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=50,
        max_batch_size=1 << 20,
        max_request_size=4 << 20,
        acks=1,
        request_timeout_ms=60_000,
    )
    await producer.start()
    last: dict[int, int] = {}
    count = 0
    t0 = time.perf_counter()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        n_parts = len(partitions)
        part_of: dict[bytes, int] = {}
        builders: dict[int, Any] = {}
        sizes: dict[int, int] = {}
        inflight: list[tuple[int, int, asyncio.Future[Any]]] = []

        async def settle(keep: int) -> None:
            while len(inflight) > keep:
                p, size, future = inflight.pop(0)
                meta = await future
                last[p] = max(last.get(p, -1), meta.offset + size - 1)

        async def flush(p: int) -> None:
            future = await producer.send_batch(builders.pop(p), topic, partition=p)
            inflight.append((p, sizes.pop(p), future))
            await settle(32)

        for key, value in records:
            p = part_of.get(key)
            if p is None:
                p = part_of[key] = partitions[(murmur2(key) & 0x7FFFFFFF) % n_parts]
            builder = builders.get(p)
            if builder is None:
                builder = builders[p] = producer.create_batch()
                sizes[p] = 0
            if builder.append(key=key, value=value, timestamp=None) is None:
                await flush(p)
                builder = builders[p] = producer.create_batch()
                sizes[p] = 0
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise RuntimeError(f"a record of {len(value)} bytes fits no batch")
            sizes[p] += 1
            count += 1
        for p in list(builders):
            await flush(p)
        await settle(0)
    finally:
        await producer.stop()
    return Produced(count, time.perf_counter() - t0, last)


#: The raw baseline's consumer (here and in ``bench/pipelines.py``): as fast as
#: aiokafka reads, large fetches and ``getmany`` batches (issue #14: with
#: ``max_records=10_000`` it was slower, which flattered the ratio to raw).
RAW_MAX_RECORDS = 100_000
RAW_FETCH: dict[str, Any] = {
    "max_partition_fetch_bytes": 8 << 20,
    "fetch_max_bytes": 32 << 20,
}


async def raw_baseline(bootstrap: str, topic: str, n: int) -> float:
    """Plain aiokafka, no group, ``orjson.loads`` per record: events/s after the first fetch."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **RAW_FETCH,
    )
    await consumer.start()
    loads = orjson.loads
    seen = 0
    first = 0
    t0 = 0.0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=RAW_MAX_RECORDS)
            got = 0
            for messages in batch.values():
                for m in messages:
                    loads(m.value)
                got += len(messages)
            if got and not t0:
                t0 = time.perf_counter()
                first = got
            seen += got
        elapsed = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return (n - first) / elapsed if elapsed > 0 else math.inf


# ----------------------------------------------------------------------------- worker


def worker_config(
    bootstrap: str,
    redis_url: str,
    topic: str,
    suffix: str,
    data_dir: Path,
    quality: bool = False,
    redis_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The worker's config; ``redis_options``: more of its ``redis`` section (``cluster``)."""
    source: dict[str, Any] = {
        "name": SOURCE,
        "topic": topic,
        "schema": str(CONTRACT),
        "entity_key": "user_id",
        "event_time": "event_time",
    }
    if quality:
        source["quality"] = QUALITY
    return {
        "app_id": f"bench-features-{suffix}",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "session_timeout_s": 6,
            "heartbeat_interval_s": 1,
            "rebalance_timeout_s": 5,
            "commit_interval_s": 1,
            "create_topics": False,
        },
        "redis": {"url": redis_url, "key_prefix": f"bench-{suffix}", **(redis_options or {})},
        "worker": {"log_level": "warning", "data_dir": str(data_dir)},
        "sources": [source],
        "feature_groups": [
            {
                "name": GROUP,
                "version": 1,
                "source": SOURCE,
                "values": {"amount": AGGREGATIONS},
                "windows": WINDOWS,
            }
        ],
    }


@dataclass
class ProcSample:
    t: float
    rss_kib: int
    cpu_s: float


def proc_sample(pid: int) -> ProcSample | None:
    """RSS and CPU seconds (user + system) of ``pid`` from ``/proc``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss = next((int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:"), 0)
    if not rss:  # a zombie, exiting
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return ProcSample(time.monotonic(), rss, cpu)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads); 0.0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of any of their threads)."""
    out = [pid]
    i = 0
    while i < len(out):
        for children in Path(f"/proc/{out[i]}/task").glob("*/children"):
            try:
                out += [int(c) for c in children.read_text().split()]
            except OSError:
                pass
        i += 1
    return out


def tree_cpu(pid: int) -> tuple[float, int]:
    """CPU seconds of ``pid`` and its descendants, and how many processes that was."""
    pids = descendants(pid)
    return sum(cpu_seconds(p) for p in pids), len(pids)


class Sampler(threading.Thread):
    """Samples a process's RSS and CPU every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__(daemon=True, name=f"sampler-{pid}")
        self.pid = pid
        self.period = period
        self.samples: list[ProcSample] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            sample = proc_sample(self.pid)
            if sample is None:
                return
            self.samples.append(sample)
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def peak_mib(self, since: float = 0.0, until: float = math.inf) -> float:
        return max((s.rss_kib for s in self.samples if since <= s.t <= until), default=0) / 1024

    def rss_mib_at(self, t: float) -> float:
        """RSS of the first sample at or after ``t`` (the last one if none)."""
        samples = list(self.samples)
        hit = next((s for s in samples if s.t >= t), samples[-1] if samples else None)
        return hit.rss_kib / 1024 if hit else math.nan

    def cpu_share(self, t0: float, t1: float) -> float:
        """CPU seconds per second (1.0 = one core busy) between ``t0`` and ``t1``."""
        samples = [s for s in self.samples if t0 - self.period <= s.t <= t1 + self.period]
        if len(samples) < 2 or samples[-1].t <= samples[0].t:
            return math.nan
        return (samples[-1].cpu_s - samples[0].cpu_s) / (samples[-1].t - samples[0].t)


def _free_port_run(n: int) -> int:
    """A port P with P .. P+n-1 free on loopback (``--processes``: one metrics port each)."""
    for _ in range(100):
        base = find_free_port()
        if base + n > 65536:
            continue
        try:
            for port in range(base + 1, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


class Worker:
    """``python -m driftline.streams.cli worker -c CONFIG`` in its own session, dying with us."""

    def __init__(self, workdir: Path, config: dict[str, Any], processes: int = 1) -> None:
        self.processes = processes
        self.port = find_free_port() if processes == 1 else _free_port_run(processes)
        self.config = {**config, "metrics": {"host": "127.0.0.1", "port": self.port}}
        self.prefix: str = config["redis"]["key_prefix"]
        self.path = workdir / f"worker-{self.port}.yaml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / f"worker-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None
        self.spy: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "driftline.streams.cli",
                    "worker",
                    "-c",
                    str(self.path),
                    "--processes",
                    str(self.processes),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
                preexec_fn=child_preexec(os.getpid()),
            )
        self.sampler = Sampler(self.proc.pid)
        self.sampler.start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def http(self, path: str, index: int = 0, timeout: float = 2) -> tuple[int, str]:
        port = self.port + index
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    async def wait_ready(self, limit_s: float = 90) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            self.check_alive()
            codes = [
                (await asyncio.to_thread(self.http, "/readyz", i))[0] for i in range(self.processes)
            ]
            if all(code == 200 for code in codes):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker not ready after {limit_s:.0f}s:\n{self.log()}")

    def metrics(self) -> dict[str, float]:
        """Sample name -> value, summed over labels.

        A busy worker serves /metrics between batches, so it may take seconds
        to answer (with 2 s, the snapshot at the first batch sometimes came back
        empty and the breakdown showed nan).
        """
        status, text = self.http("/metrics", timeout=15)
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    def start_profiler(self, path: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.spy = subprocess.Popen(
            [
                *(spy, "record", "-p", str(self.pid), "-f", "raw", "-o", str(path)),
                *("--idle", "--threads", "-r", "100", "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=child_preexec(os.getpid()),
        )

    def stop_profiler(self) -> None:
        spy, self.spy = self.spy, None
        if spy is None or spy.poll() is not None:
            return
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()

    def stop(self) -> None:
        self.stop_profiler()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.sampler is not None:
            self.sampler.stop()


# ----------------------------------------------------------------------------- redis


def offsets_key(prefix: str) -> str:
    return f"{prefix}:offsets:{SOURCE}"


async def applied_offsets(client: RedisClient, prefix: str) -> dict[int, int]:
    raw = await client.hgetall(offsets_key(prefix))
    return {int(k[1:]): int(v) for k, v in raw.items() if k[:1] in (b"p", "p")}


@dataclass
class Applied:
    t_first: float  # monotonic time the first applied batch was seen
    at_first: int  # records applied at that moment
    t_end: float  # monotonic time all records were seen applied
    trace: list[tuple[float, int]]  # (monotonic time, records applied) at every change

    def rate(self, total: int) -> float:
        elapsed = self.t_end - self.t_first
        return (total - self.at_first) / elapsed if elapsed > 0 else math.inf

    def rates_by_quarter(self, total: int) -> list[float]:
        """events/s in each quarter of the records applied after the first batch."""
        marks = [self.at_first + (total - self.at_first) * q // 4 for q in range(5)]
        times = [self.t_first, *(self.time_at(m) for m in marks[1:])]
        return [
            (marks[i + 1] - marks[i]) / (times[i + 1] - times[i])
            if times[i + 1] > times[i]
            else math.nan
            for i in range(4)
        ]

    def time_at(self, records: int) -> float:
        """When at least ``records`` were first seen applied."""
        return next((t for t, n in self.trace if n >= records), self.t_end)


async def wait_applied(
    client: RedisClient,
    worker: Worker,
    last_offsets: dict[int, int],
    limit_s: float,
    poll_s: float = 0.02,
    on_first: Callable[[], Awaitable[None]] | None = None,
) -> Applied:
    """Poll the offsets hash until every partition's last produced offset is applied.

    ``client``: a cluster client on a Redis Cluster (the hash is one key, on the
    primary of its slot, and means the same there).  ``on_first`` runs once the
    first applied batch is seen (to snapshot counters).
    """
    deadline = time.monotonic() + limit_s
    t_first = 0.0
    at_first = 0
    next_check = 0.0
    trace: list[tuple[float, int]] = []
    while time.monotonic() < deadline:
        offsets = await applied_offsets(client, worker.prefix)
        now = time.monotonic()
        applied = sum(o + 1 for o in offsets.values())
        if not trace or applied > trace[-1][1]:
            trace.append((now, applied))
        if offsets and not t_first:
            t_first = now
            at_first = applied
            if on_first is not None:
                await on_first()
        if all(offsets.get(p, -1) >= o for p, o in last_offsets.items()):
            return Applied(t_first, at_first, now, trace)
        if now >= next_check:
            worker.check_alive()
            next_check = now + 1.0
        await asyncio.sleep(poll_s)
    offsets = await applied_offsets(client, worker.prefix)
    raise RuntimeError(
        f"not all applied after {limit_s:.0f}s: {offsets} vs {last_offsets}\n{worker.log()}"
    )


async def redis_info(client: aioredis.Redis, section: str) -> dict[str, Any]:
    info: dict[str, Any] = await client.info(section)
    return info


async def evalsha_usec(client: aioredis.Redis) -> tuple[int, float]:
    """(calls, total microseconds) of EVALSHA inside Redis (scripts' own run time)."""
    stats = await redis_info(client, "commandstats")
    entry = stats.get("cmdstat_evalsha") or {}
    return int(entry.get("calls", 0)), float(entry.get("usec", 0))


async def redis_cpu(client: aioredis.Redis) -> float:
    cpu = await redis_info(client, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def used_memory(client: aioredis.Redis) -> int:
    return int((await redis_info(client, "memory"))["used_memory"])


async def entity_keys(client: aioredis.Redis, prefix: str, what: str = "fg:*") -> list[bytes]:
    """The keys of one server under ``{prefix}:{what}`` (the entity keys by default)."""
    keys: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:{what}", count=10_000):
        keys.append(key)
    return keys


async def cluster_slots(client: aioredis.Redis) -> dict[int, list[tuple[int, int]]]:
    """Port of each primary -> the slot ranges it serves (``CLUSTER SLOTS`` of one node)."""
    out: dict[int, list[tuple[int, int]]] = {}
    entries = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    for entry in entries:
        out.setdefault(int(entry[2][1]), []).append((int(entry[0]), int(entry[1])))
    return out


@dataclass
class Target:
    """Where a worker writes its features: one Redis, or a Redis Cluster (``--redis-cluster``).

    ``client`` reads the store's keys (a cluster client on a cluster); ``nodes``
    holds one plain client per server of the store (the primaries), for what
    is asked per server (``INFO``, ``SCAN``), and ``pids`` their processes when
    they run here (CPU from ``/proc``; from ``INFO cpu`` otherwise).
    """

    name: str  # for the tables: "one Redis", "cluster"
    url: str
    client: RedisClient
    nodes: list[aioredis.Redis]
    node_names: list[str]
    pids: list[int | None]
    cluster: bool = False
    shards: int | None = None  # redis.shards (None: the worker's default)
    slots: list[list[tuple[int, int]]] = field(default_factory=list)  # per node (cluster)

    def redis_options(self) -> dict[str, Any]:
        """The worker's ``redis`` settings beyond url and key_prefix."""
        if not self.cluster:
            return {}
        return {"cluster": True, **({"shards": self.shards} if self.shards else {})}

    def new_client(self) -> RedisClient:
        """A client of its own, of the store's kind (a cluster client on a cluster)."""
        if self.cluster:
            return aioredis.RedisCluster.from_url(self.url)
        return aioredis.Redis.from_url(self.url)

    def node_of_slot(self, slot: int) -> int:
        """Index in ``nodes`` of the primary that serves ``slot`` (0 on one Redis)."""
        for i, ranges in enumerate(self.slots):
            if any(low <= slot <= high for low, high in ranges):
                return i
        return 0

    async def aclose(self) -> None:
        for client in {id(c): c for c in [self.client, *self.nodes]}.values():
            with contextlib.suppress(Exception):
                await client.aclose()


def single_target(url: str, pid: int | None) -> Target:
    client = aioredis.Redis.from_url(url)
    return Target("one Redis", url, client, [client], [url.split("//")[-1]], [pid])


async def cluster_target(cluster: Any, shards: int | None) -> Target:
    """The primaries of an ``EmbeddedRedisCluster``, the worker on its first node."""
    primaries = list(cluster.primaries)
    nodes = [aioredis.Redis.from_url(node.url) for node in primaries]
    slots = await cluster_slots(nodes[0])
    return Target(
        "cluster",
        cluster.url,
        aioredis.RedisCluster.from_url(cluster.url),
        nodes,
        [f"127.0.0.1:{node.port}" for node in primaries],
        [node.pid for node in primaries],
        cluster=True,
        shards=shards,
        slots=[slots.get(node.port, []) for node in primaries],
    )


async def sample_key_sizes(client: RedisClient, keys: Sequence[bytes], k: int = 5) -> list[int]:
    picks = random.Random(3).sample(list(keys), min(k, len(keys)))
    return [int(await client.memory_usage(key, samples=0) or 0) for key in picks]


# ----------------------------------------------------------------------------- phases


@dataclass
class Results:
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # figure, value, note
    profile: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # markdown lines after the table

    def add(self, figure: str, value: str, note: str = "") -> None:
        self.rows.append((figure, value, note))
        log(f"{figure}: {value} {note}")


@dataclass
class NodeCounters:
    """What one Redis server had counted at one moment."""

    cpu_s: float
    evalsha_calls: int
    evalsha_usec: float


@dataclass
class Counters:
    """What the worker, Redis and the broker had counted at one moment.

    Redis figures are summed over the target's servers (the primaries of a
    cluster); ``nodes`` keeps them per server.
    """

    t: float
    metrics: dict[str, float]
    evalsha_calls: int
    evalsha_usec: float
    redis_cpu_s: float
    broker: ProcSample | None
    worker_cpu_s: float = math.nan  # the worker process and its children
    nodes: list[NodeCounters] = field(default_factory=list)


async def node_counters(client: aioredis.Redis, pid: int | None) -> NodeCounters:
    calls, usec = await evalsha_usec(client)
    cpu = cpu_seconds(pid) if pid is not None else await redis_cpu(client)
    return NodeCounters(cpu, calls, usec)


async def counters(env: Env, worker: Worker, target: Target | None = None) -> Counters:
    target = target or env.redis
    nodes = [await node_counters(c, pid) for c, pid in zip(target.nodes, target.pids, strict=True)]
    worker_cpu = tree_cpu(worker.pid)[0]
    broker = proc_sample(env.broker_pid) if env.broker_pid is not None else None
    return Counters(
        time.monotonic(),
        await asyncio.to_thread(worker.metrics),
        sum(n.evalsha_calls for n in nodes),
        sum(n.evalsha_usec for n in nodes),
        sum(n.cpu_s for n in nodes),
        broker,
        worker_cpu,
        nodes,
    )


def breakdown(first: Counters, last: Counters, worker_cpu: float) -> tuple[str, str]:
    """Where the wall time between two snapshots went: (worker CPU, details)."""
    wall = last.t - first.t

    def delta(name: str) -> float:
        # a series absent from an answer that has others has observed nothing yet
        absent = 0.0 if first.metrics else math.nan
        return last.metrics.get(name, math.nan) - first.metrics.get(name, absent)

    proc_s = delta("driftline_batch_processing_seconds_sum")
    redis_s = delta("driftline_redis_write_seconds_sum")
    scripts = last.evalsha_calls - first.evalsha_calls
    lua_s = (last.evalsha_usec - first.evalsha_usec) / 1e6
    servers = f" ({len(last.nodes)} primaries summed)" if len(last.nodes) > 1 else ""
    details = (
        f"batch processing {proc_s / wall:.0%} of wall time, of which Redis write "
        f"(args + Lua round trip) {redis_s / proc_s:.0%}; Lua inside Redis{servers} "
        f"{lua_s:.1f}s ({lua_s / wall:.0%} of wall, {scripts:,} scripts, "
        f"{lua_s * 1000 / max(scripts, 1):.1f} ms each); "
        f"Redis CPU{servers} {(last.redis_cpu_s - first.redis_cpu_s) / wall:.0%} of a core"
    )
    if first.broker is not None and last.broker is not None:
        broker_cpu = (last.broker.cpu_s - first.broker.cpu_s) / (last.broker.t - first.broker.t)
        details += f", broker CPU {broker_cpu:.0%} of a core"
    return f"{worker_cpu:.0%} of a core", details


def rss_by_progress(sampler: Sampler, applied: Applied, total: int) -> str:
    return " / ".join(
        f"{sampler.rss_mib_at(applied.time_at(total * q // 4)):.0f}" for q in (1, 2, 3, 4)
    )


@dataclass
class Env:
    bootstrap: str
    workdir: Path
    redis: Target  # one Redis: every phase
    broker_pid: int | None = None  # the embedded broker, to show its CPU use
    quality: bool = False  # --quality
    processes: int = 1  # --processes
    cluster: Target | None = None  # --redis-cluster: the throughput and latency phases too
    check_users: int = 200  # --check-users
    tagged: bool = False  # several throughput runs: tag their rows
    workers: list[Worker] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def client(self) -> aioredis.Redis:
        client = self.redis.client
        assert isinstance(client, aioredis.Redis)
        return client

    @property
    def targets(self) -> list[Target]:
        return [self.redis, *([self.cluster] if self.cluster is not None else [])]

    def new_worker(self, topic: str, target: Target | None = None) -> Worker:
        target = target or self.redis
        suffix = uuid.uuid4().hex[:8]
        config = worker_config(
            self.bootstrap,
            target.url,
            topic,
            suffix,
            self.workdir / f"faust-{suffix}",
            quality=self.quality,
            redis_options=target.redis_options(),
        )
        worker = Worker(self.workdir, config, self.processes)
        self.workers.append(worker)
        return worker.start()


@dataclass
class Run:
    """One worker's pass over the throughput topic (the cluster tables are built from these)."""

    dist: str
    target: Target
    rate: float
    events: int  # records applied after the first batch: the CPU figures' denominator
    first: Counters
    last: Counters
    shards: int  # recorded in the store
    keys: list[int]  # entity keys on each server
    store_keys: list[int]  # every key of the store's prefix on each server
    routed: list[int]  # events whose entity's shard each server serves
    idle_cpu: list[float]  # each server's CPU-s per s before the worker started
    checked: int = 0
    mismatches: int = 0

    def per_million(self, before: float, after: float) -> float:
        return (after - before) * 1e6 / self.events if self.events else math.nan


def routed_events(truth: Truth, target: Target, shards: int) -> list[int]:
    """Events per server of ``target``: where each event's entity's shard lives."""
    per_user = Counter(truth.picks)
    out = [0] * len(target.nodes)
    if shards == 1:
        out[0] = len(truth.picks)
        return out
    tags = shard_tags(shards)
    node_of_shard = [target.node_of_slot(key_slot(tag)) for tag in tags]
    for u, count in per_user.items():
        out[node_of_shard[shard_of(truth.users[u], shards)]] += count
    return out


async def check_exact(
    target: Target, prefix: str, truth: Truth, produced: Produced, k: int
) -> tuple[int, int, str]:
    """``bench/pipelines.py``'s check: ``k`` users read back against brute force."""
    from bench.pipelines import Workload, check_features  # it imports this module

    work = Workload(truth.users, truth.picks, truth.amounts, truth.ts, produced, 0)  # type: ignore[arg-type]
    return await check_features(target.url, prefix, work, k, cluster=target.cluster)


async def throughput_phase(
    env: Env, res: Results, n: int, entities: int, dist: str, profile: Path | None
) -> tuple[list[Run], float, float]:
    """One topic of ``dist`` events, read by a worker on each target: (runs, raw, raw again)."""
    tag = f" [{dist}]" if env.tagged else ""
    idle0 = [await counters_of(t) for t in env.targets]
    t_idle0 = time.monotonic()
    topic = f"bench-features-{uuid.uuid4().hex[:8]}"
    await create_source_topic(env.bootstrap, topic)
    log(f"throughput{tag}: generating {n:,} events over {entities:,} {dist} entities ...")
    t0 = time.perf_counter()
    events, truth = entity_events(n, entities, dist)
    gen_s = time.perf_counter() - t0
    nbytes = sum(len(v) for _, v in events)
    log(f"throughput{tag}: producing to {topic} ...")
    produced = await produce_bulk(env.bootstrap, topic, events)
    del events
    gc.collect()
    res.add(
        f"produce (bulk, 1 MiB batches){tag}",
        f"{produced.count / produced.seconds:,.0f} events/s",
        f"{produced.count:,} events ({nbytes / produced.count:.0f} B avg) in "
        f"{produced.seconds:.1f}s; generating them took {gen_s:.1f}s",
    )
    log(f"throughput{tag}: raw baseline ...")
    raw = await raw_baseline(env.bootstrap, topic, n)
    res.add(f"raw aiokafka + orjson.loads{tag}", f"{raw:,.0f} events/s", "baseline, ratio 1.00")
    runs: list[Run] = []
    for i, target in enumerate(env.targets):
        # a target's servers before its worker: idle since the phase began (the cluster's gossip)
        idle1 = await counters_of(target)
        idle_s = time.monotonic() - t_idle0
        idle_cpu = [(b - a) / idle_s for a, b in zip(idle0[i], idle1, strict=True)]
        run = await throughput_run(
            env,
            res,
            topic,
            produced,
            truth,
            raw,
            target,
            dist,
            idle_cpu,
            profile if i == 0 else None,
        )
        runs.append(run)
    raw2 = await raw_baseline(env.bootstrap, topic, n)
    ratios = [f"{r.rate / raw2:.3f}" + (f" ({r.target.name})" if env.tagged else "") for r in runs]
    res.add(
        f"raw aiokafka + orjson.loads (again){tag}",
        f"{raw2:,.0f} events/s",
        "noise of the machine; worker ratio to this one " + ", ".join(ratios),
    )
    if profile is not None:
        res.profile = summarize_profile(profile)
    return runs, raw, raw2


async def counters_of(target: Target) -> list[float]:
    """CPU seconds of each server of ``target``."""
    pairs = zip(target.nodes, target.pids, strict=True)
    return [(await node_counters(c, pid)).cpu_s for c, pid in pairs]


async def throughput_run(
    env: Env,
    res: Results,
    topic: str,
    produced: Produced,
    truth: Truth,
    raw: float,
    target: Target,
    dist: str,
    idle_cpu: list[float],
    profile: Path | None,
) -> Run:
    """A fresh worker on ``target`` reads the whole topic; its rows, then its features checked."""
    n = produced.count
    tag = f" [{dist}, {target.name}]" if env.tagged else ""
    mem0 = sum([await used_memory(c) for c in target.nodes])
    log(f"throughput{tag}: starting the worker ...")
    worker = env.new_worker(topic, target)
    assert worker.sampler is not None
    ready_s = await worker.wait_ready()
    if profile is not None:
        worker.start_profiler(profile)
    t_ready = time.monotonic()
    snapshots: list[Counters] = []

    async def snapshot() -> None:
        snapshots.append(await counters(env, worker, target))

    applied = await wait_applied(
        target.client,
        worker,
        produced.last_offsets,
        limit_s=max(300.0, n / 1000),
        on_first=snapshot,
    )
    if profile is not None:
        worker.stop_profiler()
    last = await counters(env, worker, target)
    sample_end = proc_sample(worker.pid)
    rate = applied.rate(n)
    wall = applied.t_end - applied.t_first
    res.add(
        f"worker: validate + 6x3 features + Redis{tag}",
        f"{rate:,.0f} events/s",
        f"ratio to raw {rate / raw:.3f}; {n - applied.at_first:,} events in {wall:.1f}s "
        f"after the first batch applied ({applied.at_first:,} in it); by quarter: "
        + " / ".join(f"{r:,.0f}" for r in applied.rates_by_quarter(n))
        + f" events/s; ready after {ready_s:.1f}s"
        + (" [under py-spy]" if profile else ""),
    )
    valid = last.metrics.get("driftline_events_valid_total", math.nan)
    invalid = last.metrics.get("driftline_events_invalid_total", math.nan)
    batches = last.metrics.get("driftline_batch_size_events_count", math.nan)
    # failed attempts of a Redis write (retried), records read again after a rebalance
    retried = last.metrics.get("driftline_effect_errors_total", 0.0)
    replayed = last.metrics.get("driftline_events_replayed_total", 0.0)
    res.add(
        f"worker: events valid / invalid / batches{tag}",
        f"{valid:,.0f} / {invalid:,.0f} / {batches:,.0f}",
        (f"mean batch {valid / batches:,.0f} events; " if batches else "")
        + f"effect errors (retried) {retried:,.0f}, events replayed {replayed:,.0f}",
    )
    res.add(
        f"worker CPU while applying{tag}",
        *breakdown(snapshots[0], last, worker.sampler.cpu_share(applied.t_first, applied.t_end)),
    )
    res.add(
        f"worker RSS (throughput){tag}",
        f"{worker.sampler.peak_mib(until=applied.t_end):.0f} MiB peak",
        f"{worker.sampler.rss_mib_at(t_ready):.0f} MiB at ready; at 25/50/75/100 % applied: "
        + rss_by_progress(worker.sampler, applied, n)
        + f" MiB; {(sample_end.rss_kib / 1024 if sample_end else math.nan):.0f} MiB at end",
    )
    per_node = [await entity_keys(c, worker.prefix) for c in target.nodes]
    keys = [k for node_keys in per_node for k in node_keys]
    mem1 = sum([await used_memory(c) for c in target.nodes])
    sizes = await sample_key_sizes(target.client, keys)
    res.add(
        f"Redis bytes/entity, {dist} state ({len(keys):,} entities){tag}",
        f"{(mem1 - mem0) / max(len(keys), 1):,.0f} B",
        f"used_memory +{(mem1 - mem0) / 2**20:.1f} MiB"
        + (f" over {len(target.nodes)} primaries" if target.cluster else "")
        + "; MEMORY USAGE of 5 keys: "
        + ", ".join(map(str, sizes)),
    )
    worker.stop()
    shards = await stored_shards(target.client, worker.prefix) or 1
    run = Run(
        dist,
        target,
        rate,
        n - applied.at_first,
        snapshots[0],
        last,
        shards,
        [len(k) for k in per_node],
        [len(await entity_keys(c, worker.prefix, "*")) for c in target.nodes],
        routed_events(truth, target, shards),
        idle_cpu,
    )
    if env.check_users > 0:
        log(f"throughput{tag}: checking {env.check_users} users' features against brute force ...")
        run.checked, run.mismatches, detail = await check_exact(
            target, worker.prefix, truth, produced, env.check_users
        )
        res.add(
            f"features exact{tag}",
            f"{run.mismatches} mismatches",
            f"{run.checked:,} values (18 features of {run.checked // 18:,} users: the 10 most "
            "active under Zipf, user-00000 to -00009, and a seeded sample) read back"
            + (" through a cluster client" if target.cluster else "")
            + " against brute force"
            + (f" ({detail})" if detail else ""),
        )
    return run


def imbalance(values: Sequence[float]) -> str:
    """max / mean of ``values`` (1.00: perfectly even)."""
    mean = sum(values) / len(values) if values else 0.0
    return f"{max(values) / mean:.2f}" if mean > 0 else "n/a"


def cluster_tables(phases: list[tuple[list[Run], float, float]]) -> list[str]:
    """``--redis-cluster``: one Redis against the cluster, and the spread over the primaries."""
    lines = [
        "",
        "### one Redis against the Redis Cluster (same topic, same run)",
        "",
        "| entities | store | events/s | ratio to raw | CPU-s per 1M events: worker / broker "
        "/ Redis (all servers) | Lua inside Redis, s per 1M (scripts) | features exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for runs, raw, raw2 in phases:
        mean_raw = (raw + raw2) / 2
        dist = runs[0].dist
        lines.append(
            f"| {dist} | raw aiokafka + orjson.loads, before / after | {raw:,.0f} / {raw2:,.0f} "
            f"| 1 (mean {mean_raw:,.0f}) | | | |"
        )
        for r in runs:
            a, b = r.first, r.last
            broker = (
                r.per_million(a.broker.cpu_s, b.broker.cpu_s)
                if a.broker is not None and b.broker is not None
                else math.nan
            )
            store = (
                f"cluster: {len(r.target.nodes)} primaries, {r.shards} shards"
                if r.target.cluster
                else "one Redis"
            )
            exact = (
                f"{r.mismatches} mismatches in {r.checked:,} values" if r.checked else "not checked"
            )
            lines.append(
                f"| {dist} | {store} | {r.rate:,.0f} | {r.rate / mean_raw:.3f} | "
                f"{r.per_million(a.worker_cpu_s, b.worker_cpu_s):.1f} / {broker:.1f} / "
                f"{r.per_million(a.redis_cpu_s, b.redis_cpu_s):.1f} | "
                f"{r.per_million(a.evalsha_usec / 1e6, b.evalsha_usec / 1e6):.2f} "
                f"({b.evalsha_calls - a.evalsha_calls:,}) | {exact} |"
            )
    lines += [
        "",
        "ratio to raw: to the mean of the raw consumer before and after the workers (one "
        "Redis first, then the cluster). CPU-s per 1M events: CPU from /proc/<pid>/stat "
        "(utime + stime) between the first applied batch and the last, over the records "
        "applied in that interval.",
        "",
        "### the cluster's primaries: how evenly keys, events and CPU spread",
        "",
        "| entities | primary | slots | shards | entity keys | keys of the store | events "
        "routed | CPU-s per 1M events | CPU share | Lua s per 1M (scripts) | idle CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for runs, _, _ in phases:
        for r in runs:
            if not r.target.cluster:
                continue
            t = r.target
            tags = shard_tags(r.shards) if r.shards > 1 else ("",)
            shards_on = Counter(t.node_of_slot(key_slot(tag)) for tag in tags)
            cpu = [nb.cpu_s - na.cpu_s for na, nb in zip(r.first.nodes, r.last.nodes, strict=True)]
            lua = [
                (nb.evalsha_usec - na.evalsha_usec) / 1e6
                for na, nb in zip(r.first.nodes, r.last.nodes, strict=True)
            ]
            scripts = [
                nb.evalsha_calls - na.evalsha_calls
                for na, nb in zip(r.first.nodes, r.last.nodes, strict=True)
            ]
            total_cpu = sum(cpu) or math.nan
            total_events = sum(r.routed) or 1
            for i, name in enumerate(t.node_names):
                slots = ", ".join(f"{low}-{high}" for low, high in t.slots[i])
                lines.append(
                    f"| {r.dist} | {name} | {slots} | {shards_on[i]} | {r.keys[i]:,} | "
                    f"{r.store_keys[i]:,} | {r.routed[i]:,} ({r.routed[i] / total_events:.1%}) | "
                    f"{cpu[i] * 1e6 / r.events:.2f} | {cpu[i] / total_cpu:.1%} | "
                    f"{lua[i] * 1e6 / r.events:.2f} ({scripts[i]:,}) | "
                    f"{r.idle_cpu[i] * 1000:.0f} ms/s |"
                )
            lines.append(
                f"| {r.dist} | **max / mean** | | {imbalance(list(shards_on.values()))} | "
                f"{imbalance(r.keys)} | {imbalance(r.store_keys)} | {imbalance(r.routed)} | "
                f"{imbalance(cpu)} | max {max(cpu) / total_cpu:.1%} | {imbalance(lua)} | |"
            )
    lines += [
        "",
        "entity keys: `SCAN MATCH {prefix}:fg:*` of each primary; keys of the store: "
        "`{prefix}:*` (entity keys, one fence per shard, and the offsets, layout and registry "
        "keys on the primaries of their slots); events routed: the produced events whose "
        "entity's shard (crc32(entity) mod shards) has its hash tag's slot on that primary; "
        "CPU share: of the primaries' CPU in the measured interval; Lua: EVALSHA time inside "
        "each primary (INFO commandstats); idle CPU: each primary's CPU per second of wall "
        "time before its worker started (cluster bus, cron), included in its CPU-s.",
    ]
    return lines


QUANTILES = (0.5, 0.9, 0.95, 0.99)


def quantiles(values: list[float]) -> list[float]:
    """``QUANTILES`` of ``values``, then their max (nearest rank, as the rows show them)."""
    xs = sorted(values)
    return [xs[min(len(xs) - 1, int(x * len(xs)))] for x in QUANTILES] + [xs[-1]]


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    names = [f"p{round(x * 100)}" for x in QUANTILES] + ["max"]
    return ", ".join(f"{n} {v:.0f} ms" for n, v in zip(names, quantiles(values), strict=True))


@dataclass
class LatencyRun:
    """One worker's steady-rate run (the ``--redis-cluster`` latency table is built from these)."""

    target: Target
    events: int
    rate: float  # events/s actually produced
    visible: list[float]  # produce -> visible in Redis, ms, per event
    raw: dict[int, list[float]]  # fetch_max_wait_ms -> produce -> raw consumer, ms, per event
    cpu: float  # the worker's share of a core while producing
    shards: int  # recorded in the store


async def latency_phase(env: Env, res: Results, seconds: float, rate: float) -> None:
    """A steady-rate run on each target (one Redis, then the cluster), a fresh topic each."""
    runs = [await latency_run(env, res, target, seconds, rate) for target in env.targets]
    if env.cluster is not None:
        res.tables += latency_table(runs)


async def latency_run(
    env: Env, res: Results, target: Target, seconds: float, rate: float
) -> LatencyRun:
    """Produce at a steady rate; produce -> visible in ``target``, and -> a raw consumer."""
    tag = f" [{target.name}]" if env.cluster is not None else ""
    topic = f"bench-features-lat-{uuid.uuid4().hex[:8]}"
    await create_source_topic(env.bootstrap, topic)
    worker = env.new_worker(topic, target)
    assert worker.sampler is not None
    await worker.wait_ready()
    await asyncio.sleep(1.0)  # let the join settle
    key = offsets_key(worker.prefix)
    fields = [f"p{p}" for p in range(PARTITIONS)]
    # partition -> (applied offsets seen, wall ms when first seen), both ascending
    seen: dict[int, tuple[list[int], list[float]]] = {p: ([], []) for p in range(PARTITIONS)}
    # fetch_max_wait_ms -> (partition, offset) -> wall ms received by a raw consumer
    received: dict[int, dict[tuple[int, int], float]] = {FAUST_FETCH_MAX_WAIT_MS: {}, 50: {}}
    done = asyncio.Event()
    # its own client (a cluster client on a cluster: the hash is one key, on its slot's primary)
    poll_client = target.new_client()

    async def poll() -> None:
        current = dict.fromkeys(range(PARTITIONS), -1)
        while not done.is_set():
            values = await poll_client.hmget(key, fields)
            now = time.time() * 1000
            for p, v in enumerate(values):
                if v is not None and int(v) > current[p]:
                    current[p] = int(v)
                    seen[p][0].append(current[p])
                    seen[p][1].append(now)
            await asyncio.sleep(LATENCY_POLL_S)

    async def raw_consumer(fetch_max_wait_ms: int, started: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=env.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        await consumer.start()
        started.set()
        out = received[fetch_max_wait_ms]
        try:
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time() * 1000
                for messages in batch.values():
                    for m in messages:
                        orjson.loads(m.value)
                        out[(m.partition, m.offset)] = now
        finally:
            await consumer.stop()

    n = int(seconds * rate)
    sent: list[tuple[float, asyncio.Future[Any]]] = []
    rng = random.Random(4)
    users, cum = zipf_users(10_000)
    picks = rng.choices(users, cum_weights=cum, k=n)
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, linger_ms=2, acks=1)
    await producer.start()
    tasks = [asyncio.create_task(poll())]
    for wait_ms in received:
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(raw_consumer(wait_ms, ready)))
        await ready.wait()
    log(f"latency{tag}: {n:,} events at {rate:,.0f}/s to {topic} ...")
    try:
        started = time.monotonic()
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - started) * rate) + 1)
            while i < due:
                user = picks[i]
                now_ms = time.time() * 1000
                value = orjson.dumps(
                    {
                        "event_id": f"lat-{i:09d}",
                        "user_id": user,
                        "amount": round(rng.lognormvariate(3.3, 0.8), 2),
                        "currency": "EUR",
                        "category": rng.choice(CATEGORIES),
                        "country": rng.choice(COUNTRIES),
                        "event_time": int(now_ms) - int(rng.expovariate(1 / 300.0)) % 2000,
                        "sent_at_ms": now_ms,
                    }
                )
                sent.append((now_ms, await producer.send(topic, value, key=user.encode())))
                i += 1
            await asyncio.sleep(0.002)
        send_s = time.monotonic() - started
        metas = [(t, await f) for t, f in sent]
        last: dict[int, int] = {}
        for _, m in metas:
            last[m.partition] = max(last.get(m.partition, -1), m.offset)
        await wait_applied(target.client, worker, last, limit_s=120)
        await asyncio.sleep(max(3 * LATENCY_POLL_S, FAUST_FETCH_MAX_WAIT_MS / 1000))
    finally:
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await poll_client.aclose()
    latencies: list[float] = []
    for t_sent, m in metas:
        offsets, times = seen[m.partition]
        j = bisect.bisect_left(offsets, m.offset)
        latencies.append(times[j] - t_sent)
    sampler = worker.sampler
    cpu = sampler.cpu_share(started, started + send_s)
    rss_end = sampler.rss_mib_at(started + send_s)
    rss_peak = sampler.peak_mib(since=started, until=started + send_s)
    worker.stop()
    res.add(
        f"latency produce -> visible in Redis{tag}",
        percentiles(latencies),
        f"{n:,} events at {n / send_s:,.0f}/s over {send_s:.0f}s; poll every "
        f"{LATENCY_POLL_S * 1000:.0f} ms" + (" through a cluster client" if target.cluster else ""),
    )
    raw: dict[int, list[float]] = {}
    for wait_ms, got in received.items():
        raw[wait_ms] = [
            got[(m.partition, m.offset)] - t for t, m in metas if (m.partition, m.offset) in got
        ]
        res.add(
            f"latency produce -> raw consumer (fetch_max_wait {wait_ms} ms){tag}",
            percentiles(raw[wait_ms]),
            "Faust's default wait (driftline sets kafka.fetch_max_wait_s, default 0.1 s)"
            if wait_ms == FAUST_FETCH_MAX_WAIT_MS
            else "same run, the broker's floor",
        )
    res.add(
        f"worker CPU at {rate:,.0f} events/s{tag}",
        f"{cpu:.0%} of a core",
        f"RSS {rss_end:.0f} MiB at the end, peak {rss_peak:.0f} MiB",
    )
    shards = await stored_shards(target.client, worker.prefix) or 1
    return LatencyRun(target, n, n / send_s, latencies, raw, cpu, shards)


def latency_table(runs: list[LatencyRun]) -> list[str]:
    """``--redis-cluster``: produce -> visible on one Redis and on the cluster, with the floor."""

    def cells(values: list[float]) -> str:
        if not values:
            return "no samples"
        q = quantiles(values)
        return " / ".join(f"{q[i]:,.0f}" for i in (0, 1, 3, 4))  # p50, p90, p99, max

    lines = [
        "",
        "### produce -> visible in Redis: one Redis against the Redis Cluster",
        "",
        "| store | events (rate) | what | p50 / p90 / p99 / max, ms |",
        "|---|---|---|---|",
    ]
    for r in runs:
        store = (
            f"cluster: {len(r.target.nodes)} primaries, {r.shards} shards"
            if r.target.cluster
            else "one Redis"
        )
        lines.append(
            f"| {store} | {r.events:,} ({r.rate:,.0f}/s) | driftline worker, visible in Redis "
            f"(worker CPU {r.cpu:.0%} of a core) | {cells(r.visible)} |"
        )
        for wait_ms in sorted(r.raw):
            what = f"raw consumer, fetch_max_wait {wait_ms} ms"
            lines.append(f"| {store} | | {what} | {cells(r.raw[wait_ms])} |")
    lines += [
        "",
        "each store: its own worker and a fresh topic, one after the other (one Redis first); "
        "the raw consumers read that topic in the same run (the broker's floor at 50 ms, "
        f"Faust's fixed wait at {FAUST_FETCH_MAX_WAIT_MS} ms). Visible: the first poll of the "
        f"offsets hash (every {LATENCY_POLL_S * 1000:.0f} ms; through a cluster client on the "
        "cluster) that saw the event's offset applied, minus its produce time.",
    ]
    return lines


async def memory_phase(env: Env, res: Results, m: int) -> None:
    """RSS of an idle worker, then after ``m`` distinct entities; Redis bytes per entity."""
    topic = f"bench-features-mem-{uuid.uuid4().hex[:8]}"
    await create_source_topic(env.bootstrap, topic)
    log(f"memory: generating {m:,} events of {m:,} distinct entities ...")
    events = distinct_events(m)
    worker = env.new_worker(topic)
    assert worker.sampler is not None
    await worker.wait_ready()
    await asyncio.sleep(2.0)  # idle: nothing in the topic yet
    start = proc_sample(worker.pid)
    assert start is not None
    mem0 = await used_memory(env.client)
    log("memory: producing them (the worker is running) ...")
    produced = await produce_bulk(env.bootstrap, topic, events)
    del events
    gc.collect()
    snapshots: list[Counters] = []

    async def snapshot() -> None:
        snapshots.append(await counters(env, worker))

    applied = await wait_applied(
        env.client, worker, produced.last_offsets, limit_s=max(300.0, m / 1000), on_first=snapshot
    )
    last = await counters(env, worker)
    cpu, details = breakdown(
        snapshots[0], last, worker.sampler.cpu_share(applied.t_first, applied.t_end)
    )
    await asyncio.sleep(1.0)
    end = proc_sample(worker.pid)
    assert end is not None
    worker.stop()
    keys = await entity_keys(env.client, worker.prefix)
    mem1 = await used_memory(env.client)
    sizes = await sample_key_sizes(env.client, keys)
    rate = applied.rate(m)
    res.add(
        f"worker, {m:,} distinct entities (1 event each)",
        f"{rate:,.0f} events/s",
        f"produced in {produced.seconds:.1f}s while the worker ran, then drained; "
        "every event creates a key",
    )
    res.add(f"worker CPU, {m:,} distinct entities", cpu, details)
    res.add(
        f"worker RSS, {m:,} distinct entities",
        f"{start.rss_kib / 1024:.0f} -> {end.rss_kib / 1024:.0f} MiB",
        "idle after ready -> 1 s after all applied; at 25/50/75/100 % applied: "
        + rss_by_progress(worker.sampler, applied, m)
        + f" MiB; peak {worker.sampler.peak_mib(until=applied.t_end):.0f} MiB",
    )
    res.add(
        f"Redis bytes/entity, 1 event each ({len(keys):,} keys)",
        f"{(mem1 - mem0) / max(len(keys), 1):,.0f} B",
        f"used_memory +{(mem1 - mem0) / 2**20:.1f} MiB; MEMORY USAGE of 5 keys: "
        + ", ".join(map(str, sizes)),
    )


# ----------------------------------------------------------------------------- profile

#: (stage, substrings of a frame): a sample belongs to the stage of its innermost
#: matching frame (the first matching stage when a frame matches several), so
#: orjson called from the contract layer counts as JSON decode.  Frames compiled
#: from strings (namedtuple ``__new__``, dataclass ``__init__``) count for their
#: caller, except fastjsonschema's generated validators.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("idle: loop in select (awaiting Redis reply / next batch)", ("selectors.py",)),
    ("JSON decode (orjson)", ("decode_json",)),
    ("schema validation (fastjsonschema)", ("validate_", "json_contract.py")),
    ("parse: entity key, event time", ("schemas/parser.py",)),
    ("classify loop", ("classify (records.py",)),
    ("event-time judging (late/future)", ("event_time.py", "watermark.py")),
    (
        "window engine (build_deltas, batch form)",
        ("features/engine.py", "features/stats.py", "features/batch.py"),
    ),
    ("Redis apply: encode rings", ("features/codec.py",)),
    ("Redis apply: script arguments", ("feature_store.py",)),
    ("redis-py: send, read reply", ("redis/",)),
    ("pipeline bookkeeping", ("pipeline.py", "dead_letters.py", "observe.py", "samples.py")),
    ("data-quality checks", ("drift/quality.py", "drift/recent_ids.py")),
    ("drift monitor (values topic, River)", ("drift/", "river/", "worker/monitors.py")),
    ("prometheus_client", ("prometheus_client",)),
    ("aiokafka: fetch, record objects", ("aiokafka/",)),
    ("driftline transport (batching)", ("transport.py",)),
    ("Faust/mode plumbing", ("faust/", "mode/")),
    ("asyncio internals", ("asyncio/",)),
]


def _stage(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        if "(<string>" in frame and "validate_" not in frame:
            continue
        for name, subs in STAGES:
            if any(sub in frame for sub in subs):
                return name
    return "other"


def summarize_profile(path: Path, top: int = 12) -> list[str]:
    """Wall-time shares per thread, by stage and by function (self), from py-spy raw output.

    py-spy samples every thread at the same rate, idle included, so a thread's
    samples are its wall time.  The worker has two busy threads: the main one
    (event loop, agents, the pipeline) and Faust's consumer thread (aiokafka).
    """
    stages: dict[str, Counter[str]] = {}
    leaves: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread"):
            thread = frames[0].split(": ", 1)[-1]
            frames = frames[1:]
        count = int(count_text)
        stages.setdefault(thread, Counter())[_stage(frames)] += count
        leaves.setdefault(thread, Counter())[frames[-1] if frames else "?"] += count
    if not stages:
        return [f"no samples in {path}"]
    lines = [f"py-spy record -f raw --idle --threads -r 100: raw samples in {path}"]
    for thread, counter in sorted(stages.items(), key=lambda kv: -kv[1].total()):
        total = counter.total()
        if total < 20:
            continue
        name = "consumer thread (Faust's aiokafka)" if thread.startswith("Thread-") else thread
        lines += ["", f"{name}: {total:,} samples ({total / 100:.1f} s), by stage:"]
        lines += [f"  {c / total:6.1%}  {stage}" for stage, c in counter.most_common()]
        lines += [f"  top {top} functions by self time:"]
        lines += [f"  {c / total:6.1%}  {leaf}" for leaf, c in leaves[thread].most_common(top)]
    return lines


# ----------------------------------------------------------------------------- main


def print_table(res: Results, runtime: float) -> None:
    print("\n## driftline features pipeline benchmark\n")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in res.params.items()))
    print(f"command: `{shlex.join(['python', 'bench/features.py', *sys.argv[1:]])}`")
    print(f"runtime: {runtime:.0f}s\n")
    print("| figure | value | notes |")
    print("|---|---|---|")
    for figure, value, note in res.rows:
        print(f"| {figure} | {value} | {note} |")
    for line in res.tables:
        print(line)
    if res.profile:
        print("\n```")
        print("\n".join(res.profile))
        print("```")


async def run(args: argparse.Namespace, res: Results, workdir: Path) -> None:
    from driftline.streams.local.cluster import EmbeddedRedisCluster
    from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis

    broker = redis_server = cluster = None
    env: Env | None = None
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM like Ctrl-C: cancel, so the finally below stops what was started
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        bootstrap = args.bootstrap
        if bootstrap is None:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
        redis_url = args.redis_url
        if redis_url is None:
            redis_server = EmbeddedRedis().start()
            redis_url = redis_server.url
        dists = list(DISTRIBUTIONS) if args.entity_dist == "both" else [args.entity_dist]
        env = Env(
            bootstrap,
            workdir,
            single_target(redis_url, redis_server.pid if redis_server else None),
            broker_pid=broker.pid if broker else None,
            quality=args.quality,
            processes=args.processes,
            check_users=args.check_users,
            tagged=args.redis_cluster or len(dists) > 1,
        )
        res.params["kafka"] = "embedded Tansu" if broker else bootstrap
        res.params["redis"] = (
            f"embedded {Path(redis_server.binary).name}" if redis_server else redis_url
        )
        phases = set(args.phases.split(","))
        if args.redis_cluster and phases & {"throughput", "latency"}:
            log(f"starting a Redis Cluster of {args.primaries} primaries ...")
            cluster = EmbeddedRedisCluster(primaries=args.primaries).start()
            env.cluster = await cluster_target(cluster, args.shards)
            res.params["redis cluster"] = (
                f"embedded, {args.primaries} primaries, no replicas, "
                f"ready in {cluster.ready_after_s:.1f}s"
            )
        if "throughput" in phases:
            done: list[tuple[list[Run], float, float]] = []
            for dist in dists:
                done.append(
                    await throughput_phase(
                        env,
                        res,
                        args.events,
                        args.entities,
                        dist,
                        args.profile if not done else None,
                    )
                )
                if env.cluster is not None:
                    res.tables = cluster_tables(done)
        if "latency" in phases:
            await latency_phase(env, res, args.latency_seconds, args.latency_rate)
        if "memory" in phases:
            await memory_phase(env, res, args.memory_entities)
    finally:
        if env is not None:
            for worker in env.workers:
                worker.stop()
            for target in env.targets:
                await target.aclose()
        if cluster is not None:
            cluster.stop()
        if redis_server is not None:
            redis_server.stop()
        if broker is not None:
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=None, help="throughput events (1,000,000)")
    ap.add_argument(
        "--entities", type=int, default=10_000, help="entities of the throughput phase (10,000)"
    )
    ap.add_argument(
        "--entity-dist",
        choices=[*DISTRIBUTIONS, "both"],
        default="zipf",
        help="how the throughput phase's events pick their entity (zipf); both: a topic of each",
    )
    ap.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the throughput phase runs a worker on one Redis, then one on an embedded Redis "
        "Cluster, on the same topic; so does the latency phase, a fresh topic each",
    )
    ap.add_argument("--primaries", type=int, default=3, help="primaries of the --redis-cluster (3)")
    ap.add_argument(
        "--shards",
        type=int,
        default=None,
        help="redis.shards of the cluster's worker "
        f"(the worker's default: {DEFAULT_CLUSTER_SHARDS})",
    )
    ap.add_argument(
        "--check-users",
        type=int,
        default=200,
        help="users whose features are checked against brute force after each throughput "
        "worker (200; 0: none)",
    )
    ap.add_argument("--latency-seconds", type=float, default=None, help="steady-rate run (30)")
    ap.add_argument("--latency-rate", type=float, default=5_000, help="events/s (5,000)")
    ap.add_argument(
        "--memory-entities", type=int, default=None, help="distinct entities (1,000,000)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="100k events, 10 s of latency, 100k distinct entities",
    )
    ap.add_argument("--phases", default="throughput,latency,memory")
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of the embedded one")
    ap.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run py-spy on the throughput worker, write its raw samples to this file",
    )
    ap.add_argument(
        "--quality", action="store_true", help="run the worker with data-quality checks"
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="driftline worker --processes N (throughput from Redis covers all; CPU, RSS "
        "and metrics figures are of the supervisor / worker 0)",
    )
    args = ap.parse_args()
    quick = args.quick
    if args.events is None:
        args.events = 100_000 if quick else 1_000_000
    if args.latency_seconds is None:
        args.latency_seconds = 10.0 if quick else 30.0
    if args.memory_entities is None:
        args.memory_entities = 100_000 if quick else 1_000_000
    unknown = set(args.phases.split(",")) - {"throughput", "latency", "memory"}
    if unknown:
        ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.profile is not None and "throughput" not in args.phases.split(","):
        ap.error("--profile profiles the throughput phase; add it to --phases")
    if (args.shards is not None or args.primaries != 3) and not args.redis_cluster:
        ap.error("--primaries and --shards are of --redis-cluster")
    if args.primaries < 1 or (args.shards is not None and not 1 <= args.shards <= MAX_SHARDS):
        ap.error(f"--primaries must be at least 1, --shards between 1 and {MAX_SHARDS}")
    res = Results()
    res.params = {
        "events": f"{args.events:,}",
        "entities": f"{args.entities:,} ("
        + (
            " / ".join(DISTRIBUTIONS.values())
            if args.entity_dist == "both"
            else DISTRIBUTIONS[args.entity_dist]
        )
        + ")",
        "group": f"amount {'/'.join(AGGREGATIONS)} x {'/'.join(WINDOWS)}",
        "partitions": PARTITIONS,
        "latency": f"{args.latency_rate:,.0f}/s for {args.latency_seconds:.0f}s",
        "memory entities": f"{args.memory_entities:,}",
        "shards (cluster)": (args.shards or f"{DEFAULT_CLUSTER_SHARDS} (the worker's default)")
        if args.redis_cluster
        else "n/a",
        "features checked": f"{args.check_users} users per throughput worker",
        "quality checks": "QUALITY" if args.quality else "default (completeness only)",
        "worker processes": args.processes,
        "cores": os.cpu_count(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="driftline-features-bench-"))
    started = time.monotonic()
    try:
        asyncio.run(run(args, res, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print_table(res, time.monotonic() - started)
        log("interrupted; everything it started was stopped")
        sys.exit(130)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(res, time.monotonic() - started)


if __name__ == "__main__":
    main()
