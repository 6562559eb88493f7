"""``driftline monitors report NAME``: one self-contained HTML page of a monitor, per segment.

From what the monitor keeps in its checkpoint: the baseline (the reference
sample, the values the incident is judged against) and the current values
(the last ``recent_window``), as overlaid histograms and as a quantile plot
(baseline quantiles against current ones: a line of slope 1 through 0 when
nothing changed), the recent values in arrival order with the incident's
estimated change start marked, and the incident's figures.  Plotly draws it;
its JavaScript is embedded in the page, so the page opens offline (no
network access, no CDN).  Plotly is an optional dependency: ``pip install
'driftline[report]'``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from driftline.drift import MonitorConfig, SegmentedMonitor
from driftline.drift.monitor import Monitor
from driftline.drift.status import QUANTILES, distribution, quantile
from driftline.streams.errors import DriftlineError

#: Quantiles drawn in the quantile plot.
_QQ = [i / 100 for i in range(1, 100)]


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise DriftlineError(
            "the drift report draws with plotly, which is not installed: "
            "pip install 'driftline[report]'"
        ) from None
    return go


def segment_figure(monitor: Monitor, name: str) -> Any:
    """Histograms, quantile plot and recent values of one segment, as one figure."""
    go = _plotly()
    from plotly.subplots import make_subplots

    baseline = sorted(monitor.reference_sample)
    recent = list(monitor.recent_values)
    current = sorted(recent)
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("baseline vs current", "quantiles (baseline → current)", "recent values"),
    )
    fig.add_trace(
        go.Histogram(x=baseline, name="baseline", histnorm="probability density", opacity=0.6),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Histogram(x=current, name="current", histnorm="probability density", opacity=0.6),
        row=1,
        col=1,
    )
    if baseline and current:
        xs = [quantile(baseline, q) for q in _QQ]
        ys = [quantile(current, q) for q in _QQ]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="quantiles"), row=1, col=2)
        low, high = min(xs[0] or 0, ys[0] or 0), max(xs[-1] or 0, ys[-1] or 0)
        fig.add_trace(
            go.Scatter(x=[low, high], y=[low, high], mode="lines", name="no change"),
            row=1,
            col=2,
        )
    first_index = monitor.n_values - len(recent) + 1
    fig.add_trace(
        go.Scatter(
            x=list(range(first_index, monitor.n_values + 1)), y=recent, mode="lines",
            name="recent values",
        ),
        row=1,
        col=3,
    )  # fmt: skip
    incident = monitor.incident_summary
    start = monitor.incident_change_start
    if incident is not None and start is not None and start >= first_index:
        fig.add_vline(x=start, line_dash="dash", row=1, col=3)  # the estimated change start
    fig.update_layout(
        title=f"{html.escape(name)} [{html.escape(str(monitor.segment))}]: {monitor.phase}",
        barmode="overlay",
        height=420,
    )
    return fig


def _summary(monitor: Monitor) -> str:
    rows = []
    for label, values in (
        ("baseline", monitor.reference_sample),
        ("current", monitor.recent_values),
    ):
        d = distribution(values) if values else None
        cells = (
            [d["mean"], d["std"], d["n"]] + [d[f"p{round(q * 100):02d}"] for q in QUANTILES]
            if d
            else ["-"] * (3 + len(QUANTILES))
        )
        rows.append(
            "<tr><th>" + label + "</th>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>"
        )
    incident = monitor.incident_summary
    said = (
        f"<p><b>Open incident</b> {html.escape(incident['incident_id'])}: "
        f"{incident['severity']}, {incident['detections']} detections "
        f"({html.escape(', '.join(incident['detectors']))}), since event time "
        f"{incident['opened_event_time_ms']} ms.</p>"
        if incident
        else "<p>No open incident.</p>"
    )
    head = "".join(f"<th>p{round(q * 100):02d}</th>" for q in QUANTILES)
    return (
        f"{said}<table><tr><th></th><th>mean</th><th>sd</th><th>n</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def report_html(name: str, config: MonitorConfig, monitor: SegmentedMonitor) -> str:
    """The whole page: one section per segment, open incidents first; plotly.js inline once."""
    segments = sorted(
        monitor.monitors.values(), key=lambda m: (m.incident_summary is None, str(m.segment))
    )
    parts = []
    for i, single in enumerate(segments):
        figure = segment_figure(single, name).to_html(full_html=False, include_plotlyjs=(i == 0))
        parts.append(
            f"<section><h2>segment {html.escape(str(single.segment))}</h2>"
            f"{_summary(single)}{figure}</section>"
        )
    body = "".join(parts) or "<p>No values yet.</p>"
    watched = html.escape(config.watched)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>driftline drift report: {html.escape(name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse}"
        " td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>Drift monitor {html.escape(name)}</h1><p>{html.escape(config.source)}.{watched}; "
        f"warm-up {config.warmup} values; detectors {', '.join(config.detectors)}</p>"
        f"{body}</body></html>"
    )


def write_report(path: Path, page: str) -> str:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise DriftlineError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
    return f"wrote {path} ({len(page) // 1024} KiB; opens offline in a browser)"
