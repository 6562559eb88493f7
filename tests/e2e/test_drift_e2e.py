"""Drift end to end: a known shift in a stream gives one alert record and moves Prometheus.

Then a restart: the monitor's state is restored from its checkpoint, so the
open incident is neither lost nor raised again; ``driftline monitors list``
shows it against its baseline, and ``driftline monitors accept`` closes it.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from jsonschema import Draft202012Validator

from tests.e2e.test_worker_e2e import e2e_config, json_source_only, produce
from tests.worker_process import CONTRACTS, WorkerProcess, run_cli

pytestmark = pytest.mark.slow
ALERT_SCHEMA = Draft202012Validator(
    orjson.loads((CONTRACTS / "drift_alert.schema.json").read_bytes())
)


def stream(n: int, mean: float, seed: int, start_ms: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = f"u{rng.randint(0, 50)}"
        event = {
            "event_id": f"{seed}-{i}",
            "user_id": user,
            "amount": round(max(0.0, rng.gauss(mean, 10.0)), 3),
            "category": "fuel",
            "event_time": start_ms + i,
        }
        out.append((user.encode(), orjson.dumps(event)))
    return out


async def read_alerts(bootstrap: str, topic: str, wait_s: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    alert = orjson.loads(m.value)
                    assert m.key == alert["monitor"].encode()
                    out.append(alert)
    finally:
        await consumer.stop()
    return out


TOKEN = "drift-acceptance-token"


def post(worker: WorkerProcess, path: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"{worker.base}{path}", data=b"", method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, orjson.loads(raw) if raw.startswith(b"{") else raw.decode()


def test_shift_raises_one_alert_and_survives_restart(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, redis_url, suffix))
    config["feature_groups"] = []
    config["drift"] = {"alerts_topic": f"alerts-{suffix}"}
    config["monitors"] = [{"name": "amount", "source": "tx", "field": "amount", "warmup": 500}]
    topic = f"tx-{suffix}"
    now = int(time.time() * 1000) - 60_000
    worker = WorkerProcess(tmp_path, config).start()
    try:
        asyncio.run(
            produce(kafka_bootstrap, topic, stream(1500, 100.0, 1, now))
        )  # warm-up + stable
        worker.wait_for("driftline_events_valid_total", 1500, source="tx")
        assert not asyncio.run(read_alerts(kafka_bootstrap, f"alerts-{suffix}", 2)), (
            "no alert before the shift"
        )
        asyncio.run(produce(kafka_bootstrap, topic, stream(400, 115.0, 2, now + 1500)))  # +1.5 sd
        worker.wait_for("driftline_drift_alerts_total", 1, monitor="amount", kind="opened")
        assert worker.metric_sum("driftline_drift_incident_open", monitor="amount") == 1
        assert worker.metric_sum("driftline_drift_detections_total", monitor="amount") >= 1
        assert worker.metric_sum("driftline_drift_warming_up", monitor="amount") == 0
        # accepting over HTTP changes state: off without a token
        assert post(worker, "/v1/monitors/amount/accept")[0] == 403
        assert worker.stop() == 0
    finally:
        worker.kill()
    alerts = asyncio.run(read_alerts(kafka_bootstrap, f"alerts-{suffix}", 3))
    opened = [a for a in alerts if a["kind"] == "opened"]
    assert len(opened) == 1, alerts
    alert = opened[0]
    ALERT_SCHEMA.validate(alert)
    assert alert["monitor"] == "amount" and alert["source"] == "tx" and alert["field"] == "amount"
    assert (
        95 < alert["reference"]["mean"] < 105
        and alert["current"]["mean"] > alert["reference"]["mean"]
    )
    assert alert["first_offset"] is not None

    # restart: state comes back from the checkpoint, the incident stays open, no second "opened"
    again = WorkerProcess(tmp_path, config, env={"DRIFTLINE_METRICS__TOKEN": TOKEN}).start()
    try:
        asyncio.run(produce(kafka_bootstrap, topic, stream(200, 115.0, 3, now + 2000)))
        again.wait_for("driftline_events_valid_total", 200, source="tx")
        deadline = time.monotonic() + 30
        while again.metric_sum("driftline_drift_incident_open", monitor="amount") != 1:
            assert time.monotonic() < deadline, again.log()
            time.sleep(0.3)
        assert again.metric_sum("driftline_drift_warming_up", monitor="amount") == 0
        assert again.metric_sum("driftline_drift_alerts_total", kind="opened") == 0

        # an operator looks, then accepts the change as the new normal
        cfg = str(again.config_path)
        listed = run_cli("monitors", "list", "-c", cfg, "--json")
        assert listed.returncode == 0, listed.stderr
        [segment] = orjson.loads(listed.stdout)["amount"]
        assert segment["phase"] == "incident"
        assert segment["incident"]["incident_id"] == opened[0]["incident_id"]
        assert 95 < segment["baseline"]["mean"] < 105 < segment["current"]["mean"]
        text = run_cli("monitors", "list", "-c", cfg).stdout
        assert "INCIDENT " + opened[0]["incident_id"] in text and "baseline" in text
        page_path = tmp_path / "amount.html"
        written = run_cli("monitors", "report", "amount", "-c", cfg, "--html", str(page_path))
        assert written.returncode == 0, written.stderr
        page = page_path.read_text()
        assert opened[0]["incident_id"] in page and "baseline vs current" in page
        assert post(again, "/v1/monitors/amount/accept")[0] == 401
        assert post(again, "/v1/monitors/amont/accept", TOKEN) == (
            404,
            {"error": "no monitor named 'amont' (monitors: amount)", "status": 404},
        )
        status, body = post(again, "/v1/monitors/amount/accept", TOKEN)
        assert status == 202 and body["sent"] is True and body["values_topic_offset"] >= 0
        deadline = time.monotonic() + 30
        while again.metric_sum("driftline_drift_incident_open", monitor="amount") != 0:
            assert time.monotonic() < deadline, again.log()
            time.sleep(0.3)
        again_accept = run_cli("monitors", "accept", "amount", "-c", cfg)
        assert again_accept.returncode == 0 and "nothing to accept" in again_accept.stdout
        wrong = run_cli("monitors", "accept", "amont", "-c", cfg)
        assert wrong.returncode == 2 and "did you mean 'amount'" in wrong.stderr
        assert "Traceback" not in wrong.stderr
    finally:
        again.stop()
    after = asyncio.run(read_alerts(kafka_bootstrap, f"alerts-{suffix}", 3))
    assert [a for a in after if a["kind"] == "opened"] == opened
    closed = [a for a in after if a["kind"] == "closed"]
    assert [(a["reason"], a["incident_id"]) for a in closed] == [
        ("accepted", opened[0]["incident_id"])
    ]
    ALERT_SCHEMA.validate(closed[0])


def test_a_feature_monitor_watches_each_entity_feature_after_its_batch(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    """One event per user: each user's 24 h sum is its amount, so the monitor's recent
    mean over the 500 values it kept is exactly the mean of the 500 amounts."""
    suffix = uuid.uuid4().hex[:8]
    config = json_source_only(e2e_config(kafka_bootstrap, redis_url, suffix))
    config["drift"] = {"alerts_topic": f"alerts-{suffix}"}
    config["monitors"] = [
        {
            "name": "user-sum",
            "source": "tx",
            "feature": "spend.amount_sum_24h",
            "warmup": 100,
            "max_entities_per_batch": 1000,
            "skip_first": "0s",  # every value, not only once the 24 h window has filled
        }
    ]
    rng = random.Random(9)
    now = int(time.time() * 1000) - 10_000
    amounts = [round(rng.uniform(1, 100), 2) for _ in range(500)]
    records = [
        (
            f"user-{i}".encode(),
            orjson.dumps(
                {
                    "event_id": f"f-{i}",
                    "user_id": f"user-{i}",
                    "amount": amount,
                    "category": "fuel",
                    "event_time": now + i,
                }
            ),
        )
        for i, amount in enumerate(amounts)
    ]
    worker = WorkerProcess(tmp_path, config).start()
    try:
        asyncio.run(produce(kafka_bootstrap, f"tx-{suffix}", records))
        worker.wait_for("driftline_events_valid_total", 500, source="tx")
        expected = sum(amounts) / len(amounts)
        deadline = time.monotonic() + 30
        while True:
            got = worker.metric_sum("driftline_drift_recent_mean", monitor="user-sum")
            if got == pytest.approx(expected, rel=1e-9):
                break
            assert time.monotonic() < deadline, (got, expected, worker.log()[-3000:])
            time.sleep(0.3)
        assert worker.metric_sum("driftline_drift_warming_up", monitor="user-sum") == 0
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.kill()
