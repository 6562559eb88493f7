"""A real Prometheus for tests: Debian's server scraping one target with the shipped rules."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from driftline.streams.local.ports import find_free_port
from tests.ops.support import RULES_FILE, require_tool


class PrometheusAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}") or {"status": "error", "error": str(exc)}
        return body

    def query(self, expr: str) -> tuple[list[Any] | None, str]:
        """(result, "") or (None, error)."""
        body = self.get("/api/v1/query", query=expr)
        if body.get("status") != "success":
            return None, f"{body.get('errorType')}: {body.get('error')}"
        result: list[Any] = body["data"]["result"]
        return result, ""

    def value(self, expr: str) -> float:
        result, error = self.query(expr)
        assert result is not None, error
        return float(result[0]["value"][1]) if result else float("nan")

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["data"]["alerts"]
        return alerts

    def wait(self, what: str, check: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"Prometheus: {what} after {timeout}s"
            time.sleep(0.5)


def rules_for_test(tmp_path: Path, drift_for: str = "1s") -> Path:
    """The shipped rules with DriftIncidentOpen's ``for`` cut to *drift_for*, so a test sees it soon."""
    rules = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "DriftIncidentOpen":
                rule["for"] = drift_for
    path = tmp_path / "driftline-rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@contextmanager
def prometheus_server(
    tmp_path: Path, worker_port: int, drift_for: str = "1s", archive_port: int | None = None
) -> Iterator[PrometheusAPI]:
    binary = require_tool("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_for_test(tmp_path, drift_for))],
        "scrape_configs": [
            {"job_name": "driftline", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}
        ],
    }
    if archive_port is not None:  # the job name the archive rules select
        config["scrape_configs"].append(
            {
                "job_name": "driftline-archive",
                "static_configs": [{"targets": [f"127.0.0.1:{archive_port}"]}],
            }
        )
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = find_free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"prometheus exited:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{api.base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
