"""A backlog with one shift, read from the start by two workers, is one incident at the shift.

The topic's four partitions hold very different numbers of events (skewed
keys) over the same event time, so the workers' partitions reach the
monitor at different event times: without the event-time merge the values
from before and after the shift arrive interleaved and the one change is
opened several times (the check at the end runs that way too and sees it).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from driftline.streams.settings import load_settings
from driftline.streams.topics import create_topics, topics_for
from tests.e2e.test_drift_e2e import read_alerts
from tests.e2e.test_worker_e2e import e2e_config, json_source_only, produce
from tests.worker_process import WorkerProcess, run_cli

pytestmark = pytest.mark.slow

N = 24_000
SHIFT_AT = int(N * 0.6)


def backlog(seed: int, start_ms: int) -> list[tuple[bytes, bytes]]:
    """Skewed users (a few heavy ones), +1.5 sd from event SHIFT_AT on, 1 ms apart."""
    rng = random.Random(seed)
    out = []
    for i in range(N):
        user = f"u{min(int(rng.paretovariate(0.7)), 400)}"
        event = {
            "event_id": f"{seed}-{i}",
            "user_id": user,
            "amount": round(rng.gauss(115.0 if i >= SHIFT_AT else 100.0, 10.0), 3),
            "category": "fuel",
            "event_time": start_ms + i,
        }
        out.append((user.encode(), orjson.dumps(event)))
    return out


def run_backlog(
    tmp_path: Path, config: dict[str, Any], kafka_bootstrap: str
) -> tuple[list[Any], int]:
    """Produce the backlog, let two workers read it from the start; the alerts, start time."""
    path = tmp_path / "driftline.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    asyncio.run(create_topics(kafka_bootstrap, topics_for(settings)))
    start = int(time.time() * 1000) - 600_000
    placed = asyncio.run(produce(kafka_bootstrap, config["sources"][0]["topic"], backlog(7, start)))
    sizes = sorted(sum(1 for p, _ in placed if p == q) for q in range(4))
    assert sizes[-1] > 2 * sizes[0], sizes  # the partitions are far from even
    workers = [WorkerProcess(tmp_path, config).start() for _ in range(2)]
    try:
        deadline = time.monotonic() + 180
        while True:  # every value fed to the monitor (its checkpoint counts them)
            listed = run_cli("monitors", "list", "-c", str(workers[0].config_path), "--json")
            state = orjson.loads(listed.stdout)["amount"] if listed.returncode == 0 else None
            if isinstance(state, list) and state and state[0]["values"] == N:
                break
            assert time.monotonic() < deadline, (listed.stdout, listed.stderr, workers[0].log())
            time.sleep(1)
    finally:
        for worker in workers:
            worker.stop()
    return asyncio.run(read_alerts(kafka_bootstrap, config["drift"]["alerts_topic"], 3)), start


def config_for(kafka_bootstrap: str, redis_url: str, **drift: Any) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, redis_url, suffix))
    config["feature_groups"] = []
    config["drift"] = {"alerts_topic": f"alerts-{suffix}", **drift}
    config["monitors"] = [{"name": "amount", "source": "tx", "field": "amount", "warmup": 500}]
    return config


def test_a_backlog_read_by_two_workers_is_one_incident_at_the_shift(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    config = config_for(kafka_bootstrap, redis_url)
    alerts, start = run_backlog(tmp_path, config, kafka_bootstrap)
    kinds = [(a["kind"], a["reason"], a["event_time_ms"] - start) for a in alerts]
    opened = [a for a in alerts if a["kind"] == "opened"]
    assert len(opened) == 1, kinds
    # at the shift: a +1.5 sd change is found within a few hundred values (1 ms apart)
    assert 0 <= opened[0]["event_time_ms"] - (start + SHIFT_AT) < 500, kinds
    assert [a for a in alerts if a["kind"] == "closed"] == [], kinds  # still open at the end
