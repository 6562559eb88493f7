"""Dashboards and alert rules against a real worker and a real Prometheus.

One worker (module-scoped) runs against the session's broker and Redis with
two sources: ``tx`` gets demo traffic from ``ops/compose/demo_producer.py``
(valid and broken records, so reason series exist) and feeds a feature group;
``scores`` feeds a drift monitor (warm-up 500, then 1,000 stable values, then
a shift of 1.5 reference sd, as in ``tests/e2e/test_drift_e2e.py``).

* Every metric the dashboards and rules name must be in the worker's /metrics.
* Prometheus (Debian's package; skipped without it, failed in CI) scrapes the
  worker every second with the rules loaded; every dashboard and rule query
  must evaluate without error, every selector in them must match a series, and
  after the shift DriftIncidentOpen must be pending or firing.
* DriftIncidentOpen then stays firing until ``driftline monitors accept``
  closes the incident, and DriftIncidentOpened follows it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_archive import ArchiveProcess
from tests.e2e.test_drift_e2e import stream
from tests.e2e.test_worker_e2e import produce
from tests.ops import conftest
from tests.ops.prometheus import PrometheusAPI, prometheus_server
from tests.ops.support import (
    OPS,
    ROOT,
    Query,
    all_queries,
    dashboard_queries,
    metric_names,
    require_tool,
    rule_queries,
    selectors,
)
from tests.worker_process import CONTRACTS, WorkerProcess, run_cli

pytestmark = pytest.mark.slow

DEMO_PRODUCER = OPS / "compose" / "demo_producer.py"
RANGE_FUNCTIONS = ("rate(", "increase(")


@dataclass
class LiveWorker:
    worker: WorkerProcess
    archive: ArchiveProcess
    bootstrap: str
    tx_topic: str
    scores_topic: str
    start_ms: int
    shifted: bool = False

    def send_demo(self, count: int) -> None:
        """Demo transactions (20 % broken) through the compose stack's producer script."""
        before = self.worker.metric_sum("driftline_events_consumed_total", source="tx")
        result = subprocess.run(
            [
                sys.executable,
                str(DEMO_PRODUCER),
                f"--bootstrap={self.bootstrap}",
                f"--topic={self.tx_topic}",
                "--rate=0",
                f"--count={count}",
                "--invalid-ratio=0.2",
                "--max-event-bytes=4096",
                "--wait-topic-s=30",
                f"--seed={count}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"done: sent {count} events" in result.stdout, result.stdout
        self.worker.wait_for("driftline_events_consumed_total", before + count, source="tx")

    def shift(self) -> None:
        """Move the monitored values by 1.5 reference sd; wait for the incident (once)."""
        if self.shifted:
            return
        records = stream(400, 115.0, 2, self.start_ms + 1500)
        asyncio.run(produce(self.bootstrap, self.scores_topic, records))
        self.worker.wait_for("driftline_drift_alerts_total", 1, monitor="scores", kind="opened")
        self.shifted = True


def live_config(bootstrap: str, redis_url: str, suffix: str) -> dict[str, Any]:
    source = {
        "schema": str(CONTRACTS / "transactions.schema.json"),
        "entity_key": "user_id",
        "event_time": "event_time",
        "max_event_bytes": 4096,
    }
    return {
        "app_id": f"ops-{suffix}",
        "kafka": {
            "bootstrap_servers": bootstrap,
            "session_timeout_s": 6,
            "heartbeat_interval_s": 1,
            "rebalance_timeout_s": 5,
            "commit_interval_s": 1,
            "create_topics": True,
            "topic_partitions": 2,
        },
        "redis": {"url": redis_url, "key_prefix": f"ops-{suffix}"},
        "sources": [
            {
                "name": "tx",
                "topic": f"ops-tx-{suffix}",
                **source,
                "quality": {
                    "completeness": {"country": 0.05, "currency": 1.0},
                    "unique": {"field": "event_id", "horizon": "1h"},
                    "fields": {
                        "amount": {"min": 0, "max": 1000},
                        "category": {"allowed": ["fuel"]},
                    },
                },
            },
            {"name": "scores", "topic": f"ops-scores-{suffix}", **source},
        ],
        "feature_groups": [
            {
                "name": "spend",
                "version": 1,
                "source": "tx",
                "values": {"amount": ["count", "sum", "mean"]},
                "windows": ["5m", "1h"],
            }
        ],
        "drift": {"alerts_topic": f"ops-alerts-{suffix}"},
        "monitors": [{"name": "scores", "source": "scores", "field": "amount", "warmup": 500}],
    }


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, redis_url: str
) -> Iterator[LiveWorker]:
    suffix = uuid.uuid4().hex[:8]
    config = live_config(kafka_bootstrap, redis_url, suffix)
    config["offline"] = {"path": str(tmp_path_factory.mktemp("live-log")), "flush_interval_s": 0.5}
    worker = WorkerProcess(tmp_path_factory.mktemp("live-worker"), config).start()
    archive = ArchiveProcess(tmp_path_factory.mktemp("live-archive"), config).start()
    try:
        handle = LiveWorker(
            worker=worker,
            archive=archive,
            bootstrap=kafka_bootstrap,
            tx_topic=config["sources"][0]["topic"],
            scores_topic=config["sources"][1]["topic"],
            start_ms=int(time.time() * 1000) - 60_000,
        )
        handle.send_demo(300)
        # warm-up (500) and stable values (1,000): the monitor is armed, no incident
        asyncio.run(
            produce(kafka_bootstrap, handle.scores_topic, stream(1500, 100.0, 1, handle.start_ms))
        )
        worker.wait_for("driftline_events_valid_total", 1500, source="scores")
        yield handle
        assert worker.stop() == 0, worker.log()
        assert archive.stop() == 0, archive.log()
    finally:
        worker.kill()
        if archive.proc is not None and archive.proc.poll() is None:
            archive.kill()


def evaluate(api: PrometheusAPI, queries: list[Query]) -> tuple[list[str], list[Query]]:
    """(errors, queries with an empty result)."""
    errors, empty = [], []
    for q in queries:
        result, error = api.query(q.promql())
        if result is None:
            errors.append(f"{q.where}: {error}\n    {q.promql()}")
        elif not result:
            empty.append(q)
    return errors, empty


def drift_alert_states(api: PrometheusAPI) -> set[str]:
    return {
        a["state"]
        for a in api.alerts()
        if a["labels"].get("alertname") == "DriftIncidentOpen"
        and a["labels"].get("monitor") == "scores"
    }


def alert_states(api: PrometheusAPI, name: str) -> set[str]:
    return {
        a["state"]
        for a in api.alerts()
        if a["labels"].get("alertname") == name and a["labels"].get("monitor") == "scores"
    }


def test_prometheus_evaluates_every_query_and_raises_the_drift_alert(
    live: LiveWorker, tmp_path: Path
) -> None:
    with prometheus_server(tmp_path, live.worker.port, archive_port=live.archive.port) as api:
        api.wait(
            "worker scraped 3 times",
            lambda: api.value('count_over_time(up{job="driftline"}[1m])') >= 3,
        )
        api.wait(
            "archive scraped 3 times",
            lambda: api.value('count_over_time(up{job="driftline-archive"}[1m])') >= 3,
        )
        assert api.value('up{job="driftline"}') == 1
        # traffic while Prometheus watches, so rates are not all zero
        live.send_demo(200)

        errors, _ = evaluate(api, all_queries())
        assert not errors, "queries Prometheus refuses:\n" + "\n".join(errors)
        if not live.shifted:
            assert not drift_alert_states(api), "DriftIncidentOpen before any shift"

        live.shift()
        api.wait(
            "DriftIncidentOpen pending or firing",
            lambda: drift_alert_states(api) & {"pending", "firing"},
        )
        # two more scrapes, so the counters that appeared with the detection have a rate
        time.sleep(2.5)

        errors, empty = evaluate(api, all_queries())
        assert not errors, "queries Prometheus refuses:\n" + "\n".join(errors)
        rule_exprs = {q.expr for q in rule_queries()}
        unexplained = [
            q
            for q in empty
            if q.expr not in rule_exprs  # an alert condition that is false: fine
            and not any(f in q.expr for f in RANGE_FUNCTIONS)
        ]
        assert not unexplained, "dashboard queries with no data:\n" + "\n".join(
            f"{q.where}: {q.promql()}" for q in unexplained
        )
        for q in empty:
            if q.expr not in rule_exprs:
                conftest.NOTES.append(f"empty (rate over a range too short?): {q.where}")
        firing = sorted(
            a["labels"]["alertname"] for a in api.alerts() if a["state"] in ("pending", "firing")
        )
        conftest.NOTES.append(f"live Prometheus: alerts pending/firing at the end: {firing}")

        # every selector of the dashboards and rules matches a real series
        missing = []
        for selector in sorted(selectors(all_queries())):
            result, error = api.query(selector)
            if not result:
                missing.append(f"{selector} {error}")
        assert not missing, "selectors without series:\n" + "\n".join(missing)

        rules = api.get("/api/v1/rules")["data"]["groups"]
        unhealthy = [
            f"{r['name']}: {r.get('lastError')}"
            for g in rules
            for r in g["rules"]
            if r.get("health") != "ok"
        ]
        assert sum(len(g["rules"]) for g in rules) == len(rule_queries())
        assert not unhealthy, unhealthy

        # the incident is judged against the baseline: the alert does not go away by itself
        api.wait("DriftIncidentOpen firing", lambda: "firing" in drift_alert_states(api))
        seen = []
        for _ in range(10):
            seen.append(frozenset(drift_alert_states(api)))
            time.sleep(0.5)
        assert set(seen) == {frozenset({"firing"})}, seen
        assert not alert_states(api, "DriftIncidentOpened")  # open: DriftIncidentOpen's job
        accepted = run_cli("monitors", "accept", "scores", "-c", str(live.worker.config_path))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        api.wait("DriftIncidentOpen resolved", lambda: not drift_alert_states(api))
        # opened within 10 minutes and closed: the short-incident rule pages instead (the
        # counter of opened incidents starts at 0, so Prometheus sees its increase)
        api.wait(
            "DriftIncidentOpened firing",
            lambda: "firing" in alert_states(api, "DriftIncidentOpened"),
        )


def test_dashboards_and_rules_use_only_exported_metrics(live: LiveWorker) -> None:
    live.shift()  # drift counters and the last-detection gauge exist only after a detection
    status, text = live.worker.get("/metrics")
    assert status == 200, text
    with urllib.request.urlopen(f"http://127.0.0.1:{live.archive.port}/metrics") as response:
        archive_text = response.read().decode()
    exported = {
        s.name
        for t in (text, archive_text)
        for f in text_string_to_metric_families(t)
        for s in f.samples
    }
    for queries, what in ((dashboard_queries(), "dashboards"), (rule_queries(), "alert rules")):
        used = metric_names(queries)
        assert used, what
        missing = sorted(used - exported)
        assert not missing, f"{what} use metrics the worker does not export: {missing}"
    # the reason series the invalid demo records create
    reasons = {
        s.labels["reason"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "driftline_events_invalid_total" and s.value > 0
    }
    assert len(reasons) >= 3, reasons


def test_promtool_accepts_the_exposition(live: LiveWorker) -> None:
    """``promtool check metrics`` lints the worker's /metrics output."""
    binary = require_tool("promtool")
    status, text = live.worker.get("/metrics")
    assert status == 200
    result = subprocess.run(
        [binary, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
