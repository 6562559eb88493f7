"""``monitors list``'s view of a monitor, and its hint for fields that cycle."""

from __future__ import annotations

import math

from driftline.drift import Monitor
from driftline.drift.status import cycle_hint, describe, distribution, monitor_status
from tests.unit.drift.streams import make_config, normal


def cycling(seed: int, n: int) -> list[float]:
    return [x + math.sin(2 * math.pi * i / 86_400) for i, x in enumerate(normal(seed, n))]


def feed(monitor: Monitor, values: list[float]) -> Monitor:
    for i, x in enumerate(values):
        monitor.update(x, event_time_ms=1000 * i)
    return monitor


def test_a_field_that_cycles_gets_the_hint_a_stationary_one_does_not() -> None:
    quiet = feed(Monitor(make_config()), normal(1, 60_000))
    assert cycle_hint(quiet) is None
    cycling_monitor = feed(Monitor(make_config()), cycling(2, 60_000))
    hint = cycle_hint(cycling_monitor)
    assert hint is not None and "set season" in hint, cycling_monitor.n_incidents
    row = monitor_status(cycling_monitor)
    assert row["hint"] == hint and row["incidents"] == cycling_monitor.n_incidents
    assert any(line.startswith("  hint") for line in describe("m", [row]))
    seasonal = feed(Monitor(make_config(season="1d")), cycling(2, 60_000))
    assert cycle_hint(seasonal) is None  # it is told


def test_distribution_figures() -> None:
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (d["mean"], d["n"], d["p50"], d["p05"], d["p95"]) == (3.0, 5, 3.0, 1.2, 4.8)
    assert distribution([])["mean"] is None
