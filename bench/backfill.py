"""``driftline backfill``: its rate, and what it costs the live path (issue #12).

    python bench/backfill.py [--events 1000000] [--entities 10000] [--quick]
                             [--max-rate 20000] [--small-writes 200]
                             [--entities-per-write 2000]
                             [--live-rate 5000] [--live-seconds 20] [--drain-events N]
                             [--phases alone,topic,live]
                             [--bootstrap HOST:PORT] [--redis-url URL] [--json FILE]

What runs: the embedded broker and Redis (or ``--bootstrap`` / ``--redis-url``),
and ``driftline worker``, ``driftline archive`` and ``driftline backfill`` as
subprocesses with config files, as a user runs them (``bench/features.py``'s
``Worker``, topic, producer, raw consumer and ``/proc`` helpers, imported).
One source (``schemas/contracts/transactions.schema.json``) on a fresh
4-partition topic, one feature group ``spend`` in several versions:

- v1: ``amount: [count, sum, mean, min, max, std]`` over ``[1m, 5m, 1h]``
  (``bench/features.py``'s group);
- v2 .. v8, one definition: ``amount: [count, sum, mean, max]``,
  ``distinct: [category]``, ``last: [amount, category]`` over
  ``[1m, 10m, 1h]`` (the version being backfilled; distinct and last take the
  window engine's reference path, ``build_deltas``, in the worker and in the
  backfill alike).

The steps:

1. ``--events`` N demo transactions (Zipf over ``--entities`` users, as
   ``bench/features.py``), event times spread evenly over the last 50 minutes
   (so the 1h windows hold them all), are produced to the topic.  The raw
   consumer (aiokafka ``getmany`` + ``orjson.loads``) reads them; the worker
   with v1 applies them; the raw consumer reads them again; then
   ``driftline archive`` writes them to the offline log (done when
   ``OfflineLog.positions`` reaches the last offsets), and is stopped.
2. **The live worker's rate**: the v1 worker's events/s over the N events,
   from the offsets hash as ``bench/features.py`` times it (records applied
   after the first batch / time from the first batch applied to the last),
   and the same for a worker running the v2 definition alone (its own
   consumer group and key prefix): the figure like for like with the
   backfill, which computes that definition.
3. The worker restarts with v1, v2 and v9: each new version gets its live
   marks at the end of the N events (a worker marks every partition it is
   assigned), so step 4's backfills fill exactly the N events.  Step 5's
   versions are marked when step 5's workers start (a version a worker does not
   write after its mark has a gap, which the backfill refuses): they fill the N
   events and the live traffic of the conditions before them, and before each
   of their backfills ``driftline archive`` brings the offline log up to the
   worker's offsets, outside the measured windows.
4. **Backfill alone**: ``driftline backfill --group spend --version 2
   --from T --no-progress`` (``T``: the oldest event's time, so the set is the
   same whenever it runs), the worker idle.  Its own summary's events/s (the
   apply loop), and N / wall time of the process (start-up, the log scan and
   counts included); CPU-seconds per 1M events of the backfill process (its
   ``wait4`` resource use, all threads; its peak RSS from ``VmHWM``), Redis and the
   broker (``/proc/<pid>/stat``), Lua time inside Redis.  Ratios to the live
   worker's events/s and to raw (``--phases`` ``alone``).
   **Backfill from the topic** (``--phases`` ``topic``): v9 (the version after
   step 5's), the same definition, backfilled the same way (worker idle) with a
   config whose ``offline.path`` is an empty directory: no offline log, so the
   backfill reads the N events from the topic (aiokafka from the oldest record,
   the worker's verdicts, spooled to Arrow IPC files under ``TMPDIR``), then
   applies them. The same figures, its whole process's events/s as the headline
   (its summary's events/s counts the read and the apply loop, not start-up), the time
   to the "reading ... of topic" line (start-up) and to its first progress
   record (the read), the peak size of its ``TMPDIR`` (a directory of its own,
   sampled every 0.1 s: the spool), the raw consumer once more right after it
   (a noise check), and v9's stored state compared with v2's, entity by entity
   (the same events: the hashes should match but for ``_u``, the time of the
   last write).
5. **Beside live traffic**, in three conditions: the backfill at full speed,
   with ``--max-rate`` (20,000), and with ``--max-rate`` and
   ``--entities-per-write`` ``--small-writes`` (200: shorter scripts).  Each
   condition has its own version and its own worker running v1 and that
   version (as in production: the workers write it live while the backfill
   fills its past), restarted for it:

   - *latency* (v3, v4, v5): a producer sends ``--live-rate`` events/s one by
     one (each with its produce time) to the topic; a poller reads the offsets
     hash every 5 ms; an event's latency is the first poll that saw it applied
     minus its produce time (``bench/features.py``'s latency phase); a raw
     aiokafka consumer (``fetch_max_wait_ms`` 50, from the end of the topic)
     reads the same events in this process: its latency is the floor the
     broker and this process's own event loop set, to tell them from the
     worker's share.  The CPU of the worker, Redis, the broker and this
     process is shown for each run.  First
     ``--live-seconds`` without a backfill, then while ``driftline backfill``
     runs.  The with-backfill figures are of the events produced between the
     backfill's start and its exit.
   - *backlog drain* (v6, v7, v8): the worker is idle; a backlog of
     ``--drain-events`` is produced in bulk and the worker's rate is timed from
     the offsets hash, first without a backfill, then with the backfill
     started just before the backlog (once its registry record shows events
     applied).  The with-backfill rate is taken over the part of the drain the
     backfill was running (its share is shown).

   (``--phases`` ``live``.)  The slowdown is stated as "p50/p99 latency +x %"
   and "worker rate -y %" against the no-backfill run of the same worker.  The workers of v4 .. v8
   have not written the live traffic of the runs before them into those
   versions: they are throw-away, the bench reads no features back.

Everything runs on one machine: on 2 cores the backfill (a Python process
plus polars threads), the worker, Redis, the broker and this script's
producer compete for CPU, so the live path's slowdown here is mostly CPU
contention, not Redis; ``--max-rate`` bounds both.

Everything it starts is stopped on exit (try/finally), even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson
import redis.asyncio as aioredis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import bench.features as fb
from bench.features import (
    AGGREGATIONS,
    CATEGORIES,
    CLK_TCK,
    COUNTRIES,
    LATENCY_POLL_S,
    PARTITIONS,
    SOURCE,
    WINDOWS,
    Results,
    Sampler,
    Worker,
    applied_offsets,
    cpu_seconds,
    create_source_topic,
    evalsha_usec,
    log,
    offsets_key,
    produce_bulk,
    quantiles,
    raw_baseline,
    redis_cpu,
    tree_cpu,
    wait_applied,
    worker_config,
    zipf_users,
)
from driftline.features.registry import BackfillProgress, backfill_field
from driftline.sinks.offline_log import OfflineLog
from driftline.streams.processes import child_preexec

GROUP = "spend"
V1: dict[str, Any] = {
    "name": GROUP,
    "version": 1,
    "source": SOURCE,
    "values": {"amount": AGGREGATIONS},
    "windows": WINDOWS,
}
#: the event time the N events cover, ending near now
SPAN_S = 50 * 60
#: the version backfilled alone; those beside live traffic follow it, two per condition;
#: then the version backfilled from the topic
ALONE = 2
#: --phases
PHASES = ("alone", "topic", "live")


def version(n: int) -> dict[str, Any]:
    """The backfilled definition, as version ``n``."""
    return {
        "name": GROUP,
        "version": n,
        "source": SOURCE,
        "values": {"amount": ["count", "sum", "mean", "max"]},
        "distinct": ["category"],
        "last": ["amount", "category"],
        "windows": ["1m", "10m", "1h"],
    }


# ----------------------------------------------------------------------------- processes


class Archiver(Worker):
    """``driftline archive -c CONFIG`` (``bench/features.py``'s ``Worker``, another command)."""

    def start(self) -> Archiver:
        command = [sys.executable, "-m", "driftline.streams.cli", "archive", "-c", str(self.path)]
        self.proc = spawn(command, self.log_path)
        return self

    async def wait_ready(self, limit_s: float = 90) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            self.check_alive()
            if (await asyncio.to_thread(self.http, "/healthz"))[0] == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise RuntimeError(f"archiver not ready after {limit_s:.0f}s:\n{self.log()}")


@dataclass
class Ctx:
    bootstrap: str
    redis_url: str
    client: aioredis.Redis
    workdir: Path
    topic: str
    suffix: str  # app_id and key prefix of the main workers
    redis_pid: int | None
    broker_pid: int | None
    from_iso: str = ""  # --from of every backfill: the oldest event's time
    groups: list[dict[str, Any]] = field(default_factory=list)  # every version deployed
    entities: int = 10_000
    entities_per_write: int = 2_000
    procs: list[Worker] = field(default_factory=list)
    backfills: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: CPU-seconds of the backfills that have exited (wait4), for Busy
    backfills_done_cpu: float = 0.0

    def backfill_cpu(self) -> float:
        """CPU-seconds of every backfill so far: the exited ones and the running one."""
        # returncode: set by reap() (no poll() here: it would reap the process first)
        running = sum(tree_cpu(p.pid)[0] for p in self.backfills if p.returncode is None)
        return self.backfills_done_cpu + running

    @property
    def prefix(self) -> str:
        return f"bench-{self.suffix}"

    @property
    def log_root(self) -> Path:
        return self.workdir / "log"

    def config(self, groups: list[dict[str, Any]], suffix: str | None = None) -> dict[str, Any]:
        config = worker_config(
            self.bootstrap,
            self.redis_url,
            self.topic,
            suffix or self.suffix,
            self.workdir / f"faust-{suffix or self.suffix}",
        )
        config["feature_groups"] = groups
        config["offline"] = {"path": str(self.log_root), "flush_interval_s": 1.0}
        return config

    def worker(self, groups: list[dict[str, Any]], suffix: str | None = None) -> Worker:
        worker = Worker(self.workdir, self.config(groups, suffix))
        self.procs.append(worker)
        return worker.start()

    async def cpu(self) -> dict[str, float]:
        """CPU-seconds of Redis and the broker now."""
        redis = (
            cpu_seconds(self.redis_pid)
            if self.redis_pid is not None
            else await redis_cpu(self.client)
        )
        broker = cpu_seconds(self.broker_pid) if self.broker_pid is not None else math.nan
        return {"Redis": redis, "broker": broker}


# ----------------------------------------------------------------------------- machine


def machine_busy_s() -> float:
    """CPU-seconds the machine has been busy (all cores; user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields)
    return (user + nice + system + irq + softirq) / CLK_TCK


async def ours_s(ctx: Ctx, worker: Worker) -> float:
    """CPU-seconds of what this bench runs: the worker, Redis, the broker, itself, a backfill."""
    cpu = await ctx.cpu()
    backfill = ctx.backfill_cpu()
    return (
        tree_cpu(worker.pid)[0]
        + cpu["Redis"]
        + (0.0 if math.isnan(cpu["broker"]) else cpu["broker"])
        + cpu_seconds(os.getpid())
        + backfill
    )


@dataclass
class Busy:
    """The machine's busy cores and those of other tenants over an interval."""

    t: float
    machine: float
    ours: float

    @classmethod
    async def now(cls, ctx: Ctx, worker: Worker) -> Busy:
        return cls(time.monotonic(), machine_busy_s(), await ours_s(ctx, worker))

    def others(self, later: Busy) -> float:
        """Cores busy with other processes than ours, between ``self`` and ``later``."""
        wall = later.t - self.t
        return ((later.machine - self.machine) - (later.ours - self.ours)) / wall


# ----------------------------------------------------------------------------- backfill


@dataclass
class Backfill:
    version: int
    wall_start: float  # wall ms
    wall_end: float
    seconds: float  # process start to exit
    total: int  # events backfilled (its summary)
    rate: float  # its summary's events/s (the apply loop)
    cpu_s: float  # the backfill process
    rss_mib: float  # its peak RSS (VmHWM, read every 20 ms until it exits)
    rss: str  # RSS at its first progress, halfway, at the end
    redis_cpu_s: float
    broker_cpu_s: float
    worker_cpu_s: float
    lua_s: float
    scripts: int
    summary: str
    from_topic: int  # of total, read from the topic (its summary)
    #: process start to its first progress record: start-up, the log's scan and counts, or
    #: the whole read of the topic (records judged and spooled), before the first write
    first_progress_s: float
    #: process start to its "reading ... of topic" line (nan: it read no topic)
    read_start_s: float
    spool_mib: float  # peak size of its temporary directory (TMPDIR), sampled every 0.1 s
    spool_files: int  # files in it at that peak
    others: float  # cores busy with other tenants' processes while it ran

    @property
    def wall_rate(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else math.nan

    def per_million(self, cpu_s: float) -> float:
        return cpu_s * 1e6 / self.total if self.total else math.nan


SUMMARY = re.compile(
    r": (?P<total>\d+) events(?:, (?P<topic>\d+) of them read from the topic)? "
    r"\((?P<now>\d+) applied now, (?P<earlier>\d+) by an earlier run\), "
    r"(?P<rate>[\d,]+) events/s"
)


def rss_by_progress(sampler: Sampler, progress: list[tuple[float, int]]) -> str:
    """RSS (MiB) when the registry first showed events applied, at half of them, at the end."""
    done = [(t, n) for t, n in progress if n > 0]
    if not done or not sampler.samples:
        return "n/a"
    last = done[-1][1]
    half = next(t for t, n in done if n >= last / 2)
    return (
        f"{sampler.rss_mib_at(done[0][0]):,.0f} MiB at the first progress record "
        f"({done[0][1]:,} events), {sampler.rss_mib_at(half):,.0f} at half, "
        f"{sampler.samples[-1].rss_kib / 1024:,.0f} at the last sample"
    )


def spawn(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``command`` in its own session, output to ``log_path``, dying with us."""
    with log_path.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
            preexec_fn=child_preexec(os.getpid()),
        )


def reap(proc: subprocess.Popen[bytes]) -> float | None:
    """CPU-seconds of ``proc`` once it has exited (None: still running).

    ``wait4`` reaps it and returns its resource use (all its threads: polars'
    too); its exit code goes to ``proc.returncode``.  (Not its ``ru_maxrss``:
    a forked child's counts the parent's pages it had before ``exec``, so it
    is this process's RSS if that is larger.)
    """
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of ``pid`` (its peak RSS since ``exec``), MiB; 0.0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    hwm = next((line.split()[1] for line in status.splitlines() if line[:6] == "VmHWM:"), "0")
    return int(hwm) / 1024


def dir_size(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path`` now (files may come and go while it walks)."""
    size = files = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                sub = dir_size(Path(entry.path))
                size, files = size + sub[0], files + sub[1]
            else:
                size, files = size + entry.stat(follow_symlinks=False).st_size, files + 1
        except OSError:
            continue
    return size, files


async def run_backfill(
    ctx: Ctx,
    n_version: int,
    worker: Worker | None,
    max_rate: float | None = None,
    entities_per_write: int | None = None,
    started: asyncio.Event | None = None,
    no_log: bool = False,
) -> Backfill:
    """``driftline backfill`` of ``n_version`` as a subprocess, to its end.

    ``started`` is set once its registry record shows events applied.  ``no_log``:
    its config's ``offline.path`` is an empty directory, so it reads every event
    from the topic.  Its ``TMPDIR`` is a directory of its own, whose size (the
    spool of the topic's events) is sampled while it runs.
    """
    config = ctx.workdir / f"backfill-v{n_version}.yaml"
    settings = ctx.config([V1, version(n_version)])
    if no_log:
        empty = ctx.workdir / "no-log"
        empty.mkdir(exist_ok=True)
        settings["offline"] = {**settings["offline"], "path": str(empty)}
    config.write_text(yaml.safe_dump(settings))
    tmpdir = ctx.workdir / f"tmp-v{n_version}"
    tmpdir.mkdir(exist_ok=True)
    command = [
        *(sys.executable, "-m", "driftline.streams.cli", "backfill", "-c", str(config)),
        *("--group", GROUP, "--version", str(n_version), "--from", ctx.from_iso),
        *("--entities-per-write", str(entities_per_write or ctx.entities_per_write)),
        "--no-progress",
        *(("--max-rate", f"{max_rate:g}") if max_rate else ()),
    ]
    log_path = ctx.workdir / f"backfill-v{n_version}.log"
    cpu0 = await ctx.cpu()
    calls0, usec0 = await evalsha_usec(ctx.client)
    worker0 = tree_cpu(worker.pid)[0] if worker is not None else 0.0
    machine0, me0 = machine_busy_s(), cpu_seconds(os.getpid())
    registry = f"{ctx.prefix}:registry:{GROUP}"
    log(f"backfill v{n_version}: {shlex.join(command[2:])}")
    wall_start = time.time() * 1000
    t0 = time.monotonic()
    proc = spawn(command, log_path, env={"TMPDIR": str(tmpdir)})
    ctx.backfills.append(proc)
    sampler = Sampler(proc.pid, period=0.1)
    sampler.start()
    progress: list[tuple[float, int]] = []  # (monotonic, events of its registry record)
    used: float | None = None
    polls = 0
    hwm = 0.0
    spool = (0, 0)
    first_progress = read_start = math.nan
    while used is None:
        await asyncio.sleep(0.02)
        hwm = max(hwm, peak_rss_mib(proc.pid))
        used = reap(proc)
        polls += 1
        if polls % 5 == 0:
            spool = max(spool, dir_size(tmpdir))
            raw = await ctx.client.hget(registry, backfill_field(n_version))
            held = None if raw is None else BackfillProgress.parse(raw)
            if held is not None and not progress:
                first_progress = time.monotonic() - t0
            if no_log and math.isnan(read_start) and b"reading p" in log_path.read_bytes():
                read_start = time.monotonic() - t0
            if held is not None and (not progress or held.events > progress[-1][1]):
                progress.append((time.monotonic(), held.events))
            if started is not None and held is not None and held.events > 0:
                started.set()
    seconds = time.monotonic() - t0
    wall_end = time.time() * 1000
    ctx.backfills_done_cpu += used
    sampler.stop()
    rss = rss_by_progress(sampler, progress)
    cpu1 = await ctx.cpu()
    calls1, usec1 = await evalsha_usec(ctx.client)
    worker1 = tree_cpu(worker.pid)[0] if worker is not None else 0.0
    machine1, me1 = machine_busy_s(), cpu_seconds(os.getpid())
    ours = used + (worker1 - worker0) + (me1 - me0) + (cpu1["Redis"] - cpu0["Redis"])
    if not math.isnan(cpu1["broker"]):
        ours += cpu1["broker"] - cpu0["broker"]
    others = ((machine1 - machine0) - ours) / max(time.monotonic() - t0, 1e-9)
    if started is not None:
        started.set()
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"backfill v{n_version} exited with {proc.returncode}:\n{text[-4000:]}")
    match = SUMMARY.search(text)
    if match is None:
        raise RuntimeError(f"backfill v{n_version}: no summary in its output:\n{text[-4000:]}")
    summary = next(line for line in text.splitlines() if SUMMARY.search(line))
    return Backfill(
        n_version,
        wall_start,
        wall_end,
        seconds,
        int(match["total"]),
        float(match["rate"].replace(",", "")),
        used,
        hwm,
        rss,
        cpu1["Redis"] - cpu0["Redis"],
        cpu1["broker"] - cpu0["broker"],
        worker1 - worker0,
        (usec1 - usec0) / 1e6,
        calls1 - calls0,
        summary,
        int(match["topic"] or 0),
        first_progress,
        read_start,
        spool[0] / 2**20,
        spool[1],
        others,
    )


@dataclass
class Same:
    """Two backfilled versions of one definition, entity by entity."""

    entities: int  # in either version
    identical: int  # byte-identical hashes but for ``_u`` (the wall time of the last write)
    close: int  # every feature equal (numbers within 1e-9 relative) as of one time
    worst: str  # the largest difference seen
    fields: str  # the hash fields that differ, of the first entity whose hashes differ


async def same_state(ctx: Ctx, a: int, b: int) -> Same:
    """Compare the stored state of versions ``a`` and ``b`` (the same definition)."""
    from driftline.features.definitions import FeatureGroup
    from driftline.sinks.feature_store import read_stored

    group = FeatureGroup.from_config({"entity_key": "user_id", **version(a)})
    heads = {v: f"{ctx.prefix}:fg:{GROUP}:v{v}:" for v in (a, b)}
    entities: set[str] = set()
    for head in heads.values():
        async for key in ctx.client.scan_iter(match=head + "*", count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            entities.add(name[len(head) :])
    names = sorted(entities)
    hashes: dict[int, list[Any]] = {}
    for v, head in heads.items():
        async with ctx.client.pipeline(transaction=False) as pipe:
            for e in names:
                pipe.hgetall(head + e)
            hashes[v] = await pipe.execute()
    as_of = int(time.time() * 1000)
    identical = close = 0
    worst, worst_rel = "none", 0.0
    fields = "none"
    for e, ha, hb in zip(names, hashes[a], hashes[b], strict=True):
        for h in (ha, hb):
            h.pop(b"_u", None)
        if ha == hb:
            identical += 1
            close += 1
            continue
        if fields == "none":
            differ = sorted(
                (k.decode() if isinstance(k, bytes) else k)
                for k in ha.keys() | hb.keys()
                if ha.get(k) != hb.get(k)
            )
            fields = f"{e}: {', '.join(differ)}"
        va = read_stored(group, ha, as_of).vector.values
        vb = read_stored(group, hb, as_of).vector.values
        ok = va.keys() == vb.keys()
        for name in va.keys() & vb.keys():
            x, y = va[name], vb[name]
            if x == y:
                continue
            if isinstance(x, int | float) and isinstance(y, int | float):
                rel = abs(x - y) / max(abs(x), abs(y), 1e-12)
                if rel > worst_rel:
                    worst, worst_rel = f"{e} {name}: {x!r} vs {y!r} (rel {rel:.1e})", rel
                if rel <= 1e-9:
                    continue
            elif worst_rel < math.inf:
                worst, worst_rel = f"{e} {name}: {x!r} vs {y!r}", math.inf
            ok = False
        close += ok
    return Same(len(names), identical, close, worst, fields)


# ----------------------------------------------------------------------------- live traffic


class Live:
    """Events one by one at ``rate``/s, each with its produce time; a 5 ms offsets poller;
    a raw consumer (``fetch_max_wait_ms`` 50, ``orjson.loads``): the broker's and this
    process's floor, as ``bench/features.py``'s latency phase."""

    def __init__(self, ctx: Ctx, prefix: str, rate: float, seed: int) -> None:
        self.ctx = ctx
        self.key = offsets_key(prefix)
        self.rate = rate
        self.rng = random.Random(seed)
        self.users, self.cum = zipf_users(ctx.entities)
        # partition -> (applied offsets seen, wall ms first seen), ascending
        self.seen: dict[int, tuple[list[int], list[float]]] = {
            p: ([], []) for p in range(PARTITIONS)
        }
        self.sent: list[tuple[float, asyncio.Future[Any]]] = []
        self.metas: list[tuple[float, Any]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.producer: AIOKafkaProducer | None = None
        self.poll_client = aioredis.Redis.from_url(ctx.redis_url)
        self.consumer: AIOKafkaConsumer | None = None
        self.received: dict[tuple[int, int], float] = {}  # (partition, offset) -> wall ms

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            self.ctx.topic,
            bootstrap_servers=self.ctx.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,
        )
        await self.consumer.start()
        for _ in range(100):  # group_id None: assigned at start; a moment at most
            if self.consumer.assignment():
                break
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():  # resolve "latest" before anything is sent
            await self.consumer.position(tp)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.ctx.bootstrap, linger_ms=2, acks=1)
        await self.producer.start()
        self._tasks = [
            asyncio.create_task(self._poll()),
            asyncio.create_task(self._send()),
            asyncio.create_task(self._consume()),
        ]

    async def _consume(self) -> None:
        assert self.consumer is not None
        loads = orjson.loads
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            now = time.time() * 1000
            for messages in batch.values():
                for m in messages:
                    loads(m.value)
                    self.received[(m.partition, m.offset)] = now

    async def _poll(self) -> None:
        fields = [f"p{p}" for p in range(PARTITIONS)]
        current = dict.fromkeys(range(PARTITIONS), -1)
        while True:
            values = await self.poll_client.hmget(self.key, fields)
            now = time.time() * 1000
            for p, v in enumerate(values):
                if v is not None and int(v) > current[p]:
                    current[p] = int(v)
                    self.seen[p][0].append(current[p])
                    self.seen[p][1].append(now)
            if self._stop.is_set() and self._all_seen(current):
                return
            await asyncio.sleep(LATENCY_POLL_S)

    def _all_seen(self, current: dict[int, int]) -> bool:
        last: dict[int, int] = {}
        for _, m in self.metas:
            last[m.partition] = max(last.get(m.partition, -1), m.offset)
        return bool(self.metas) and all(current[p] >= o for p, o in last.items())

    async def _send(self) -> None:
        assert self.producer is not None
        rng = self.rng
        started = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate) + 1
            while i < due:
                user = rng.choices(self.users, cum_weights=self.cum)[0]
                now_ms = time.time() * 1000
                value = orjson.dumps(
                    {
                        "event_id": f"live-{uuid.uuid4().hex[:12]}",
                        "user_id": user,
                        "amount": round(rng.lognormvariate(3.3, 0.8), 2),
                        "currency": "EUR",
                        "category": rng.choice(CATEGORIES),
                        "country": rng.choice(COUNTRIES),
                        "event_time": int(now_ms) - int(rng.expovariate(1 / 300.0)) % 2000,
                        "sent_at_ms": now_ms,
                    }
                )
                fut = await self.producer.send(self.ctx.topic, value, key=user.encode())
                self.sent.append((now_ms, fut))
                i += 1
            await asyncio.sleep(0.002)

    async def stop(self, worker: Worker, limit_s: float = 180) -> None:
        """Stop sending; wait until all sent is applied."""
        assert self.producer is not None
        self._stop.set()
        await self._tasks[1]
        self.metas = [(t, await f) for t, f in self.sent]
        deadline = time.monotonic() + limit_s
        try:
            while not self._tasks[0].done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"live events not all applied after {limit_s:.0f}s")
                worker.check_alive()
                await asyncio.sleep(0.1)
            await self._tasks[0]
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.producer.stop()
            if self.consumer is not None:
                await self.consumer.stop()
            await self.poll_client.aclose()

    def raw_latencies(self, t0_ms: float, t1_ms: float) -> list[float]:
        """Produce -> the raw consumer, ms, of the events sent in ``[t0_ms, t1_ms]``."""
        got = self.received
        return [
            got[(m.partition, m.offset)] - t
            for t, m in self.metas
            if t0_ms <= t <= t1_ms and (m.partition, m.offset) in got
        ]

    def latencies(self, t0_ms: float, t1_ms: float) -> list[float]:
        """Produce -> visible in Redis, ms, of the events sent in ``[t0_ms, t1_ms]``."""
        out = []
        for t_sent, m in self.metas:
            if t0_ms <= t_sent <= t1_ms:
                offsets, times = self.seen[m.partition]
                j = bisect.bisect_left(offsets, m.offset)
                out.append(times[j] - t_sent)
        return out


@dataclass
class LatencyRun:
    what: str
    events: int
    seconds: float
    q: list[float]  # p50, p90, p95, p99, max (ms)
    raw_q: list[float]  # the same of the raw consumer
    worker_cpu: float  # share of a core
    redis_cpu: float
    broker_cpu: float
    bench_cpu: float  # this process: the producer, the poller, the raw consumer
    others: float  # cores busy with other tenants' processes
    backfill: Backfill | None = None


async def latency_run(
    ctx: Ctx,
    worker: Worker,
    rate: float,
    seconds: float,
    what: str,
    n_version: int | None = None,
    max_rate: float | None = None,
    entities_per_write: int | None = None,
    seed: int = 0,
) -> LatencyRun:
    """Live traffic at ``rate`` for ``seconds`` or while a backfill of ``n_version`` runs."""
    live = Live(ctx, ctx.prefix, rate, seed)
    await live.start()
    await asyncio.sleep(3.0)  # warm: the producer's connections, the worker's fetches
    w0, c0, t0 = tree_cpu(worker.pid)[0], await ctx.cpu(), time.monotonic()
    me0 = cpu_seconds(os.getpid())
    busy0 = await Busy.now(ctx, worker)
    bf = None
    try:
        if n_version is None:
            t0_ms = time.time() * 1000
            await asyncio.sleep(seconds)
            t1_ms = time.time() * 1000
        else:
            bf = await run_backfill(ctx, n_version, worker, max_rate, entities_per_write)
            t0_ms, t1_ms = bf.wall_start, bf.wall_end
        w1, c1, t1 = tree_cpu(worker.pid)[0], await ctx.cpu(), time.monotonic()
        me1 = cpu_seconds(os.getpid())
        busy1 = await Busy.now(ctx, worker)
        await asyncio.sleep(1.0)
    finally:
        await live.stop(worker)
    lat = live.latencies(t0_ms, t1_ms)
    raw = live.raw_latencies(t0_ms, t1_ms)
    if not lat or not raw:
        raise RuntimeError(f"{what}: no live event in the measured interval")
    wall = t1 - t0
    return LatencyRun(
        what,
        len(lat),
        (t1_ms - t0_ms) / 1000,
        quantiles(lat),
        quantiles(raw),
        (w1 - w0) / wall,
        (c1["Redis"] - c0["Redis"]) / wall,
        (c1["broker"] - c0["broker"]) / wall,
        (me1 - me0) / wall,
        busy0.others(busy1),
        bf,
    )


@dataclass
class DrainRun:
    what: str
    events: int
    rate: float  # worker events/s (while the backfill ran, if any)
    overlap: float  # share of the drain the backfill was running
    worker_cpu: float
    others: float  # cores busy with other tenants' processes
    backfill: Backfill | None = None


async def drain_run(
    ctx: Ctx,
    worker: Worker,
    m: int,
    seed: int,
    what: str,
    n_version: int | None = None,
    max_rate: float | None = None,
    entities_per_write: int | None = None,
) -> DrainRun:
    """A backlog of ``m`` events produced in bulk; the worker's rate draining it."""
    events, _ = fb.entity_events(m, ctx.entities, "zipf", seed=seed)
    before = await applied_offsets(ctx.client, ctx.prefix)
    at0 = sum(o + 1 for o in before.values())
    task: asyncio.Task[Backfill] | None = None
    if n_version is not None:
        started = asyncio.Event()
        task = asyncio.create_task(
            run_backfill(ctx, n_version, worker, max_rate, entities_per_write, started)
        )
        await started.wait()
    produced = await produce_bulk(ctx.bootstrap, ctx.topic, events)
    del events
    trace: list[tuple[float, int]] = []
    cpu: list[tuple[float, float]] = []
    busy: list[Busy] = []
    deadline = time.monotonic() + max(300.0, m / 1000)
    while True:
        offsets = await applied_offsets(ctx.client, ctx.prefix)
        now = time.monotonic()
        applied = sum(o + 1 for o in offsets.values())
        if applied > (trace[-1][1] if trace else at0):
            trace.append((now, applied))
            cpu.append((now, tree_cpu(worker.pid)[0]))
            busy.append(await Busy.now(ctx, worker))
        if all(offsets.get(p, -1) >= o for p, o in produced.last_offsets.items()):
            break
        if now > deadline:
            raise RuntimeError(f"{what}: backlog not applied after {max(300.0, m / 1000):.0f}s")
        worker.check_alive()
        await asyncio.sleep(0.02)
    bf = await task if task is not None else None
    t_first, n_first = trace[0]
    t_end = trace[-1][0]
    t_stop = t_end
    if bf is not None:
        # the backfill's exit, on this clock
        t_stop = min(t_end, time.monotonic() - (time.time() * 1000 - bf.wall_end) / 1000)
    kept = [(t, n) for t, n in trace if t <= t_stop]
    kept_cpu = [(t, c) for t, c in cpu if t <= t_stop]
    kept_busy = [b for b in busy if b.t <= t_stop]
    if len(kept) < 2:
        rate = worker_cpu = others = math.nan
    else:
        rate = (kept[-1][1] - n_first) / (kept[-1][0] - t_first)
        worker_cpu = (kept_cpu[-1][1] - kept_cpu[0][1]) / (kept_cpu[-1][0] - kept_cpu[0][0])
        others = kept_busy[0].others(kept_busy[-1])
    overlap = (
        1.0 if bf is None else max(0.0, min(1.0, (t_stop - t_first) / max(t_end - t_first, 1e-9)))
    )
    return DrainRun(what, m, rate, overlap, worker_cpu, others, bf)


# ----------------------------------------------------------------------------- the run


def fmt_q(q: list[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in (q[0], q[1], q[3], q[4]))


def change(new: float, old: float) -> str:
    return f"{(new / old - 1):+.0%}" if old > 0 and not math.isnan(new) else "n/a"


async def run(args: argparse.Namespace, res: Results, out: dict[str, Any], workdir: Path) -> None:
    from driftline.streams.local.embedded import EmbeddedBroker, EmbeddedRedis

    broker = redis_server = None
    ctx: Ctx | None = None
    task = asyncio.current_task()
    assert task is not None
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
        suffix = uuid.uuid4().hex[:8]
        ctx = Ctx(
            bootstrap,
            redis_url,
            aioredis.Redis.from_url(redis_url),
            workdir,
            f"bench-backfill-{suffix}",
            suffix,
            redis_server.pid if redis_server else None,
            broker.pid if broker else None,
            entities=args.entities,
            entities_per_write=args.entities_per_write,
        )
        res.params["kafka"] = "embedded Tansu" if broker else bootstrap
        res.params["redis"] = (
            f"embedded {Path(redis_server.binary).name}" if redis_server else redis_url
        )
        await phases(ctx, args, res, out)
    finally:
        if ctx is not None:
            for proc in ctx.backfills:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for worker in ctx.procs:
                worker.stop()
            await ctx.client.aclose()
        if redis_server is not None:
            redis_server.stop()
        if broker is not None:
            broker.stop()


async def archive(ctx: Ctx, res: Results, last_offsets: dict[int, int], n: int) -> None:
    """``driftline archive`` until the offline log holds the N events; then stopped."""
    log("archive ...")
    archive_s = await archive_to(ctx, last_offsets, n)
    res.add(
        "driftline archive (to the offline log)",
        f"{n / archive_s:,.0f} events/s",
        f"ready to all in the log in {archive_s:.1f}s (1 s polls of the log's positions); "
        "stopped afterwards",
    )


async def catch_up_log(ctx: Ctx) -> None:
    """Step 5: the offline log brought up to where the worker stands (so up to the live
    marks of the version about to be backfilled), outside the measured windows."""
    raw = await ctx.client.hgetall(f"{ctx.prefix}:offsets:{SOURCE}")
    stored = {
        int(k[1:]): int(v)
        for k, v in ((k.decode(), v) for k, v in raw.items())
        if k.startswith("p") and k[1:].isdigit()
    }
    log(f"archive up to the worker's offsets {stored} ...")
    await archive_to(ctx, stored, sum(o + 1 for o in stored.values()))


async def archive_to(ctx: Ctx, last_offsets: dict[int, int], n: int) -> float:
    """Run ``driftline archive`` until the log holds ``last_offsets``; its seconds."""
    archiver = Archiver(ctx.workdir, ctx.config([V1]))
    ctx.procs.append(archiver)
    archiver.start()
    await archiver.wait_ready()
    t0 = time.monotonic()
    offline = OfflineLog(str(ctx.log_root))
    parts = list(last_offsets)
    while True:
        held = (
            await asyncio.to_thread(offline.positions, SOURCE, ctx.topic, parts)
            if await asyncio.to_thread(offline.exists, SOURCE)
            else {}
        )
        if all(held.get(p, -1) >= o for p, o in last_offsets.items()):
            break
        if time.monotonic() - t0 > max(600.0, n / 500):
            raise RuntimeError(f"archive behind: {held} vs {last_offsets}")
        archiver.check_alive()
        await asyncio.sleep(0.5)
    archive_s = time.monotonic() - t0
    archiver.stop()
    return archive_s


async def phases(ctx: Ctx, args: argparse.Namespace, res: Results, out: dict[str, Any]) -> None:
    n = args.events
    await create_source_topic(ctx.bootstrap, ctx.topic)

    # 1. the history: N events over the last 50 minutes --------------------------------
    log(f"generating {n:,} events over {args.entities:,} Zipf users, event times over 50 min ...")
    kept_rate = fb.EVENT_TIME_RATE
    fb.EVENT_TIME_RATE = max(1, round(n / SPAN_S))  # features.py's events: n / rate s of time
    try:
        events, truth = fb.entity_events(n, args.entities, "zipf")
    finally:
        fb.EVENT_TIME_RATE = kept_rate
    oldest = min(truth.ts)
    ctx.from_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest // 1000 - 1))
    span_min = (max(truth.ts) - oldest) / 60_000
    del truth
    produced = await produce_bulk(ctx.bootstrap, ctx.topic, events)
    del events
    res.add(
        "produce (bulk)",
        f"{produced.count / produced.seconds:,.0f} events/s",
        f"{produced.count:,} events, event times over {span_min:.0f} min, in "
        f"{produced.seconds:.1f}s",
    )
    log("raw baseline ...")
    raw1 = await raw_baseline(ctx.bootstrap, ctx.topic, n)

    # 2. the live worker's rate -------------------------------------------------------
    log("worker v1 ...")
    worker = ctx.worker([V1])
    await worker.wait_ready()
    snap: list[tuple[float, dict[str, float]]] = []

    async def first() -> None:
        snap.append((tree_cpu(worker.pid)[0], await ctx.cpu()))

    applied = await wait_applied(
        ctx.client, worker, produced.last_offsets, limit_s=max(300.0, n / 1000), on_first=first
    )
    w_end, c_end = tree_cpu(worker.pid)[0], await ctx.cpu()
    live_rate = applied.rate(n)
    done_n = n - applied.at_first
    res.add(
        "live worker, v1 (6 aggregations x 3 windows)",
        f"{live_rate:,.0f} events/s",
        f"{done_n:,} events after the first batch in {applied.t_end - applied.t_first:.1f}s; "
        f"CPU-s per 1M events: worker {(w_end - snap[0][0]) * 1e6 / done_n:.1f}, Redis "
        f"{(c_end['Redis'] - snap[0][1]['Redis']) * 1e6 / done_n:.1f}, broker "
        f"{(c_end['broker'] - snap[0][1]['broker']) * 1e6 / done_n:.1f}",
    )
    raw2 = await raw_baseline(ctx.bootstrap, ctx.topic, n)
    raw = (raw1 + raw2) / 2
    res.add(
        "raw aiokafka + orjson.loads",
        f"{raw:,.0f} events/s",
        f"mean of {raw1:,.0f} before and {raw2:,.0f} after the v1 worker; "
        f"v1 worker ratio to raw {live_rate / raw:.3f}",
    )
    if {"alone", "live"} & args.phases:  # the backfills from the log
        await archive(ctx, res, produced.last_offsets, n)
    log("worker with the v2 definition alone (its own group and prefix) ...")
    alone = ctx.worker([{**version(2), "version": 1}], suffix=f"{ctx.suffix}-v2")
    await alone.wait_ready()
    applied2 = await wait_applied(
        ctx.client, alone, produced.last_offsets, limit_s=max(300.0, n / 1000)
    )
    alone.stop()
    v2_live_rate = applied2.rate(n)
    res.add(
        "live worker, the v2 definition alone",
        f"{v2_live_rate:,.0f} events/s",
        "amount count/sum/mean/max + distinct category + last amount, category x 1m/10m/1h; "
        f"ratio to raw {v2_live_rate / raw:.3f}",
    )

    # 3. deploy the versions ---------------------------------------------------------
    worker.stop()
    # the conditions beside live traffic: (name, --max-rate, --entities-per-write)
    conditions: list[tuple[str, float | None, int | None]] = [("full speed", None, None)]
    if args.max_rate:
        conditions.append((f"--max-rate {args.max_rate:g}", args.max_rate, None))
        if args.small_writes:
            conditions.append(
                (
                    f"--max-rate {args.max_rate:g} --entities-per-write {args.small_writes}",
                    args.max_rate,
                    args.small_writes,
                )
            )
    lat_versions = [ALONE + 1 + i for i in range(len(conditions))]
    drain_versions = [lat_versions[-1] + 1 + i for i in range(len(conditions))]
    from_topic = drain_versions[-1] + 1  # the version backfilled from the topic
    # step 5's versions are started by step 5's workers: a version some worker does
    # not write after its mark has a gap, and the backfill refuses it
    ctx.groups = [V1, version(ALONE), version(from_topic)]
    log(f"worker with v1, v{ALONE} and v{from_topic} (marks the new versions) ...")
    worker = ctx.worker(ctx.groups)
    await worker.wait_ready()

    # 4. backfill alone, from the log, and from the topic ----------------------------
    rates = Rates(raw, raw1, raw2, live_rate, v2_live_rate)
    bf = bft = None
    if "alone" in args.phases:
        bf = await run_backfill(ctx, ALONE, worker)
        alone_rows(res, out, bf, n, rates)
    if "topic" in args.phases:
        bft = await run_backfill(ctx, from_topic, worker, no_log=True)
        log("raw baseline again, after the backfill from the topic ...")
        raw3 = await raw_baseline(ctx.bootstrap, ctx.topic, n)
        same = await same_state(ctx, ALONE, from_topic) if bf is not None else None
        topic_rows(res, out, bft, n, rates, raw3, bf, same)
    worker.stop()

    # 5. beside live traffic ---------------------------------------------------------
    if "live" in args.phases:
        ref = bf or bft
        # the drain's default backlog: half what the backfill alone took (n events in it)
        seconds = ref.seconds if ref is not None else n / min(live_rate, v2_live_rate)
        await beside_live(
            ctx, args, res, out, conditions, lat_versions, drain_versions, rates, seconds
        )


@dataclass
class Rates:
    """The references of one run: the raw consumer and the live workers, events/s."""

    raw: float  # mean of raw1 and raw2
    raw1: float  # before the v1 worker
    raw2: float  # after it
    live: float  # the v1 worker
    v2_live: float  # a worker with the backfilled definition alone


def alone_rows(res: Results, out: dict[str, Any], bf: Backfill, n: int, rates: Rates) -> None:
    """The figures of the backfill from the log, the worker idle."""
    raw, raw1, raw2 = rates.raw, rates.raw1, rates.raw2
    live_rate, v2_live_rate = rates.live, rates.v2_live
    if bf.total != n:
        log(f"backfill v2 filled {bf.total:,} events, not {n:,}: {bf.summary}")
    res.add(
        "backfill alone (v2), its summary",
        f"{bf.rate:,.0f} events/s",
        f"`{bf.summary}`",
    )
    res.add(
        "backfill alone (v2), whole process",
        f"{bf.wall_rate:,.0f} events/s",
        f"{bf.total:,} events in {bf.seconds:.1f}s from process start to exit (start-up, log "
        f"scan and counts: {bf.seconds - bf.total / max(bf.rate, 1e-9):.1f}s); other tenants "
        f"kept {bf.others:.0%} of a core busy meanwhile",
    )
    res.add(
        "backfill ratio to the live worker",
        f"{bf.rate / live_rate:.2f} (v1) / {bf.rate / v2_live_rate:.2f} (v2 definition)",
        f"whole process: {bf.wall_rate / live_rate:.2f} / {bf.wall_rate / v2_live_rate:.2f}",
    )
    res.add(
        "backfill ratio to raw",
        f"{bf.rate / raw:.3f}",
        f"whole process: {bf.wall_rate / raw:.3f}",
    )
    res.add(
        "backfill alone: CPU-s per 1M events",
        f"backfill {bf.per_million(bf.cpu_s):.1f} / Redis {bf.per_million(bf.redis_cpu_s):.1f}"
        f" / broker {bf.per_million(bf.broker_cpu_s):.2f}",
        f"idle worker {bf.per_million(bf.worker_cpu_s):.2f}; Lua inside Redis "
        f"{bf.per_million(bf.lua_s):.2f} s per 1M ({bf.scripts:,} scripts, "
        f"{bf.lua_s * 1000 / max(bf.scripts, 1):.1f} ms each); backfill process "
        f"{bf.cpu_s / bf.seconds:.0%} of a core over its wall time, peak RSS "
        f"{bf.rss_mib:,.0f} MiB ({bf.rss})",
    )
    out["alone"] = {
        "events": bf.total,
        "rate_summary": bf.rate,
        "rate_wall": bf.wall_rate,
        "seconds": bf.seconds,
        "cpu_s_per_1m": {
            "backfill": bf.per_million(bf.cpu_s),
            "redis": bf.per_million(bf.redis_cpu_s),
            "broker": bf.per_million(bf.broker_cpu_s),
            "worker_idle": bf.per_million(bf.worker_cpu_s),
        },
        "lua_s_per_1m": bf.per_million(bf.lua_s),
        "peak_rss_mib": bf.rss_mib,
        "rss": bf.rss,
        "scripts": bf.scripts,
        "others_cpu": bf.others,
        "live_worker_v1": live_rate,
        "live_worker_v2_definition": v2_live_rate,
        "raw": raw,
        "raw_before_after": [raw1, raw2],
    }


def topic_rows(
    res: Results,
    out: dict[str, Any],
    bf: Backfill,
    n: int,
    rates: Rates,
    raw3: float,
    log_bf: Backfill | None,
    same: Same | None,
) -> None:
    """The figures of the backfill from the topic (no offline log), the worker idle."""
    v = f"v{bf.version}"
    read_s = bf.first_progress_s - bf.read_start_s
    if bf.total != n or bf.from_topic != bf.total:
        log(
            f"backfill {v} filled {bf.total:,} events ({bf.from_topic:,} from the topic), not "
            f"{n:,}: {bf.summary}"
        )
    res.add(
        f"backfill from the topic ({v}), whole process",
        f"{bf.wall_rate:,.0f} events/s",
        f"{bf.total:,} events ({bf.from_topic:,} read from the topic) in {bf.seconds:.1f}s from "
        f"process start to exit: start-up {bf.read_start_s:.1f}s, the topic read (judged and "
        f"spooled) {read_s:.1f}s ({n / read_s:,.0f} records/s, to its first progress "
        f"record), the read and the apply loop "
        f"{bf.total / bf.rate if bf.rate else math.nan:.1f}s; other "
        f"tenants kept {bf.others:.0%} of a core busy meanwhile",
    )
    res.add(
        f"backfill from the topic ({v}), its summary (the read and the apply loop)",
        f"{bf.rate:,.0f} events/s",
        f"`{bf.summary}`",
    )
    res.add(
        "backfill from the topic: ratio to raw",
        f"{bf.wall_rate / rates.raw:.3f}",
        f"whole process; its summary's {bf.rate / rates.raw:.3f}; raw after this backfill "
        f"{raw3:,.0f} events/s ({raw3 / rates.raw:.2f} of the mean before), ratio to it "
        f"{bf.wall_rate / raw3:.3f}",
    )
    res.add(
        "backfill from the topic: ratio to the live worker",
        f"{bf.wall_rate / rates.live:.2f} (v1) / {bf.wall_rate / rates.v2_live:.2f} "
        "(v2 definition)",
        "whole process"
        + (
            f"; to the backfill from the log (whole process): {bf.wall_rate / log_bf.wall_rate:.2f}"
            if log_bf is not None
            else ""
        ),
    )
    res.add(
        "backfill from the topic: CPU-s per 1M events",
        f"backfill {bf.per_million(bf.cpu_s):.1f} / Redis {bf.per_million(bf.redis_cpu_s):.1f}"
        f" / broker {bf.per_million(bf.broker_cpu_s):.2f}",
        f"idle worker {bf.per_million(bf.worker_cpu_s):.2f}; Lua inside Redis "
        f"{bf.per_million(bf.lua_s):.2f} s per 1M ({bf.scripts:,} scripts); backfill process "
        f"{bf.cpu_s / bf.seconds:.0%} of a core over its wall time",
    )
    res.add(
        "backfill from the topic: memory and spool",
        f"peak RSS {bf.rss_mib:,.0f} MiB, spool {bf.spool_mib:,.1f} MiB",
        f"RSS {bf.rss}; spool: its TMPDIR's peak size ({bf.spool_files} files, 0.1 s samples), "
        f"{bf.spool_mib * 2**20 / max(bf.total, 1):.0f} bytes per event",
    )
    if same is not None:
        res.add(
            f"state of {v} (from the topic) vs v{ALONE} (from the log)",
            f"{same.close:,} of {same.entities:,} entities equal",
            f"{same.identical:,} byte-identical hashes (but for `_u`, the time of the last "
            f"write); the others' features equal within 1e-9 "
            f"relative as of now; largest difference: {same.worst}; fields that differ, first "
            f"entity: {same.fields}",
        )
    out["topic"] = {
        "version": bf.version,
        "events": bf.total,
        "from_topic": bf.from_topic,
        "rate_summary": bf.rate,
        "rate_wall": bf.wall_rate,
        "seconds": bf.seconds,
        "first_progress_s": bf.first_progress_s,
        "others_cpu": bf.others,
        "read_start_s": bf.read_start_s,
        "read_s": read_s,
        "cpu_s_per_1m": {
            "backfill": bf.per_million(bf.cpu_s),
            "redis": bf.per_million(bf.redis_cpu_s),
            "broker": bf.per_million(bf.broker_cpu_s),
            "worker_idle": bf.per_million(bf.worker_cpu_s),
        },
        "lua_s_per_1m": bf.per_million(bf.lua_s),
        "peak_rss_mib": bf.rss_mib,
        "rss": bf.rss,
        "spool_peak_mib": bf.spool_mib,
        "spool_files": bf.spool_files,
        "scripts": bf.scripts,
        "raw_after": raw3,
        "same_state_as_log": None if same is None else same.__dict__,
    }


async def beside_live(
    ctx: Ctx,
    args: argparse.Namespace,
    res: Results,
    out: dict[str, Any],
    conditions: list[tuple[str, float | None, int | None]],
    lat_versions: list[int],
    drain_versions: list[int],
    rates: Rates,
    alone_s: float,
) -> None:
    """Step 5: latency and backlog drain of the live worker, without and with a backfill.

    ``alone_s``: how long the backfill alone took (the drain's default backlog).
    """
    n = args.events
    lat_runs: list[LatencyRun] = []
    for n_version, (name, max_rate, epw) in zip(lat_versions, conditions, strict=True):
        worker = ctx.worker([V1, version(n_version)])
        await worker.wait_ready()
        await asyncio.sleep(1.0)
        log(f"latency, worker v1 + v{n_version}: {args.live_rate:,.0f}/s, no backfill ...")
        base = await latency_run(
            ctx,
            worker,
            args.live_rate,
            args.live_seconds,
            f"no backfill (v1 + v{n_version})",
            seed=2 * n_version,
        )
        what = f"backfill v{n_version}, {name}"
        await catch_up_log(ctx)
        log(f"latency, worker v1 + v{n_version}: {args.live_rate:,.0f}/s, {what} ...")
        with_bf = await latency_run(
            ctx,
            worker,
            args.live_rate,
            0,
            what,
            n_version=n_version,
            max_rate=max_rate,
            entities_per_write=epw,
            seed=2 * n_version + 1,
        )
        worker.stop()
        lat_runs += [base, with_bf]
    drain_runs: list[DrainRun] = []
    m = args.drain_events or max(
        20_000, min(n, int(0.5 * alone_s * min(rates.live, rates.v2_live)))
    )
    for n_version, (name, max_rate, epw) in zip(drain_versions, conditions, strict=True):
        worker = ctx.worker([V1, version(n_version)])
        await worker.wait_ready()
        await asyncio.sleep(1.0)
        log(f"drain, worker v1 + v{n_version}: {m:,} events, no backfill ...")
        base_d = await drain_run(ctx, worker, m, 10 + n_version, f"no backfill (v1 + v{n_version})")
        what = f"backfill v{n_version}, {name}"
        await catch_up_log(ctx)
        log(f"drain, worker v1 + v{n_version}: {m:,} events, {what} ...")
        with_d = await drain_run(ctx, worker, m, 20 + n_version, what, n_version, max_rate, epw)
        worker.stop()
        drain_runs += [base_d, with_d]

    res.tables += [
        "",
        f"### live latency at {args.live_rate:,.0f} events/s: produce -> visible in Redis",
        "",
        "| worker | condition | live events | worker: p50 / p90 / p99 / max, ms | p50 | p99 | "
        "raw consumer (floor): p50 / p90 / p99 / max, ms | CPU: worker / Redis / broker / "
        "bench | other tenants' CPU | backfill events/s (summary) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    out["latency"] = []
    for i in range(0, len(lat_runs), 2):
        base, with_bf = lat_runs[i], lat_runs[i + 1]
        assert with_bf.backfill is not None
        for r in (base, with_bf):
            is_bf = r is with_bf
            res.tables.append(
                f"| v1 + v{with_bf.backfill.version} | {r.what} | {r.events:,} "
                f"({r.seconds:.0f}s) | {fmt_q(r.q)} | "
                + (
                    f"{change(r.q[0], base.q[0])} | {change(r.q[3], base.q[3])} | "
                    if is_bf
                    else "| | "
                )
                + f"{fmt_q(r.raw_q)} | {r.worker_cpu:.0%} / {r.redis_cpu:.0%} / "
                f"{r.broker_cpu:.0%} / {r.bench_cpu:.0%} | {r.others:.0%} | "
                + (f"{with_bf.backfill.rate:,.0f}" if is_bf else "")
                + " |"
            )
            out["latency"].append(
                {
                    "what": r.what,
                    "events": r.events,
                    "seconds": r.seconds,
                    "p50_p90_p95_p99_max_ms": r.q,
                    "raw_p50_p90_p95_p99_max_ms": r.raw_q,
                    "broker_cpu": r.broker_cpu,
                    "bench_cpu": r.bench_cpu,
                    "worker_cpu": r.worker_cpu,
                    "redis_cpu": r.redis_cpu,
                    "others_cpu": r.others,
                    "backfill_rate": r.backfill.rate if r.backfill else None,
                }
            )
        res.add(
            f"live latency beside {with_bf.what}",
            f"p50 {change(with_bf.q[0], base.q[0])}, p99 {change(with_bf.q[3], base.q[3])}",
            f"p50/p99 {base.q[0]:,.0f}/{base.q[3]:,.0f} -> {with_bf.q[0]:,.0f}/"
            f"{with_bf.q[3]:,.0f} ms at {args.live_rate:,.0f} events/s; the backfill "
            f"{with_bf.backfill.rate:,.0f} events/s beside it",
        )
    res.tables += [
        "",
        f"### backlog drain: {m:,} events produced in bulk, the worker's rate",
        "",
        "| worker | condition | worker events/s | change | share of the drain the backfill ran "
        "| worker CPU | other tenants' CPU | backfill events/s (summary) | backfill CPU-s per 1M |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out["drain"] = []
    for i in range(0, len(drain_runs), 2):
        base_d, with_d = drain_runs[i], drain_runs[i + 1]
        assert with_d.backfill is not None
        b = with_d.backfill
        res.tables += [
            f"| v1 + v{b.version} | {base_d.what} | {base_d.rate:,.0f} | | | "
            f"{base_d.worker_cpu:.0%} | {base_d.others:.0%} | | |",
            f"| v1 + v{b.version} | {with_d.what} | {with_d.rate:,.0f} | "
            f"{change(with_d.rate, base_d.rate)} | {with_d.overlap:.0%} | "
            f"{with_d.worker_cpu:.0%} | {with_d.others:.0%} | {b.rate:,.0f} | "
            f"{b.per_million(b.cpu_s):.1f} |",
        ]
        res.add(
            f"worker drain rate beside {with_d.what}",
            change(with_d.rate, base_d.rate),
            f"{base_d.rate:,.0f} -> {with_d.rate:,.0f} events/s ({m:,} events; the backfill ran "
            f"during {with_d.overlap:.0%} of the drain, at {b.rate:,.0f} events/s)",
        )
        for d in (base_d, with_d):
            out["drain"].append(
                {
                    "what": d.what,
                    "events": d.events,
                    "rate": d.rate,
                    "overlap": d.overlap,
                    "worker_cpu": d.worker_cpu,
                    "others_cpu": d.others,
                    "backfill_rate": d.backfill.rate if d.backfill else None,
                }
            )


def print_table(res: Results, runtime: float) -> None:
    print("\n## driftline backfill benchmark\n")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in res.params.items()))
    print(f"command: `{shlex.join(['python', 'bench/backfill.py', *sys.argv[1:]])}`")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; runtime: {runtime:.0f}s\n")
    print("| figure | value | notes |")
    print("|---|---|---|")
    for figure, value, note in res.rows:
        print(f"| {figure} | {value} | {note} |")
    for line in res.tables:
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=None, help="events backfilled (1,000,000)")
    ap.add_argument("--entities", type=int, default=10_000, help="Zipf users (10,000)")
    ap.add_argument("--quick", action="store_true", help="100k events, 10 s no-backfill runs")
    ap.add_argument(
        "--max-rate", type=float, default=20_000, help="the paced backfill's --max-rate (20,000)"
    )
    ap.add_argument(
        "--small-writes",
        type=int,
        default=200,
        help="a third condition beside live traffic: --max-rate with this --entities-per-write "
        "(200; 0: none)",
    )
    ap.add_argument(
        "--entities-per-write",
        type=int,
        default=2_000,
        help="the backfills' --entities-per-write (2,000, its default)",
    )
    ap.add_argument(
        "--live-rate", type=float, default=5_000, help="live events/s of the latency runs (5,000)"
    )
    ap.add_argument(
        "--live-seconds", type=float, default=None, help="no-backfill latency runs (20; quick 10)"
    )
    ap.add_argument(
        "--drain-events",
        type=int,
        default=None,
        help="backlog of the drain runs (default: what the worker drains in half the time "
        "the backfill alone took, at least 20,000, at most --events)",
    )
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="which backfills to measure, comma-separated: alone (from the log), topic (from "
        "the topic, no offline log), live (beside live traffic); default all",
    )
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of the embedded one")
    ap.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases or args.phases - set(PHASES):
        ap.error(f"--phases: a comma-separated choice of {', '.join(PHASES)}")
    if args.events is None:
        args.events = 100_000 if args.quick else 1_000_000
    if args.live_seconds is None:
        args.live_seconds = 10.0 if args.quick else 20.0
    res = Results()
    res.params = {
        "events": f"{args.events:,}",
        "entities": f"{args.entities:,} (Zipf 1/rank^1.1)",
        "v1": f"amount {'/'.join(AGGREGATIONS)} x {'/'.join(WINDOWS)}",
        "backfilled": "amount count/sum/mean/max + distinct category + last amount, category "
        "x 1m/10m/1h",
        "partitions": PARTITIONS,
        "entities per write": f"{args.entities_per_write:,}",
        "paced": f"--max-rate {args.max_rate:,.0f}"
        + (f", and with --entities-per-write {args.small_writes}" if args.small_writes else ""),
        "live rate": f"{args.live_rate:,.0f}/s",
        "phases": ",".join(p for p in PHASES if p in args.phases),
        "cores": os.cpu_count(),
    }
    out: dict[str, Any] = {"params": res.params, "argv": sys.argv[1:]}
    workdir = Path(tempfile.mkdtemp(prefix="driftline-backfill-bench-"))
    started = time.monotonic()
    try:
        asyncio.run(run(args, res, out, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print_table(res, time.monotonic() - started)
        log("interrupted; everything it started was stopped")
        sys.exit(130)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(res, time.monotonic() - started)
    if args.json is not None:
        out["rows"] = res.rows
        out["tables"] = res.tables
        out["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
