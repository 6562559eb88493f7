"""Training features equal served features: the real worker, the archiver, the log.

Events stream through ``driftline worker`` and ``driftline archive`` in
phases; after each phase the online store is read as of the phase's end (it
then holds exactly the events up to that time), through the serving API
(``driftline serve``, HTTP) and straight from Redis.  The worker is SIGKILLed in
the middle of one phase and the archiver in another.  Then the training set
for those (entity, time) rows, built from the offline log, must give every
value the online read gave, to 1e-9 relative, and invalid or late events
must be missing from both.
"""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import yaml

from driftline.sinks.offline_log import OfflineLog
from driftline.streams.local.ports import find_free_port
from driftline.streams.training import training_set
from tests.e2e.test_archive import ArchiveProcess
from tests.e2e.test_exactly_once import Producer, stored_offsets
from tests.e2e.test_worker_e2e import e2e_config, read_features
from tests.worker_process import ROOT, WorkerProcess

pytestmark = pytest.mark.slow

PHASE_MS = 120_000
PHASES = 4
USERS = 40


def config_for(kafka: str, redis_url: str, suffix: str, root: Path) -> dict[str, Any]:
    config = e2e_config(kafka, redis_url, suffix)
    config["sources"] = config["sources"][:1]
    config["worker"]["batch_max_events"] = 300
    config["feature_groups"] = [
        {
            "name": "spend",
            "version": 1,
            "source": "tx",
            "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
            "distinct": ["category"],
            "last": ["amount", "category"],
            "windows": ["1m", "5m", "1h"],
        }
    ]
    config["offline"] = {"path": str(root), "flush_interval_s": 0.5, "flush_max_events": 1000}
    return config


def phase_events(base: int, phase: int, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Event times in (end of the previous phase, end of this one], a little out of order."""
    start = base + phase * PHASE_MS
    events = []
    for i in range(n):
        t = start + 1 + (i * (PHASE_MS - 1)) // n
        t = max(start + 1, t - rng.randint(0, 5_000))
        event: dict[str, Any] = {
            "event_id": f"p{phase}-{i}",
            "user_id": f"u{rng.randrange(USERS):02d}",
            "amount": round(rng.lognormvariate(3, 1), 2),
            "category": rng.choice(["grocery", "fuel", "travel", "health"]),
            "event_time": t,
        }
        roll = rng.random()
        if roll < 0.02:
            event["amount"] = "n/a"  # invalid: dead-lettered by both
        elif roll < 0.04 and i > 50:
            event["amount"] = 1e6
            event["event_time"] = start - 600_000  # late: behind the watermark
        events.append(event)
    return events


def wait_applied(
    redis_url: str, prefix: str, offsets: dict[int, int], worker: WorkerProcess
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if stored_offsets(redis_url, prefix) == offsets:
            return
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        time.sleep(0.3)
    raise AssertionError(f"{stored_offsets(redis_url, prefix)} != {offsets}\n{worker.log()}")


def wait_archived(
    root: Path, topic: str, offsets: dict[int, int], archiver: ArchiveProcess
) -> None:
    log = OfflineLog(str(root))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists("tx") and log.positions("tx", topic, list(offsets)) == offsets:
            return
        time.sleep(0.3)
    raise AssertionError(f"archive behind {offsets}\n{archiver.log()}")


class Serve:
    """``driftline serve`` on the test's config, on a free loopback port."""

    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        self.port = find_free_port()
        path = tmp_path / f"serve-{self.port}.yaml"
        path.write_text(
            yaml.safe_dump({**config, "serve": {"host": "127.0.0.1", "port": self.port}})
        )
        self.log = tmp_path / f"serve-{self.port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "driftline.streams.cli", "serve", "-c", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.2)

    def features(self, user: str, as_of: int) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/v1/features/spend/{user}?as_of={as_of}"
        with urllib.request.urlopen(url, timeout=10) as response:
            doc = orjson.loads(response.read())
        assert doc["as_of_ms"] == as_of
        features: dict[str, Any] = doc["features"]
        return features

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def test_training_set_from_the_log_equals_the_online_reads_after_kills(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    prefix = f"e2e-{suffix}"
    topic = f"tx-{suffix}"
    root = tmp_path / "log"
    config = config_for(kafka_bootstrap, redis_url, suffix, root)
    rng = random.Random(11)
    base = int(time.time() * 1000) - (PHASES + 2) * PHASE_MS
    worker = WorkerProcess(tmp_path, config).start()
    archiver = ArchiveProcess(tmp_path, config).start()
    serve = Serve(tmp_path, config)
    served: list[dict[str, Any]] = []
    offsets: dict[int, int] = {}
    users = [f"u{i:02d}" for i in range(USERS + 2)]  # two without events
    readings: list[tuple[str, int, dict[str, Any]]] = []
    try:
        for phase in range(PHASES):
            producer = Producer(
                kafka_bootstrap, topic, phase_events(base, phase, 3_000, rng), 3_000
            )
            producer.start()
            if phase == 1:  # the worker dies mid-stream (the producer is rate-bound: >= 1 s)
                time.sleep(0.5)
                assert producer.is_alive()
                worker.kill()
                worker = WorkerProcess(tmp_path, config).start()
            if phase == 2:  # and the archiver
                time.sleep(0.5)
                assert producer.is_alive()
                archiver.kill()
                archiver = ArchiveProcess(tmp_path, config).start()
            producer.join(timeout=120)
            assert producer.error is None, producer.error
            for p, o in producer.last_offsets.items():
                offsets[p] = max(offsets.get(p, -1), o)
            wait_applied(redis_url, prefix, offsets, worker)
            # serve answers the users without events from the log (a read in the past of
            # an entity without a key is not Redis's to answer): the log must have them
            wait_archived(root, topic, offsets, archiver)
            as_of = base + (phase + 1) * PHASE_MS
            vectors = asyncio.run(
                read_features(redis_url, prefix, config, "spend", users, as_of_ms=as_of)
            )
            readings += [(u, as_of, v.values) for u, v in zip(users, vectors, strict=True)]
            served += [serve.features(u, as_of) for u in users]
        wait_archived(root, topic, offsets, archiver)
    finally:
        worker.stop()
        archiver.stop()
        serve.stop()
    config_path = worker.config_path.parent / "training.yaml"
    config_path.write_text(archiver.config_path.read_text())
    rows = pl.DataFrame(
        {"user_id": [u for u, _, _ in readings], "timestamp": [t for _, t, _ in readings]}
    )
    out = training_set(config_path, rows, ["spend"])
    names = list(readings[0][2])
    mismatches = [
        (user, t, name, out[name][i], online[name])
        for i, (user, t, online) in enumerate(readings)
        for name in names
        if not same(out[name][i], online[name])
    ]
    assert not mismatches, f"{len(mismatches)} differ, e.g. {mismatches[:5]}"
    # and what the serving API answered then (JSON: floats and ints as sent)
    apart = [
        (readings[i][0], readings[i][1], name, out[name][i], doc[name])
        for i, doc in enumerate(served)
        for name in names
        if not same(out[name][i], doc[name])
    ]
    assert not apart, f"{len(apart)} differ from the serving API, e.g. {apart[:5]}"
    # the comparison has teeth: most rows have data, and nothing late or invalid counted
    assert sum(1 for _, _, v in readings if v["amount_count_5m"]) > len(readings) // 2
    assert max(out["amount_max_1h"].drop_nulls()) < 1e6
