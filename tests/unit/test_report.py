"""``driftline monitors report``: one self-contained page, baseline against current."""

from __future__ import annotations

import re

from driftline.drift import SegmentedMonitor
from driftline.streams.cli.report import report_html
from tests.unit.drift.streams import make_config, normal, shifted


def test_a_report_shows_every_segment_and_needs_no_network() -> None:
    config = make_config(segment_by="country", warmup=500)
    monitor = SegmentedMonitor(config)
    for i, x in enumerate(shifted(normal(1, 3000), 2000, shift=2.0)):
        monitor.update(x, segment="fr", event_time_ms=i)
    for i, x in enumerate(normal(2, 800)):
        monitor.update(x, segment="de", event_time_ms=i)
    page = report_html("amount", config, monitor)
    assert page.startswith("<!doctype html>") and "Drift monitor amount" in page
    # the segment with the open incident comes first, then the quiet one
    assert page.index("segment fr") < page.index("segment de")
    assert "Open incident" in page and "amount/fr/1-" in page and "No open incident" in page
    assert page.count("baseline vs current") == 2
    # plotly.js is in the page, once; nothing is fetched from elsewhere
    assert page.count("Plotly.newPlot") == 2
    assert not re.search(r"<script[^>]+src=", page)
    assert len(page) < 10 * 2**20
