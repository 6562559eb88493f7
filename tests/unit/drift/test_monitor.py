"""Monitor behaviour on seeded streams, with exact detection indices.

Like River's detector tests, the indices below are what the current
detectors and defaults produce: a change here is a behaviour change to
explain (and to re-run ``bench/drift_quality.py`` for), not noise.  Every
stream changes at index 3000, i.e. 2,000 values after the warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.drift import Monitor
from tests.unit.drift.streams import feed, lognormal, make_config, normal, shifted, student_t3

AT = 3000
LOGNORMAL_SD = math.sqrt((math.e - 1) * math.e)

STREAMS: dict[str, Callable[[], list[float]]] = {
    "normal, mean +1 sd": lambda: shifted(normal(1, 8000), AT, shift=1.0),
    "normal, mean +0.5 sd": lambda: shifted(normal(2, 8000), AT, shift=0.5),
    "normal, sd x2": lambda: shifted(normal(3, 8000), AT, scale=2.0),
    "normal, sd /2": lambda: shifted(normal(3, 8000), AT, scale=0.5),
    "lognormal, mean +1 sd": lambda: shifted(lognormal(4, 8000), AT, shift=LOGNORMAL_SD),
    "t(3), sd x2": lambda: shifted(student_t3(5, 8000), AT, scale=2.0),
}


# (stream, detectors, every alert as (index, kind, reason, detector, statistic, severity))
# fmt: off
CASES = [
    ("normal, mean +1 sd", ("page_hinkley", "adwin"), [(3047, "opened", "detected", "page_hinkley", "location", "warning"), (3115, "updated", "escalated", "page_hinkley", "scale", "critical"), (6647, "closed", "accepted", "adwin", "scale", "critical")]),
    ("normal, mean +1 sd", ("page_hinkley",), [(3047, "opened", "detected", "page_hinkley", "location", "warning"), (3115, "updated", "escalated", "page_hinkley", "scale", "critical"), (6647, "closed", "accepted", "page_hinkley", "scale", "critical")]),
    ("normal, mean +1 sd", ("adwin",), [(3053, "opened", "detected", "adwin", "location", "warning"), (3127, "updated", "escalated", "adwin", "scale", "critical"), (6653, "closed", "accepted", "adwin", "scale", "critical")]),
    ("normal, mean +0.5 sd", ("page_hinkley", "adwin"), [(3126, "opened", "detected", "page_hinkley", "location", "warning"), (6726, "closed", "accepted", "adwin", "scale", "warning")]),
    ("normal, mean +0.5 sd", ("adwin",), [(3159, "opened", "detected", "adwin", "location", "warning"), (6759, "closed", "accepted", "adwin", "scale", "warning")]),
    ("normal, sd x2", ("page_hinkley", "adwin"), [(3033, "opened", "detected", "page_hinkley", "scale", "critical"), (6633, "closed", "accepted", "page_hinkley", "location", "critical")]),
    ("normal, sd x2", ("adwin",), [(3036, "opened", "detected", "adwin", "scale", "critical"), (6636, "closed", "accepted", "adwin", "scale", "critical")]),
    ("normal, sd /2", ("page_hinkley", "adwin"), [(3071, "opened", "detected", "page_hinkley", "scale", "critical"), (6671, "closed", "accepted", "adwin", "scale", "critical")]),
    ("lognormal, mean +1 sd", ("page_hinkley", "adwin"), [(3028, "opened", "detected", "adwin", "location", "critical"), (6628, "closed", "accepted", "adwin", "scale", "critical")]),
    ("lognormal, mean +1 sd", ("page_hinkley",), [(3029, "opened", "detected", "page_hinkley", "location", "critical"), (6629, "closed", "accepted", "page_hinkley", "scale", "critical")]),
    ("t(3), sd x2", ("page_hinkley", "adwin"), [(3107, "opened", "detected", "page_hinkley", "scale", "warning"), (6707, "closed", "accepted", "adwin", "scale", "warning")]),
    ("t(3), sd x2", ("adwin",), [(3135, "opened", "detected", "adwin", "scale", "warning"), (6735, "closed", "accepted", "adwin", "scale", "warning")]),
]
# fmt: on


@pytest.mark.parametrize(("stream", "detectors", "expected"), CASES)
def test_detection_indices(
    stream: str, detectors: tuple[str, ...], expected: list[tuple[object, ...]]
) -> None:
    alerts = feed(Monitor(make_config(detectors=list(detectors))), STREAMS[stream]())
    got = [(i, a.kind, a.reason, a.detector, a.statistic, a.severity) for i, a in alerts]
    assert got == expected


@pytest.mark.parametrize("draw", [normal, student_t3, lognormal])
def test_stationary_streams_raise_nothing(draw: Callable[[int, int], list[float]]) -> None:
    monitor = Monitor(make_config())
    assert feed(monitor, draw(7, 20_000)) == []
    assert monitor.phase == "monitoring"
    assert monitor.n_values == 20_000


def test_no_alert_during_warmup_even_for_a_huge_change() -> None:
    monitor = Monitor(make_config(warmup=1000))
    values = normal(8, 500) + normal(9, 500, mean=50.0)
    for i, value in enumerate(values):
        assert monitor.warming_up
        assert monitor.reference_stats is None
        assert monitor.update(value, event_time_ms=i) == []
    assert not monitor.warming_up
    assert monitor.phase == "monitoring"
    reference = monitor.reference_stats
    assert reference is not None and reference.n == 1000


def test_a_lasting_change_stays_open_against_the_baseline_until_accepted() -> None:
    monitor = Monitor(make_config(accept_after=None))
    values = shifted(normal(1, 12_000), AT, shift=1.0)
    alerts = feed(monitor, values, start=0)
    assert [(i, a.kind, a.reason) for i, a in alerts] == [
        (3047, "opened", "detected"),
        (3115, "updated", "escalated"),
    ]
    assert alerts[0][1].incident_id == "amount/__all__/1-3047000"
    # 9,000 changed values later: still one open incident, judged against the baseline
    assert (monitor.phase, monitor.incident_id) == ("incident", "amount/__all__/1-3047000")
    baseline = monitor.reference_stats
    assert baseline is not None and abs(baseline.mean) < 0.1
    closed = monitor.accept(event_time_ms=12_000_000)
    assert closed is not None and (closed.kind, closed.reason) == ("closed", "accepted")
    assert closed.incident_id == alerts[0][1].incident_id
    # detections were folded into the incident without alerts (Page-Hinkley and
    # ADWIN adapt to a level shift, so quiet windows that do not fit the baseline
    # are what keep it open)
    assert closed.detections > len(alerts) + 1
    assert closed.detectors == (
        "adwin/location",
        "adwin/scale",
        "page_hinkley/location",
        "page_hinkley/scale",
    )
    assert closed.mean_shift_sd is not None and 0.8 < closed.mean_shift_sd < 1.2
    # the newest values are the new normal: nothing more to say about them
    assert (monitor.phase, monitor.incident_open) == ("monitoring", False)
    reference = monitor.reference_stats
    assert reference is not None and reference.mean == pytest.approx(1.0, abs=0.1)
    assert feed(monitor, shifted(normal(11, 5000), 0, shift=1.0)) == []
    assert monitor.accept(event_time_ms=0) is None  # nothing open


def test_accept_after_counts_event_time_not_values() -> None:
    values = shifted(normal(1, 8000), AT, shift=1.0)
    monitor = Monitor(make_config(accept_after="30m"))
    alerts = [
        (i, a.kind, a.reason)
        for i, value in enumerate(values)
        for a in monitor.update(value, event_time_ms=500 * i)  # two values a second
    ]
    # 30 minutes of event time after the detection is 3,600 values here
    assert alerts == [
        (3047, "opened", "detected"),
        (3115, "updated", "escalated"),
        (3047 + 3600, "closed", "accepted"),
    ]


def test_a_short_incident_accepted_relearns_before_monitoring_again() -> None:
    monitor = Monitor(make_config(accept_after=None))
    values = shifted(normal(1, 8000), AT, shift=1.0)
    feed(monitor, values[:3400])
    assert monitor.phase == "incident"
    closed = monitor.accept(event_time_ms=3_400_000)
    assert closed is not None and closed.reason == "accepted"
    # 353 values since the detection: not enough for a reference of 1,000
    assert (monitor.phase, monitor.reference_stats) == ("relearning", None)
    assert feed(monitor, values[: 3400 + 646], start=3400) == []
    assert monitor.phase == "relearning"
    assert feed(monitor, values[: 3400 + 647], start=3400 + 646) == []
    assert monitor.phase == "monitoring"
    reference = monitor.reference_stats
    assert reference is not None and reference.n == 1000
    assert reference.mean == pytest.approx(1.0, abs=0.1)


def test_a_later_change_opens_a_new_incident() -> None:
    values = shifted(shifted(normal(10, 12_000), AT, shift=1.0), 8000, shift=-2.0)
    alerts = feed(Monitor(make_config()), values)
    assert [(i, a.kind, a.reason, a.incident_id) for i, a in alerts] == [
        (3035, "opened", "detected", "amount/__all__/1-3035000"),
        (3098, "updated", "escalated", "amount/__all__/1-3035000"),
        (6635, "closed", "accepted", "amount/__all__/1-3035000"),
        (8016, "opened", "detected", "amount/__all__/2-8016000"),  # against the accepted +1
        (11616, "closed", "accepted", "amount/__all__/2-8016000"),
    ]


def test_gradual_drift_is_one_incident_for_its_whole_ramp() -> None:
    # the mean rises by 3 sd over 6000 values, then stays
    values = [x + min(max(i - AT, 0), 6000) / 6000 * 3.0 for i, x in enumerate(normal(8, 16_000))]
    monitor = Monitor(make_config(accept_after=None))
    alerts = feed(monitor, values)
    assert [(i, a.kind, a.reason) for i, a in alerts] == [
        (3580, "opened", "detected"),
        (5800, "updated", "escalated"),
    ]
    assert monitor.incident_open  # it never fitted the baseline again


def test_the_clock_accepts_a_ramp_once_it_has_ended_not_half_way() -> None:
    # the same ramp with the default accept_after (1 h = 3,600 values here): it is
    # accepted only once the newest 1,000 values agree with the 1,000 before them
    values = [x + min(max(i - AT, 0), 6000) / 6000 * 3.0 for i, x in enumerate(normal(8, 16_000))]
    monitor = Monitor(make_config())
    assert [(i, a.kind, a.reason) for i, a in feed(monitor, values)] == [
        (3580, "opened", "detected"),
        (5800, "updated", "escalated"),
        (10345, "closed", "accepted"),  # the ramp ended at 9000
    ]
    reference = monitor.reference_stats
    assert reference is not None and reference.mean == pytest.approx(3.0, abs=0.1)


def test_a_short_blip_closes_when_the_stream_is_back_at_the_baseline() -> None:
    values = [x + (3.0 if AT <= i < AT + 100 else 0.0) for i, x in enumerate(normal(9, 8000))]
    monitor = Monitor(make_config())
    alerts = feed(monitor, values)
    assert [(i, a.kind, a.reason) for i, a in alerts] == [
        (3009, "opened", "detected"),
        (4115, "closed", "recovered"),  # 1,000 quiet values that fit the baseline
    ]
    reference = monitor.reference_stats
    assert reference is not None and reference.n == 1000 and abs(reference.mean) < 0.1
    assert feed(monitor, values, start=4116) == []


def test_alert_content() -> None:
    values = shifted(normal(1, 8000), AT, shift=1.0)
    alerts = feed(Monitor(make_config()), values)
    (_, opened), (_, updated), (_, closed) = alerts
    assert (opened.monitor, opened.source, opened.field, opened.segment) == (
        "amount",
        "tx",
        "amount",
        "__all__",
    )
    assert (opened.event_time_ms, opened.value_index) == (3_047_000, 3048)
    assert (opened.first_offset, opened.last_offset) == (3047, 3047)
    assert (updated.first_offset, updated.last_offset) == (3047, 3115)
    assert (closed.first_offset, closed.last_offset, closed.value_index) == (3047, 6647, 6648)
    assert closed.opened_value_index == opened.opened_value_index == 3048
    assert abs(opened.change_start_index - (AT + 1)) <= 15
    assert opened.reference.n == 1000
    assert abs(opened.reference.mean) < 0.1 and abs(opened.reference.std - 1) < 0.1
    assert closed.reference == opened.reference  # the baseline, for the whole incident
    assert opened.current.n == 3048 - opened.change_start_index + 1
    assert opened.mean_shift_sd is not None and 0.7 < opened.mean_shift_sd < 1.3
    assert updated.mean_shift_sd is not None and updated.mean_shift_sd >= 1.0
    assert closed.current.n == 500  # recent_window
    assert closed.mean_shift_sd is not None and 0.8 < closed.mean_shift_sd < 1.2
    assert closed.sd_ratio is not None and abs(closed.sd_ratio - 1) < 0.15


def test_skip_first_neither_learns_nor_scores_the_first_stretch_of_event_time() -> None:
    # a rising partial window (its first 10 s), then the stationary stream
    values = [i / 100 for i in range(100)] + normal(3, 4000)
    monitor = Monitor(make_config(skip_first="10s"))
    alerts = [a for i, v in enumerate(values) for a in monitor.update(v, event_time_ms=100 * i)]
    assert (monitor.n_filling, monitor.n_values) == (100, 4000)
    assert alerts == []
    reference = monitor.reference_stats
    assert reference is not None and abs(reference.mean) < 0.1  # learned from the filled part
    # the same stream monitored from the first value learns the ramp into its reference
    plain = Monitor(make_config())
    for i, v in enumerate(values):
        plain.update(v, event_time_ms=100 * i)
    assert plain.n_filling == 0 and plain.n_values == 4100


def test_skip_first_restarts_exactly_mid_way() -> None:
    values = [i / 100 for i in range(100)] + normal(3, 2000)
    config = make_config(skip_first="10s")
    first = Monitor(config)
    for i, v in enumerate(values[:50]):
        first.update(v, event_time_ms=100 * i)
    restored = Monitor.from_state(first.to_state(), config=config)
    for monitor in (first, restored):
        for i, v in enumerate(values[50:], start=50):
            monitor.update(v, event_time_ms=100 * i)
    assert restored.to_state() == first.to_state()
    assert (restored.n_filling, restored.n_values) == (100, 2000)


def test_non_finite_values_are_skipped_and_counted() -> None:
    values = shifted(normal(1, 4000), AT, shift=1.0)
    with_gaps: list[float] = []
    for i, x in enumerate(values):
        with_gaps.append(x)
        if i % 500 == 0:
            with_gaps.extend([math.nan, math.inf, -math.inf])
    clean, gappy = Monitor(make_config()), Monitor(make_config())
    expected = [a.value_index for x in values for a in clean.update(x, event_time_ms=0)]
    got = [a.value_index for x in with_gaps for a in gappy.update(x, event_time_ms=0)]
    assert got == expected == [3048, 3116]
    assert (gappy.n_skipped, gappy.n_values) == (24, 4000)
    assert clean.n_skipped == 0


def test_statistics_select_the_scores_watched() -> None:
    values = shifted(normal(3, 8000), AT, scale=2.0)
    location_only = feed(Monitor(make_config(statistics=["location"])), values)
    scale_only = feed(Monitor(make_config(statistics=["scale"])), values)
    # a doubled spread reaches the location score too, but much later
    assert (location_only[0][0], scale_only[0][0]) == (3747, 3033)
    assert {d for _, a in location_only for d in a.detectors} <= {
        "page_hinkley/location",
        "adwin/location",
    }
    assert {d for _, a in scale_only for d in a.detectors} <= {"page_hinkley/scale", "adwin/scale"}


def test_constant_stream_then_a_new_value() -> None:
    monitor = Monitor(make_config())
    assert feed(monitor, [5.0] * 3000) == []
    alerts = feed(monitor, [5.0] * 3000 + [6.0] * 50, start=3000)
    assert [(i, a.kind, a.severity) for i, a in alerts][:1] == [(3002, "opened", "critical")]
    assert alerts[0][1].mean_shift_sd is None  # no spread in the reference


def test_recent_stats_and_accessors() -> None:
    monitor = Monitor(make_config(recent_window=100))
    assert monitor.recent_stats.n == 0
    assert math.isnan(monitor.recent_stats.mean)
    feed(monitor, [float(i) for i in range(1200)])
    recent = monitor.recent_stats
    assert (recent.n, recent.mean) == (100, 1149.5)
    assert recent.std == pytest.approx(math.sqrt(100 * 101 / 12))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from([None, "20s"]),
    st.sampled_from([None, "300s"]),
    st.sampled_from([None, "1000s"]),
    st.lists(st.integers(1, 400), min_size=1, max_size=12),
    st.lists(st.integers(0, 2_999), max_size=5),
)
def test_a_batch_feeds_a_monitor_exactly_as_values_one_by_one(
    seed: int,
    skip_first: str | None,
    accept_after: str | None,
    season: str | None,
    chunks: list[int],
    gaps: list[int],
) -> None:
    """update_many (the worker's path) against update: the same alerts and the same state,
    through warm-up, detections, incidents, recoveries, acceptances and skipped values."""
    config = make_config(
        warmup=100,
        stable_after=150,
        skip_first=skip_first,
        accept_after=accept_after,
        season=season,
        season_bins=4,
    )
    values = shifted(normal(seed, 3_000), 1_200, shift=1.5)
    values = shifted(values, 2_100, shift=-1.0, scale=3.0)
    for i in gaps:
        values[i] = math.nan
    samples = [(i, 1000 * i, x, None) for i, x in enumerate(values)]
    one_by_one, batched = Monitor(config), Monitor(config)
    want = [a for o, t, x, _ in samples for a in one_by_one.update(x, event_time_ms=t, offset=o)]
    got = []
    i = 0
    k = 0
    while i < len(samples):
        size = chunks[k % len(chunks)]
        got += batched.update_many(samples[i : i + size])
        i += size
        k += 1
    assert got == want
    assert batched.to_state() == one_by_one.to_state()
    assert want, "the stream must open incidents for this test to mean something"
