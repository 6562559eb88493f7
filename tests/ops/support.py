"""What the ops tests share: paths, external tools, and PromQL pulled out of our files.

The dashboards and alert rules are checked against the worker's metric
catalogue (``sinks/metrics.py``) statically and against a live worker, so the
PromQL they contain is extracted once here: every panel target, every
template-variable query and every rule expression.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from driftline.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS_DIR = OPS / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_FILE = PROMETHEUS_DIR / "rules" / "driftline.yml"
RULES_TEST_FILE = PROMETHEUS_DIR / "tests" / "driftline_test.yml"
DASHBOARDS_DIR = OPS / "grafana" / "dashboards"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = OPS / "compose" / "driftline.yaml"
DOCKERFILE = ROOT / "Dockerfile"
K8S_DIR = OPS / "k8s"
CONTRACTS = ROOT / "schemas" / "contracts"
#: Where the Dockerfile puts ``schemas/contracts`` in the image.
IMAGE_CONTRACTS = "/opt/driftline/contracts"

#: Grafana's variables, replaced by what selects everything (PromQL regexes) or a
#: fixed range, so a dashboard query can be sent to Prometheus as is.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$instance": ".*",
    "$source": ".*",
    "$monitor": ".*",
    "$segment": ".*",
}

METRIC_NAME = re.compile(r"\bdriftline_[a-z0-9_]+\b")
#: A driftline metric or ``up`` with its label matchers, e.g. ``up{job="driftline"}``.
SELECTOR = re.compile(r'\b(driftline_[a-z0-9_]+|up)\b(\{(?:[^}"]|"[^"]*")*\})?')
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$", re.S)


def require_tool(name: str) -> str:
    """Path of ``name``; skip when missing, but fail in CI (which installs it)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = (
        f"{name} is not on PATH: install Debian's prometheus package "
        "(bash ops/ci-extras.sh does it as root)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this check", pytrace=False)
    pytest.skip(reason)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from (for messages)."""

    where: str
    expr: str
    #: a Grafana template-variable query (``label_values(selector, label)``)
    variable: bool = False

    def promql(self) -> str:
        """The expression Prometheus can run: Grafana variables replaced, and a
        ``label_values(selector, label)`` reduced to its selector."""
        expr = self.expr
        for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(name, value)
        expr = expr.replace("${", "$")  # ${source} -> $source, already replaced
        if self.variable:
            match = LABEL_VALUES.match(expr.strip())
            assert match, f"{self.where}: expected label_values(selector, label), got {expr!r}"
            expr = match.group(1)
        assert "$" not in expr, f"{self.where}: unknown Grafana variable in {expr!r}"
        return expr


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def iter_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(iter_panels(panel.get("panels", [])))
    return out


def dashboard_queries() -> list[Query]:
    queries: list[Query] = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            query = var.get("query")
            expr = query.get("query") if isinstance(query, dict) else query
            queries.append(Query(f"{path.name} variable {var['name']}", str(expr), variable=True))
        for panel in iter_panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                queries.append(
                    Query(
                        f"{path.name} panel {panel.get('title')!r} {target.get('refId')}",
                        target["expr"],
                    )
                )
    return queries


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(RULES_FILE)["groups"]:
        rules.extend(group["rules"])
    return rules


def rule_queries() -> list[Query]:
    return [
        Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in alert_rules()
    ]


def all_queries() -> list[Query]:
    return dashboard_queries() + rule_queries()


def metric_names(queries: list[Query]) -> set[str]:
    return {name for q in queries for name in METRIC_NAME.findall(q.expr)}


def selectors(queries: list[Query]) -> set[str]:
    """Every ``metric{matchers}`` in the queries, Grafana variables replaced."""
    return {m.group(0) for q in queries for m in SELECTOR.finditer(q.promql())}


def settings_key(variable: str) -> str | None:
    """``section.key`` of a ``DRIFTLINE_SECTION__KEY`` variable, or None if no such setting."""
    assert variable.startswith("DRIFTLINE_"), variable
    parts = variable.removeprefix("DRIFTLINE_").lower().split("__")
    if len(parts) == 1:
        return parts[0] if parts[0] in Settings.model_fields else None
    if len(parts) != 2 or parts[0] not in Settings.model_fields:
        return None
    section, key = parts
    model = Settings.model_fields[section].annotation
    if isinstance(model, type) and issubclass(model, BaseModel) and key in model.model_fields:
        return f"{section}.{key}"
    return None


def image_config_to_local(config_text: str) -> str:
    """A config written for the image, with its contract paths mapped to the repo."""
    return config_text.replace(IMAGE_CONTRACTS + "/", str(CONTRACTS) + "/")


_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}``, with the default (the test's environment is not the user's)."""
    return _DEFAULT.sub(lambda m: m.group(2) or "", value)
