"""Read latency of ``driftline serve``: single entities and batches, at a fixed request rate.

    python bench/serving.py [--entities 1000000] [--duration 20] [--rate 500]
                            [--batch-rate 100[,20...]] [--batch-size 100] [--redis-url URL]
                            [--profile FILE] [--seed 7]

What runs: Redis (the embedded valkey/redis-server, or ``--redis-url``) and
``python -m driftline.streams.serve.cli serve -c CONFIG`` as a subprocess, as a user
runs it, on loopback.  The load generator is this process (asyncio, one
aiohttp ``ClientSession`` with keep-alive).  Everything shares the machine's
cores, so the figures include the client's own cost.

**Data.**  It is a read benchmark, so Redis is seeded directly, not through
Kafka: ``--entities`` hashes ``{prefix}:fg:user_spend:v1:user-NNNNNNN`` in the
worker's exact format (bucket rings encoded by :func:`features.codec.encode_ring`,
``l:{field}`` last values, ``_n``/``_u``, the group's TTL), written with
pipelined HSET + PEXPIRE.  The group is the README's ``user_spend``: amount
``[count, sum, mean, min, max, std]``, distinct ``[category, country]``, last
``[amount, category]``, windows ``[1m, 5m, 1h, 24h]`` (34 features, 4 rings).
States come from 2,000 templates, each the real engine's result
(``build_deltas`` + ``apply_delta``) for one simulated user over the last 24 h:

* 60 % occasional: 1-4 transactions spread over 24 h;
* 30 % regular: 5-19 over 24 h, a few in the last hour;
* 10 % active: 20-59, half of them in the last 10 minutes (busy 1m/5m rings).

**Load.**  Open loop: request *i* is due at ``start + i / rate`` whatever
happened to earlier ones, and its latency runs from that due time to the
last byte of the response (so a stalled server or client cannot hide queued
requests: no coordinated omission).  The time from actually sending is shown
too.  Single reads: ``GET /v1/features/user_spend/{entity}`` (all 34
features) at ``--rate`` for ``--duration`` s; batches: ``POST
/v1/features/user_spend:batch`` with ``--batch-size`` random entities at
``--batch-rate`` (a comma-separated list runs one phase per rate).  Entities
are uniform over all seeded ones, plus 1 % unknown.  Each phase has a 2 s
warm-up that is not measured.  The serve process's CPU time (user + system,
from ``/proc``) over each phase, divided by the requests sent, is reported as
well: on a shared machine it moves less than the latencies do.

**Where a batch's time goes.**  The same reads are also timed in this process,
stage by stage, for 50 batches (no HTTP): the pipelined HGETALLs (Redis plus
redis-py's reply parsing), ``read_stored`` (the features straight from the
ring blobs, :mod:`features.reader`), :func:`features.serving.freshness`, and the
JSON encoding; and, for comparison, the object path the worker's tests use
(``decode_state`` + ``read_features``).

**Memory.**  Redis ``used_memory`` growth over the number of entity keys, and
``MEMORY USAGE`` of sample keys.

``--profile FILE`` records the serve process with py-spy during both phases
(``py-spy record -f raw``: collapsed stacks in FILE) and prints the functions
with the most samples on top of the stack and in the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
import orjson
import redis.asyncio as aioredis

from driftline.features import FeatureGroup, apply_delta, build_deltas
from driftline.features.codec import encode_ring
from driftline.schemas.parser import ParsedEvent
from driftline.sinks.feature_store import entity_key
from driftline.streams.local.ports import find_free_port

GROUP = {
    "name": "user_spend",
    "version": 1,
    "source": "transactions",
    "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
    "distinct": ["category", "country"],
    "last": ["amount", "category"],
    "windows": ["1m", "5m", "1h", "24h"],
}
CATEGORIES = ("grocery", "restaurant", "travel", "electronics", "fuel", "entertainment", "health")
COUNTRIES = ("DE", "FR", "NL", "ES", "IT", "PL", "SE", "US", "GB", "PT")
PREFIX = "bench-serve"
TEMPLATES = 2000
DAY_MS = 86_400_000
TARGET_SINGLE_P99_MS = 5.0
TARGET_BATCH_P99_MS = 20.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def the_group() -> FeatureGroup:
    return FeatureGroup.from_config({"entity_key": "user_id", **GROUP})


# ------------------------------------------------------------------ data


def template_events(rng: random.Random, now_ms: int) -> list[ParsedEvent]:
    """The last 24 h of one simulated user (see the module docstring for the mix)."""
    kind = rng.random()
    if kind < 0.6:
        times = [now_ms - rng.randrange(DAY_MS) for _ in range(rng.randint(1, 4))]
    elif kind < 0.9:
        n = rng.randint(5, 19)
        times = [now_ms - rng.randrange(DAY_MS) for _ in range(n - 3)]
        times += [now_ms - rng.randrange(3_600_000) for _ in range(3)]
    else:
        n = rng.randint(20, 59)
        times = [now_ms - rng.randrange(DAY_MS) for _ in range(n // 2)]
        times += [now_ms - rng.randrange(600_000) for _ in range(n - n // 2)]
    home = rng.choice(COUNTRIES)
    events = []
    for t in sorted(times):
        data = {
            "user_id": "u",
            "amount": round(rng.lognormvariate(3.5, 1.0), 2),
            "category": rng.choice(CATEGORIES),
            "country": home if rng.random() < 0.9 else rng.choice(COUNTRIES),
        }
        events.append(ParsedEvent("u", t, data))
    return events


def template_hash(group: FeatureGroup, events: list[ParsedEvent], now_ms: int) -> dict[str, bytes]:
    """The Redis hash the worker would hold for these events (same fields and encodings)."""
    state = apply_delta(group, None, build_deltas(group, events)["u"])
    assert state.newest_event_ms is not None
    fields: dict[str, bytes] = {
        "_n": str(state.newest_event_ms).encode(),
        "_u": str(now_ms).encode(),
    }
    for r, ring in state.rings.items():
        if ring:
            fields[f"r{r}"] = encode_ring(group, ring)
    for f, (t, value) in state.last.items():
        fields[f"l:{f}"] = str(t).encode() + b"|" + orjson.dumps(value)
    return fields


async def redis_info(client: aioredis.Redis, section: str) -> dict[str, Any]:
    info: dict[str, Any] = await client.info(section)
    return info


async def seed(client: aioredis.Redis, n: int, seed_value: int) -> dict[str, Any]:
    """Write ``n`` entity hashes; returns the memory figures."""
    group = the_group()
    rng = random.Random(seed_value)
    now_ms = int(time.time() * 1000)
    templates = [
        template_hash(group, template_events(rng, now_ms), now_ms) for _ in range(TEMPLATES)
    ]
    blob_bytes = statistics.mean(sum(len(v) for v in t.values()) for t in templates)
    mem0 = int((await redis_info(client, "memory"))["used_memory"])
    started = time.perf_counter()
    chunk = 2000
    for lo in range(0, n, chunk):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(lo, min(lo + chunk, n)):
                key = entity_key(PREFIX, group, f"user-{i:07d}")
                pipe.hset(key, mapping=templates[i % TEMPLATES])
                pipe.pexpire(key, group.ttl_ms)
            await pipe.execute()
        if lo and lo % 200_000 == 0:
            log(f"  seeded {lo:,} entities")
    seconds = time.perf_counter() - started
    mem1 = int((await redis_info(client, "memory"))["used_memory"])
    samples = [
        await client.memory_usage(entity_key(PREFIX, group, f"user-{i:07d}")) or 0
        for i in rng.sample(range(n), min(n, 200))
    ]
    return {
        "seconds": seconds,
        "bytes_per_entity": (mem1 - mem0) / n,
        "memory_usage_mean": statistics.mean(samples),
        "hash_payload_mean": blob_bytes,
        "used_memory_mib": mem1 / 2**20,
    }


# ------------------------------------------------------------------ load


@dataclass
class Phase:
    name: str
    rate: float
    target_ms: float
    due: list[float]  # latency from the due time (s)
    sent: list[float]  # latency from the actual send (s)
    errors: Counter[str]
    requests: int = 0
    #: CPU seconds the serve process spent on the phase (warm-up included) per request sent
    cpu_per_request_s: float = float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(
    phase: Phase,
    request: Callable[[], Awaitable[int]],
    duration: float,
    warmup: float = 2.0,
) -> None:
    """Issue requests open-loop at ``phase.rate``; record those due after the warm-up."""
    loop = asyncio.get_running_loop()
    total = int(phase.rate * (warmup + duration))
    measured_from = int(phase.rate * warmup)
    start = loop.time() + 0.05
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        sent = loop.time()
        try:
            outcome = str(await request())
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = type(exc).__name__
        end = loop.time()
        if i < measured_from:
            return
        phase.requests += 1
        if outcome != "200":
            phase.errors[outcome] += 1
            return
        phase.due.append(end - due)
        phase.sent.append(end - sent)

    for i in range(total):
        due = start + i / phase.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(
    base: str, pid: int, n_entities: int, args: argparse.Namespace, rng: random.Random
) -> list[Phase]:
    def entity() -> str:
        if rng.random() < 0.01:
            return f"nobody-{rng.randrange(10**9)}"
        return f"user-{rng.randrange(n_entities):07d}"

    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def single() -> int:
            async with session.get(f"{base}/v1/features/user_spend/{entity()}") as response:
                await response.read()
                return response.status

        async def batch() -> int:
            body = orjson.dumps({"entities": [entity() for _ in range(args.batch_size)]})
            async with session.post(
                f"{base}/v1/features/user_spend:batch",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                await response.read()
                return response.status

        phases = []
        plan: list[tuple[str, float, float, Callable[[], Awaitable[int]]]] = [
            ("single read", args.rate, TARGET_SINGLE_P99_MS, single)
        ]
        for rate in args.batch_rate:
            plan.append((f"batch of {args.batch_size}", rate, TARGET_BATCH_P99_MS, batch))
        for name, rate, target, fn in plan:
            phase = Phase(name, rate, target, [], [], Counter())
            log(f"{name}: {rate:g} req/s for {args.duration:g} s (+2 s warm-up)")
            cpu = cpu_seconds(pid)
            await run_phase(phase, fn, args.duration)
            phase.cpu_per_request_s = (cpu_seconds(pid) - cpu) / int(rate * (args.duration + 2))
            phases.append(phase)
            await asyncio.sleep(2)  # let the server settle (GC, closed connections)
    return phases


async def breakdown(
    client: aioredis.Redis, n_entities: int, batch_size: int, rng: random.Random, batches: int = 50
) -> dict[str, float]:
    """Mean ms per batch of each stage of a batch read, in this process (no HTTP)."""
    from driftline.features.engine import read_features
    from driftline.features.serving import freshness
    from driftline.sinks.feature_store import decode_state, read_stored

    group = the_group()
    names = group.feature_names()
    totals = dict.fromkeys(("HGETALL x N (Redis + reply parsing)", "read_stored",
                            "freshness", "JSON encoding",
                            "(object path: decode_state + read_features)"), 0.0)  # fmt: skip
    keys = list(totals)
    for _ in range(batches):
        entities = [f"user-{rng.randrange(n_entities):07d}" for _ in range(batch_size)]
        t0 = time.perf_counter()
        async with client.pipeline(transaction=False) as pipe:
            for e in entities:
                pipe.hgetall(entity_key(PREFIX, group, e))
            raw = await pipe.execute()
        t1 = time.perf_counter()
        now = int(time.time() * 1000)
        readings = [read_stored(group, fields, now) for fields in raw]
        t2 = time.perf_counter()
        fresh = [freshness(group, reading, now, names) for reading in readings]
        t3 = time.perf_counter()
        orjson.dumps(
            [
                {"entity": e, "newest_event_ms": r.vector.newest_event_ms,
                 "features": r.vector.values, "freshness": f}
                for e, r, f in zip(entities, readings, fresh, strict=True)
            ]
        )  # fmt: skip
        t4 = time.perf_counter()
        for fields in raw:
            read_features(group, decode_state(group, fields) if fields else None, now)
        t5 = time.perf_counter()
        for key, seconds in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            totals[key] += seconds
    return {k: v / batches * 1000 for k, v in totals.items()}


# ------------------------------------------------------------------ processes


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from driftline.streams.local.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url


@contextlib.contextmanager
def serve_process(workdir: Path, redis_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = find_free_port()
    config = {
        "redis": {"key_prefix": PREFIX},
        "serve": {"host": "127.0.0.1", "port": port},
        "worker": {"log_level": "warning"},
        "sources": [
            {
                "name": "transactions",
                "topic": "transactions",
                "schema": str(ROOT / "schemas" / "contracts" / "transactions.schema.json"),
                "entity_key": "user_id",
                "event_time": "event_time",
            }
        ],
        "feature_groups": [GROUP],
    }
    path = workdir / "serve.yaml"
    path.write_bytes(orjson.dumps(config))
    log_path = workdir / "serve.log"
    env = {**os.environ, "DRIFTLINE_REDIS__URL": redis_url, "PYTHONPATH": str(ROOT)}
    env.pop("DRIFTLINE_SERVE__TOKEN", None)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.streams.serve.cli", "serve", "-c", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start:\n{log_path.read_text()}")
            try:
                import urllib.request

                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        warnings = [line for line in log_path.read_text().splitlines() if "WARNING" in line]
        if warnings:
            log("serve logged:\n  " + "\n  ".join(warnings[-5:]))


@contextlib.contextmanager
def profiler(pid: int, out: str | None) -> Iterator[None]:
    if not out:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "-f", "raw", "-o", out, "--rate", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def summarize_profile(path: str, top: int = 15) -> list[str]:
    """Functions by samples on top of the stack (self) and anywhere in it (total).

    Frames are grouped by function (line numbers dropped); in the total list,
    functions present in nearly every sample (the event loop, click, runpy)
    are left out: they say nothing about where the time goes.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return ["no samples"]
    lines = [f"{samples} samples", "self %  function"]
    lines += [f"  {100 * c / samples:5.1f}  {f}" for f, c in own.most_common(top)]
    lines.append("total %  function")
    inner = [(f, c) for f, c in total.most_common() if c < 0.85 * samples]
    lines += [f"  {100 * c / samples:5.1f}  {f}" for f, c in inner[:top]]
    return lines


# ------------------------------------------------------------------ main


def report(
    phases: list[Phase],
    memory: dict[str, Any],
    stages: dict[str, float],
    params: dict[str, Any],
) -> None:
    print("\n## driftline serve latency\n")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(
        f"Redis: {memory['bytes_per_entity']:.0f} B per entity (used_memory growth; "
        f"MEMORY USAGE mean {memory['memory_usage_mean']:.0f} B, "
        f"field payload mean {memory['hash_payload_mean']:.0f} B); "
        f"{memory['used_memory_mib']:.0f} MiB in all; seeded in {memory['seconds']:.0f} s\n"
    )
    print(
        "| scenario | rate | requests | errors | p50 ms | p90 ms | p99 ms | max ms "
        "| p99 from send ms | serve CPU ms per request | target p99 | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in phases:
        p99 = pct(p.due, 0.99)
        errors = sum(p.errors.values())
        met = "yes" if p99 <= p.target_ms and not errors else "NO"
        print(
            f"| {p.name} | {p.rate:g}/s | {p.requests} | {errors} | {pct(p.due, 0.5):.2f} "
            f"| {pct(p.due, 0.9):.2f} | {p99:.2f} | {max(p.due, default=0) * 1000:.2f} "
            f"| {pct(p.sent, 0.99):.2f} | {p.cpu_per_request_s * 1000:.2f} "
            f"| {p.target_ms:g} | {met} |"
        )
        if p.errors:
            print(f"|  errors: {dict(p.errors)} |")
    from redis.utils import HIREDIS_AVAILABLE

    size = params["batch_size"]
    print(f"\nOne batch of {size} in-process, mean ms (hiredis: {HIREDIS_AVAILABLE}):\n")
    print("| stage | ms per batch | µs per entity |")
    print("|---|---|---|")
    for stage, ms in stages.items():
        print(f"| {stage} | {ms:.2f} | {ms * 1000 / size:.0f} |")
    total = sum(ms for stage, ms in stages.items() if not stage.startswith("("))
    print(f"| total (serving path) | {total:.2f} | {total * 1000 / size:.0f} |")


async def main_async(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    params = {
        "entities": args.entities,
        "duration_s": args.duration,
        "rate": args.rate,
        "batch_rate": ",".join(f"{r:g}" for r in args.batch_rate),
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
    }
    with redis_server(args.redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        client = aioredis.Redis.from_url(url)
        try:
            stale = [k async for k in client.scan_iter(match=f"{PREFIX}:*", count=10_000)]
            for lo in range(0, len(stale), 10_000):
                await client.unlink(*stale[lo : lo + 10_000])
            log(f"seeding {args.entities:,} entities into {url}")
            memory = await seed(client, args.entities, args.seed)
            stages = await breakdown(client, args.entities, args.batch_size, rng)
        finally:
            await client.aclose()
        with serve_process(Path(tmp), url) as (base, proc), profiler(proc.pid, args.profile):
            phases = await load(base, proc.pid, args.entities, args, rng)
    report(phases, memory, stages, params)
    if args.profile:
        print("\n```")
        print("\n".join(summarize_profile(args.profile)))
        print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="single reads per second")
    parser.add_argument(
        "--batch-rate",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[100.0],
        help="batches per second; a comma-separated list runs one phase per rate",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--redis-url", default=None, help="use this Redis (keys under bench-serve:)"
    )
    parser.add_argument("--profile", default=None, help="py-spy raw output file")
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
