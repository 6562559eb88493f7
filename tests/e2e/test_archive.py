"""``driftline archive`` against a real broker: every accepted event in the log once.

The archiver is SIGKILLed while events stream in and restarted, two of them
share the partitions for a while (a rebalance), and afterwards the Delta
table must hold exactly the events the worker's verdicts accept: each once,
none invalid, none late, with its topic, partition and offset.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftline.sinks.offline_log import OfflineLog
from tests.e2e.test_exactly_once import Producer
from tests.e2e.test_worker_e2e import e2e_config
from tests.worker_process import WorkerProcess

pytestmark = pytest.mark.slow


class ArchiveProcess(WorkerProcess):
    """``driftline archive -c FILE`` as a subprocess, ready once its /healthz answers."""

    command = "archive"
    ready_path = "/healthz"


def archive_config(kafka: str, redis_url: str, suffix: str, root: Path) -> dict[str, Any]:
    config = e2e_config(kafka, redis_url, suffix)
    config["sources"] = config["sources"][:1]
    config["sources"][0]["allowed_lateness"] = "30s"
    config["feature_groups"] = config["feature_groups"][:1]
    config["offline"] = {"path": str(root), "flush_interval_s": 0.5, "flush_max_events": 2000}
    return config


def make_stream(n: int, seed: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Events (and some invalid bodies) in time order; late ones are an hour behind.

    Returns the stream and the ids the verdicts must accept.  Every user keeps
    to one partition (keyed), so an event an hour behind its predecessors is
    behind its partition's watermark too: late.
    """
    rng = random.Random(seed)
    base = int(time.time() * 1000) - 10 * 60_000
    stream: list[dict[str, Any]] = []
    accepted: set[str] = set()
    for i in range(n):
        t = base + i * 3
        event = {
            "event_id": f"id-{i}",
            "user_id": f"u{rng.randrange(300):03d}",
            "amount": round(rng.uniform(1, 100), 2),
            "category": "grocery",
            "event_time": t,
        }
        roll = rng.random()
        if roll < 0.03:
            stream.append({**event, "amount": "not a number"})  # invalid by contract
        elif roll < 0.05 and i > 2_000:
            stream.append({**event, "event_time": t - 3_600_000})  # late
        else:
            stream.append(event)
            accepted.add(event["event_id"])
    return stream, accepted


def wait_for_log(
    root: Path,
    topic: str,
    last_offsets: dict[int, int],
    procs: list[ArchiveProcess],
    timeout: float,
) -> None:
    log = OfflineLog(str(root))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists("tx") and log.positions("tx", topic, list(last_offsets)) == last_offsets:
            return
        time.sleep(0.5)
    got = log.positions("tx", topic, list(last_offsets)) if log.exists("tx") else None
    logs = "\n".join(p.log()[-3000:] for p in procs)
    raise AssertionError(f"log at {got}, topic at {last_offsets}\n{logs}")


def test_archive_holds_every_accepted_event_once_after_kills_and_a_rebalance(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    root = tmp_path / "log"
    config = archive_config(kafka_bootstrap, redis_url, suffix, root)
    topic = f"tx-{suffix}"
    stream, accepted = make_stream(30_000, seed=3)
    producer = Producer(kafka_bootstrap, topic, stream, rate=6_000)
    first = ArchiveProcess(tmp_path, config).start()
    producer.start()
    rng = random.Random(4)
    procs = [first]
    try:
        for _ in range(3):
            time.sleep(rng.uniform(0.5, 1.5))
            procs[-1].kill()
            procs.append(ArchiveProcess(tmp_path, config).start())
        second = ArchiveProcess(tmp_path, config).start()  # two share the partitions
        procs.append(second)
        time.sleep(2)
        assert second.stop() == 0
        producer.join(timeout=120)
        assert producer.error is None, producer.error
        wait_for_log(root, topic, producer.last_offsets, procs, timeout=120)
    finally:
        for p in procs:
            if p.proc is not None and p.proc.poll() is None:
                p.stop()
    table = OfflineLog(str(root)).scan("tx").collect()
    ids = table["event_id"].to_list()
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} events archived twice"
    assert set(ids) == accepted, (
        f"missing {len(accepted - set(ids))}, not accepted {len(set(ids) - accepted)}"
    )
    positions = set(zip(table["_partition"].to_list(), table["_offset"].to_list(), strict=True))
    assert len(positions) == len(ids)
    assert set(table["_topic"].to_list()) == {topic}
    # the rows carry what the contract says: amounts are numbers, dates are event dates
    assert table.schema["amount"].is_float()
    row = table.row(0, named=True)
    assert row["event_date"] == row["_event_time"].date()
    assert orjson.loads(orjson.dumps(row["amount"])) == row["amount"]
