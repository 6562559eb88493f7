"""SegmentedMonitor: routing, the overflow segment, events with bad values."""

from __future__ import annotations

import math

from driftline.drift import ALL_SEGMENT, MISSING_SEGMENT, OTHER_SEGMENT, SegmentedMonitor
from driftline.drift.segmented import segment_name
from tests.unit.drift.streams import make_config, normal, shifted


def test_without_segment_by_everything_is_one_segment() -> None:
    monitors = SegmentedMonitor(make_config())
    for i, country in enumerate(["fr", "de", None]):
        monitors.update_event({"amount": 1.0 * i, "country": country}, event_time_ms=i)
    assert list(monitors.monitors) == [ALL_SEGMENT]
    assert monitors.monitors[ALL_SEGMENT].n_values == 3


def test_segments_beyond_max_segments_share_other() -> None:
    monitors = SegmentedMonitor(make_config(segment_by="country", max_segments=2))
    keys = ["fr", "de", "it", "fr", None, "es", "de"]
    routed = []
    for i, key in enumerate(keys):
        routed.append(monitors.segment_for(key))
        monitors.update(float(i), segment=key, event_time_ms=i)
    assert routed == ["fr", "de", OTHER_SEGMENT, "fr", OTHER_SEGMENT, OTHER_SEGMENT, "de"]
    assert list(monitors.monitors) == ["fr", "de", OTHER_SEGMENT]
    assert {name: m.n_values for name, m in monitors.monitors.items()} == {
        "fr": 2,
        "de": 2,
        OTHER_SEGMENT: 3,
    }


def test_missing_segment_value_is_a_named_segment() -> None:
    monitors = SegmentedMonitor(make_config(segment_by="country"))
    monitors.update_event({"amount": 1.0}, event_time_ms=0)
    monitors.update_event({"amount": 2.0, "country": None}, event_time_ms=1)
    assert list(monitors.monitors) == [MISSING_SEGMENT]
    assert monitors.monitors[MISSING_SEGMENT].n_values == 2


def test_segment_names() -> None:
    assert [segment_name(v) for v in ["fr", 1, 1.0, "1", True, False, 2.5, None]] == [
        "fr",
        "1",
        "1",
        "1",
        "true",
        "false",
        "2.5",
        MISSING_SEGMENT,
    ]


def test_events_without_a_usable_value_are_skipped_and_counted() -> None:
    monitors = SegmentedMonitor(make_config())
    events: list[dict[str, object]] = [
        {"amount": 1},
        {"amount": 2.5},
        {},
        {"amount": None},
        {"amount": "3"},
        {"amount": True},
        {"amount": [1.0]},
        {"amount": math.nan},
        {"amount": 10**400},
    ]
    for i, event in enumerate(events):
        assert monitors.update_event(event, event_time_ms=i) == []
    assert monitors.monitors[ALL_SEGMENT].n_values == 2
    assert monitors.n_skipped_missing == 5
    assert monitors.n_skipped == 7  # NaN and the integer beyond float range too


def test_a_change_in_one_segment_alerts_only_that_segment() -> None:
    monitors = SegmentedMonitor(make_config(segment_by="country"))
    streams = {"fr": shifted(normal(31, 5000), 3000, shift=1.0), "de": normal(32, 5000)}
    alerts = []
    for i in range(5000):
        for country, values in streams.items():
            alerts += monitors.update_event(
                {"amount": values[i], "country": country}, event_time_ms=i
            )
    assert [(a.segment, a.kind) for a in alerts] == [("fr", "opened"), ("fr", "updated")]
    assert alerts[0].incident_id.startswith("amount/fr/1-")
    assert monitors.monitors["fr"].incident_open
    assert not monitors.monitors["de"].incident_open
