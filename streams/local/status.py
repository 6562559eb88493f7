"""``driftline dev``'s status line, read from the worker's own ``/metrics``.

::

    [12:00:05] consumed 1200  valid 1176  dead-lettered 24 (malformed_json=24)  | user-00000 ...
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from driftline.features.state import FeatureVector


def scrape(url: str) -> dict[str, float]:
    """Sum of each counter over its labels, plus per-reason invalid counts."""
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("driftline_drift_") and not sample.name.endswith("_total"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
            if sample.name.endswith("_total"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
                if sample.name == "driftline_events_invalid_total" and sample.value:
                    key = f"invalid:{sample.labels.get('reason')}"
                    out[key] = out.get(key, 0.0) + sample.value
                if sample.name == "driftline_quality_missing_total" and sample.value:
                    key = f"missing:{sample.labels.get('field')}"
                    out[key] = out.get(key, 0.0) + sample.value
    return out


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def status_line(m: Mapping[str, float], vector: FeatureVector | None, *, monitors: bool) -> str:
    """One status line from scraped counters ``m`` and the demo entity's features ``vector``."""
    feature = ""
    if vector is not None:
        shown = [n for n in vector.values if n.endswith(("_count_5m", "_mean_5m"))][:2]
        feature = "  | user-00000 " + " ".join(f"{n}={_fmt(vector.values[n])}" for n in shown)
    if monitors:
        if m.get("driftline_drift_incident_open", 0) > 0:
            feature += "  | drift: INCIDENT OPEN"
        elif m.get("driftline_drift_warming_up", 1) > 0 or "driftline_drift_warming_up" not in m:
            feature += "  | drift: learning reference"
        else:
            feature += "  | drift: stable"
    checked = m.get("driftline_quality_events_total", 0)
    if checked:
        missing = [
            f"{k.split(':', 1)[1]} {100 * v / checked:.1f}%"
            for k, v in sorted(m.items())
            if k.startswith("missing:")
        ]
        feature += f"  | quality: {int(m.get('driftline_quality_duplicates_total', 0))} dup" + (
            f", missing {', '.join(missing)}" if missing else ""
        )
    reasons = ", ".join(
        f"{k.split(':', 1)[1]}={int(v)}" for k, v in sorted(m.items()) if k.startswith("invalid:")
    )
    return (
        f"[{time.strftime('%H:%M:%S')}]"
        f" consumed {int(m.get('driftline_events_consumed_total', 0))}"
        f"  valid {int(m.get('driftline_events_valid_total', 0))}"
        f"  dead-lettered {int(m.get('driftline_dead_letter_writes_total', 0))}"
        f"{' (' + reasons + ')' if reasons else ''}"
        f"{feature}"
    )
