"""Prometheus config, alert rules and their unit tests: structure and promtool.

promtool comes from Debian's prometheus package (``ops/ci-extras.sh``); without
it the promtool checks skip on a developer's machine and fail in CI.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from typing import Any

import pytest

from tests.ops.support import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    RULES_FILE,
    RULES_TEST_FILE,
    alert_rules,
    load_yaml,
    require_tool,
)

EXPECTED_ALERTS = {
    "WorkerDown",
    "WorkerNotReady",
    "ConsumerStalled",
    "DeadLetterRateHigh",
    "RedisWriteErrors",
    "EffectStuck",
    "BrokerFetchStalled",
    "WorkerRestarting",
    "FeatureFreshnessTooOld",
    "DriftIncidentOpen",
    "DriftIncidentOpened",
    "DataQualityMissingRateHigh",
    "DataQualityViolationsHigh",
    "DuplicateEventsHigh",
    "DuplicateCheckMemoryFull",
    "EventTimeLagHigh",
    "ArchiveStalled",
}
SEVERITIES = {"critical", "warning"}
#: The runbook: a section per alert, which its `runbook` annotation links to.
RUNBOOK = "docs/runbook.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR
    )


def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # the rules are loaded through the config's rule_files glob
    assert str(RULES_FILE.relative_to(PROMETHEUS_DIR)) in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_targets_the_worker_job() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "driftline" in jobs, "the alert rules select job=driftline"
    assert "driftline-archive" in jobs, "the archive's rules select job=driftline-archive"
    assert jobs["driftline"].get("metrics_path", "/metrics") == "/metrics"
    rule_files = [PROMETHEUS_DIR / pattern for pattern in config["rule_files"]]
    matched = {p for pattern in rule_files for p in pattern.parent.glob(pattern.name)}
    assert RULES_FILE in matched


def test_every_rule_is_annotated_and_has_a_severity() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    runbook = (ROOT / RUNBOOK).read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^## (.+)$", runbook, re.M)
    }
    for rule in rules:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{name}: no {key} annotation"
        link, _, anchor = annotations["runbook"].partition("#")
        assert link == RUNBOOK and anchor == name.lower() and anchor in anchors, (
            f"{name}: runbook {annotations['runbook']!r} is not its section of {RUNBOOK}"
        )
        # each rule selects the job of the program it watches (as prometheus.yml names them)
        job = "driftline-archive" if name.startswith("Archive") else "driftline"
        assert f'job="{job}"' in rule["expr"], f"{name}: select job={job}"


def test_unit_tests_cover_firing_and_not_firing_for_every_rule() -> None:
    spec: dict[str, Any] = load_yaml(RULES_TEST_FILE)
    assert [(RULES_TEST_FILE.parent / f).resolve() for f in spec["rule_files"]] == [RULES_FILE]
    seen: dict[str, set[str]] = defaultdict(set)
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            seen[case["alertname"]].add("firing" if case.get("exp_alerts") else "not firing")
    missing = {
        name: {"firing", "not firing"} - seen.get(name, set())
        for name in EXPECTED_ALERTS
        if seen.get(name) != {"firing", "not firing"}
    }
    assert not missing, f"alerts without a firing / not-firing test: {missing}"


@pytest.mark.parametrize("path", [PROMETHEUS_CONFIG, RULES_FILE, RULES_TEST_FILE])
def test_yaml_is_tidy(path: Any) -> None:
    text = path.read_text(encoding="utf-8")
    assert "\t" not in text and text.endswith("\n") and not text.endswith("\n\n"), path
    assert all(line == line.rstrip() for line in text.splitlines()), f"{path}: trailing spaces"
