"""A new group version, backfilled while the old one serves, equals an uninterrupted one.

The real worker, archiver and broker: events stream through version 1; then
the workers restart with versions 1 and 2, live traffic goes on, and
``driftline backfill`` fills version 2.  The archiver starts late, at the end
of the topic (``auto_offset_reset: latest``), so the backfill reads the first
phase of history from the topic and the rest from the offline log.  The backfill is
SIGKILLed mid-way and so is the worker (during the backfill), and the
backfill is run again to the end.  A second worker, in its own consumer group
and key prefix, computes version 2 alone from the first event on: what an
uninterrupted version 2 holds.  Every feature of every entity must be equal.
"""

from __future__ import annotations

import asyncio
import copy
import random
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from driftline.features.registry import BackfillProgress
from tests.e2e.test_archive import ArchiveProcess
from tests.e2e.test_exactly_once import Producer, stored_offsets
from tests.e2e.test_training_consistency import (
    PHASE_MS,
    Serve,
    config_for,
    phase_events,
    same,
    wait_applied,
    wait_archived,
)
from tests.e2e.test_worker_e2e import read_features, registry_hash
from tests.worker_process import ROOT, WorkerProcess

pytestmark = pytest.mark.slow

V2 = {
    "name": "spend",
    "version": 2,
    "source": "tx",
    "values": {"amount": ["count", "sum", "mean", "min", "max"]},
    "distinct": ["category"],
    "last": ["amount", "category"],
    "windows": ["1m", "10m", "1h"],
}


async def _sentinels(
    bootstrap: str, topic: str, partitions: list[int], at: int, offsets: dict[int, int]
) -> None:
    """One on-time event per partition, each alone in its record batch.

    The broker (Tansu) reports a partition's end at the start of its last batch,
    so an archiver starting at the end reads this event first: its watermark is
    then the worker's (no event before is newer), and their verdicts agree.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p in partitions:
            event = {
                "event_id": f"sentinel-{p}",
                "user_id": f"s{p}",
                "amount": 1.0,
                "category": "other",
                "event_time": at,
            }
            meta = await producer.send_and_wait(topic, orjson.dumps(event), partition=p)
            offsets[p] = max(offsets.get(p, -1), meta.offset)
    finally:
        await producer.stop()


def _late_archiver(tmp_path: Path, config: dict[str, Any], partitions: int) -> ArchiveProcess:
    """``driftline archive`` starting at the end of the topic, once it holds every partition."""
    late = {**copy.deepcopy(config), "kafka": {**config["kafka"], "auto_offset_reset": "latest"}}
    archiver = ArchiveProcess(tmp_path, late).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = [k for k in archiver.metrics() if k[0] == "driftline_archive_offset"]
        if len(held) >= partitions:
            return archiver
        time.sleep(0.3)
    raise AssertionError(f"the archiver was not assigned the partitions:\n{archiver.log()}")


def _backfill(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "driftline.streams.cli", "backfill", "-c", str(config)]
    return subprocess.Popen(
        [*command, "--group", "spend", "--version", "2", "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )


def _progress(redis_url: str, prefix: str) -> BackfillProgress | None:
    fields = asyncio.run(registry_hash(redis_url, f"{prefix}:registry:spend"))
    raw = fields.get(b"v2:backfill")
    return None if raw is None else BackfillProgress.parse(raw)


def _wait_progress(
    redis_url: str, prefix: str, more_than: int, proc: subprocess.Popen[bytes]
) -> BackfillProgress:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = _progress(redis_url, prefix)
        if held is not None and held.events > more_than:
            return held
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"backfill exited with {proc.returncode} too early:\n{out}")
        time.sleep(0.1)
    raise AssertionError(f"backfill progress not past {more_than}: {held}")


def _cli(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "driftline.streams.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _statuses(config: Path) -> dict[int, tuple[str, bool]]:
    code, out = _cli("registry", "-c", str(config), "--json")
    assert code == 0, out
    return {
        e["version"]: (e["status"], e["active"])
        for e in orjson.loads(out)["groups"]
        if e["name"] == "spend"
    }


def _served(serve: Serve, user: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{serve.port}/v1/features/spend/{user}"
    with urllib.request.urlopen(url, timeout=10) as response:
        doc: dict[str, Any] = orjson.loads(response.read())
    return doc


def _until_served(serve: Serve, version: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        doc = _served(serve, "u01")
        if doc["version"] == version or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def _activation(tmp_path: Path, both: dict[str, Any], both_path: Path) -> None:
    """Activate v2 and switch back: seen in the registry and in what serve answers."""
    assert _statuses(both_path) == {1: ("active", True), 2: ("ready", False)}
    serve = Serve(tmp_path, both)
    try:
        v1_doc = _served(serve, "u01")
        assert v1_doc["version"] == 1 and "amount_count_10m" not in v1_doc["features"]
        code, out = _cli("registry", "activate", "-c", str(both_path), "spend", "2")
        assert code == 0, out
        assert _statuses(both_path) == {1: ("ready", False), 2: ("active", True)}
        v2_doc = _until_served(serve, 2)
        assert v2_doc["version"] == 2 and v2_doc["features"]["amount_count_1h"] > 0
        code, out = _cli("registry", "activate", "-c", str(both_path), "spend", "1")
        assert code == 0, out
        back = _until_served(serve, 1)
        assert back["version"] == 1 and back["features"] == v1_doc["features"]
        assert _statuses(both_path)[1] == ("active", True)
    finally:
        serve.stop()


def test_backfilled_version_equals_an_uninterrupted_one_after_kills(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    prefix = f"e2e-{suffix}"
    topic = f"tx-{suffix}"
    config = config_for(kafka_bootstrap, redis_url, suffix, tmp_path / "log")
    v1 = config["feature_groups"][0]
    both = {**copy.deepcopy(config), "feature_groups": [v1, V2]}
    # the reference: version 2 alone, from the first event, its own group and keys
    reference = {
        **copy.deepcopy(config),
        "app_id": f"ref-{suffix}",
        "redis": {**config["redis"], "key_prefix": f"ref-{suffix}"},
        "feature_groups": [V2],
    }
    reference.pop("offline")
    both_path = tmp_path / "both.yaml"
    both_path.write_text(yaml.safe_dump(both))
    rng = random.Random(5)
    base = int(time.time() * 1000) - 30 * 60_000
    offsets: dict[int, int] = {}

    def produce(phase: int, n: int, rate: float) -> Producer:
        producer = Producer(kafka_bootstrap, topic, phase_events(base, phase, n, rng), rate)
        producer.start()
        return producer

    def finish(producer: Producer) -> None:
        producer.join(timeout=120)
        assert producer.error is None, producer.error
        for p, o in producer.last_offsets.items():
            offsets[p] = max(offsets.get(p, -1), o)

    worker = WorkerProcess(tmp_path, config).start()
    ref = WorkerProcess(tmp_path, reference).start()
    archiver: ArchiveProcess | None = None
    backfill: subprocess.Popen[bytes] | None = None
    try:
        # 1. version 1 alone: the history version 2 needs.  The archiver starts after
        # phase 0, at the end of the topic: the log lacks phase 0 (read from the topic)
        finish(produce(0, 2_500, 5_000))
        asyncio.run(_sentinels(kafka_bootstrap, topic, sorted(offsets), base + PHASE_MS, offsets))
        archiver = _late_archiver(tmp_path, config, len(offsets))
        for phase in (1, 2):
            finish(produce(phase, 2_500, 5_000))
        wait_applied(redis_url, prefix, offsets, worker)
        # 2. the workers restart with both versions; live traffic goes on
        worker.stop()
        worker = WorkerProcess(tmp_path, both).start()
        live = produce(3, 3_000, 400)
        # 3. the backfill, paced so it is surely killed mid-way
        wait_archived(tmp_path / "log", topic, offsets, archiver)
        backfill = _backfill(both_path, "--max-rate", "500", "--entities-per-write", "8")
        _wait_progress(redis_url, prefix, 0, backfill)
        backfill.kill()
        backfill.wait()
        killed = _progress(redis_url, prefix)
        assert killed is not None and killed.state == "running"
        assert killed.total is not None and 0 < killed.events < killed.total
        # 4. run again: it resumes; the worker dies during it
        backfill = _backfill(both_path, "--max-rate", "500", "--entities-per-write", "8")
        _wait_progress(redis_url, prefix, killed.events, backfill)
        worker.kill()
        worker = WorkerProcess(tmp_path, both).start()
        out, _ = backfill.communicate(timeout=300)
        assert backfill.returncode == 0, out.decode()
        assert "earlier run" in out.decode(), out.decode()
        # phase 0 (2,500 records, a few refused) came from the topic
        from_topic = re.search(r"(\d+) of them read from the topic", out.decode())
        assert from_topic is not None and 2_300 <= int(from_topic[1]) <= 2_500, out.decode()
        done = _progress(redis_url, prefix)
        assert done is not None and done.state == "done" and done.events == killed.total
        finish(live)
        finish(produce(4, 1_000, 5_000))
        wait_applied(redis_url, prefix, offsets, worker)
        wait_applied(redis_url, f"ref-{suffix}", offsets, ref)
    finally:
        if backfill is not None and backfill.poll() is None:
            backfill.kill()
        worker.stop()
        if archiver is not None:
            archiver.stop()
        ref.stop()
    _activation(tmp_path, both, both_path)
    users = [f"u{i:02d}" for i in range(42)]
    as_of = base + 5 * 120_000 + 1
    got = asyncio.run(read_features(redis_url, prefix, reference, "spend", users, as_of_ms=as_of))
    want = asyncio.run(
        read_features(redis_url, f"ref-{suffix}", reference, "spend", users, as_of_ms=as_of)
    )
    names = list(want[0].values)
    apart = [
        (u, n, g.values[n], w.values[n])
        for u, g, w in zip(users, got, want, strict=True)
        for n in names
        if not same(g.values[n], w.values[n])
    ]
    assert not apart, f"{len(apart)} differ, e.g. {apart[:5]}"
    # the comparison has teeth: the 1h windows hold the history only the backfill wrote
    assert sum(1 for w in want if w.values["amount_count_1h"] > 0) >= 30
    assert stored_offsets(redis_url, prefix) == offsets
    assert orjson.loads(orjson.dumps(done.as_dict()))["state"] == "done"
