"""What a monitor looks like to a person: phase, open incident, baseline against current.

``driftline monitors list`` prints this for every monitor and segment, read
from the checkpoints in Redis.  Pure: it reads a :class:`~driftline.drift.Monitor`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from driftline.drift.monitor import Monitor
from driftline.drift.segmented import SegmentedMonitor
from driftline.drift.stats import Stats

#: The quantiles shown of the baseline and of the current values.
QUANTILES = (0.05, 0.5, 0.95)
#: Incidents per 100k values from which ``monitors list`` asks whether the field
#: cycles: stationary fields give well under 1 (``bench/drift_quality.py``), a
#: daily cycle as large as the noise about 10 without ``season``.
CYCLE_HINT_PER_100K = 5.0
#: ... once the monitor has seen this many values (a rate of a few values is noise).
CYCLE_HINT_MIN_VALUES = 20_000


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values (linear between order statistics); None if empty."""
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sd, n and the QUANTILES of ``values`` (NaN-free: None when undefined)."""
    ordered = sorted(values)
    summary: dict[str, Any] = Stats.of(ordered).to_dict()
    for q in QUANTILES:
        summary[f"p{round(q * 100):02d}"] = quantile(ordered, q)
    return summary


def cycle_hint(monitor: Monitor) -> str | None:
    """Why the field may follow a cycle the monitor is not told about, or None."""
    n = monitor.n_values
    if monitor.config.season is not None or n < CYCLE_HINT_MIN_VALUES:
        return None
    rate = monitor.n_incidents / n * 1e5
    if rate < CYCLE_HINT_PER_100K:
        return None
    return (
        f"{monitor.n_incidents} incidents in {n} values ({rate:.0f} per 100k): if the field "
        "follows a daily or weekly cycle, set season (e.g. season: 1d)"
    )


def monitor_status(monitor: Monitor) -> dict[str, Any]:
    """One segment's state, JSON-ready."""
    return {
        "segment": monitor.segment,
        "phase": monitor.phase,
        "values": monitor.n_values,
        "incidents": monitor.n_incidents,
        "hint": cycle_hint(monitor),
        "incident": monitor.incident_summary,
        "baseline": distribution(monitor.reference_sample) if monitor.reference_sample else None,
        "current": distribution(monitor.recent_values),
    }


def segmented_status(monitor: SegmentedMonitor) -> list[dict[str, Any]]:
    """Every segment's state, open incidents first, then by segment name."""
    rows = [monitor_status(m) for m in monitor.monitors.values()]
    return sorted(rows, key=lambda r: (r["incident"] is None, str(r["segment"])))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def describe(name: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Human lines of one monitor's segments (see ``driftline monitors list``)."""
    if not rows:
        return [f"{name}: no values yet"]
    lines: list[str] = []
    for row in rows:
        head = f"{name} [{row['segment']}] {row['phase']}, {row['values']} values"
        incident = row["incident"]
        if incident is not None:
            head += (
                f"; INCIDENT {incident['incident_id']} ({incident['severity']}, "
                f"{incident['detections']} detections) since event time "
                f"{incident['opened_event_time_ms']} ms"
            )
        lines.append(head)
        if row.get("hint"):
            lines.append(f"  hint     {row['hint']}")
        for label in ("baseline", "current"):
            d = row[label]
            if d is None:
                lines.append(f"  {label:<8} (learning)")
                continue
            lines.append(
                f"  {label:<8} mean {_number(d['mean'])}  sd {_number(d['std'])}  n {d['n']}  "
                f"p05 {_number(d['p05'])}  p50 {_number(d['p50'])}  p95 {_number(d['p95'])}"
            )
    return lines
