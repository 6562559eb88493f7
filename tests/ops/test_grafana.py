"""Grafana provisioning and dashboards, and the metric names of dashboards and rules.

No Grafana runs here: the dashboards are checked as JSON (ids, data sources,
variables, layout) and every metric they or the alert rules use is checked
against the worker's metric catalogue (``sinks/metrics.py``).  That a real
worker exports them, and that Prometheus accepts every query, is
``test_live_metrics.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from driftline.sinks.metrics import ArchiveMetrics, WorkerMetrics
from tests.ops.support import (
    COMPOSE_FILE,
    DASHBOARDS_DIR,
    OPS,
    ROOT,
    dashboard_files,
    dashboard_queries,
    iter_panels,
    load_dashboard,
    load_yaml,
    metric_names,
    rule_queries,
)

DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "driftline.yml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
PANELS_WITHOUT_QUERIES = {"row", "text"}
#: Metric families the dashboards must show (metrics added to the catalogue
#: later are not required here until a dashboard panel is designed for them).
ON_DASHBOARDS = {
    "driftline_events_consumed",
    "driftline_events_valid",
    "driftline_events_invalid",
    "driftline_events_replayed",
    "driftline_dead_letter_writes",
    "driftline_batch_size_events",
    "driftline_batch_processing_seconds",
    "driftline_redis_write_seconds",
    "driftline_effect_errors",
    "driftline_effect_pending_age_seconds",
    "driftline_fetch_age_seconds",
    "driftline_event_time_lag_seconds",
    "driftline_processing_latency_seconds",
    "driftline_feature_freshness_seconds",
    "driftline_consumer_lag_records",
    "driftline_applied_offset",
    "driftline_worker_up",
    "driftline_assigned_partitions",
    "driftline_rebalances",
    "driftline_drift_alerts",
    "driftline_drift_detections",
    "driftline_drift_incident_open",
    "driftline_drift_warming_up",
    "driftline_drift_reference_mean",
    "driftline_drift_recent_mean",
    "driftline_drift_last_detection_timestamp_seconds",
    "driftline_build",
    "driftline_quality_events",
    "driftline_quality_missing",
    "driftline_quality_missing_ratio_limit",
    "driftline_quality_violations",
    "driftline_quality_duplicates",
    "driftline_quality_dedup_ids",
    "driftline_quality_dedup_evicted",
}


def exported_names() -> set[str]:
    """Sample names the worker and the archiver can export, from the catalogue (none observed yet)."""
    registry = CollectorRegistry()
    WorkerMetrics(["source"], registry=registry)
    ArchiveMetrics(registry=registry)
    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "info": ["_info"],
    }
    return {
        family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]
    }


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE_FILE)["services"]
    return services


def grafana_mounts() -> dict[Path, str]:
    """Host path -> container path of the grafana service's bind mounts."""
    out = {}
    for volume in compose_services()["grafana"]["volumes"]:
        host, container = volume.split(":")[:2]
        out[(ROOT / host).resolve()] = container
    return out


def test_metrics_of_dashboards_and_rules_are_in_the_catalogue() -> None:
    known = exported_names()
    used = metric_names(dashboard_queries() + rule_queries())
    assert used, "no metric found in the dashboards and rules"
    unknown = sorted(used - known)
    assert not unknown, f"not exported by sinks/metrics.py: {unknown}"


def test_dashboards_show_the_pipeline_feature_and_drift_metrics() -> None:
    used = metric_names(dashboard_queries())
    families = {re.sub(r"_(total|bucket|sum|count|info)$", "", name) for name in used}
    missing = sorted(ON_DASHBOARDS - families)
    assert not missing, f"metrics no dashboard shows: {missing}"


def test_datasource_points_at_the_compose_prometheus() -> None:
    datasources = load_yaml(DATASOURCES)["datasources"]
    [prometheus] = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["uid"] == "prometheus" and prometheus["access"] == "proxy"
    host, port = prometheus["url"].removeprefix("http://").split(":")
    service = compose_services()[host]
    assert service["image"].startswith("prom/prometheus:")
    assert any(str(p).endswith(f":{port}") for p in service["ports"])


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    [provider] = load_yaml(PROVIDERS)["providers"]
    mounts = grafana_mounts()
    assert mounts[DASHBOARDS_DIR.resolve()] == provider["options"]["path"]
    assert mounts[(OPS / "grafana" / "provisioning").resolve()] == "/etc/grafana/provisioning"
    home = compose_services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, _, name = home.rpartition("/")
    assert directory == provider["options"]["path"] and (DASHBOARDS_DIR / name).is_file()


def test_dashboards_are_distinct() -> None:
    files = dashboard_files()
    assert {p.stem for p in files} >= {"pipeline", "features", "drift", "quality"}
    uids = [load_dashboard(p)["uid"] for p in files]
    titles = [load_dashboard(p)["title"] for p in files]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    dashboard = json.loads(text)
    assert text == json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n", "not tidy JSON"
    assert dashboard["uid"].startswith("driftline-") and "driftline" in dashboard["tags"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, var in variables.items():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE_REF, name

    panels = iter_panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    for panel in panels:
        where = f"{path.name}: panel {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
        if panel["type"] in PANELS_WITHOUT_QUERIES:
            continue
        assert panel.get("description"), f"{where}: say what it shows"
        assert panel["datasource"] == DATASOURCE_REF, where
        targets = panel["targets"]
        assert targets, f"{where}: no query"
        assert len({t["refId"] for t in targets}) == len(targets), f"{where}: refIds"
        for target in targets:
            assert target["datasource"] == DATASOURCE_REF, where
            assert 'job="driftline"' in target["expr"], f"{where}: select job=driftline"
            used = set(VARIABLE.findall(target["expr"])) - BUILTIN_VARIABLES
            assert used <= set(variables), f"{where}: undefined variables {used - set(variables)}"
    # panels do not overlap
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{path.name}: panel {panel.get('title')!r} overlaps another"
        cells |= area
