"""Seasonal monitors: a profile over one cycle, then residuals; exact restarts."""

from __future__ import annotations

import math

import orjson
import pytest

from driftline.drift import DriftStateError, Monitor
from driftline.drift.season import SeasonProfile
from tests.unit.drift.streams import make_config, normal

DAY_S = 86_400
STEP_S = 10  # one value every 10 s: 8,640 a day, 360 per phase of 24


def daily(seed: int, days: float, shift_at: int | None = None) -> list[float]:
    """N(0, 1) on a daily cycle as large as the noise; +1 from index ``shift_at``."""
    n = int(days * DAY_S / STEP_S)
    noise = normal(seed, n)
    return [
        x + math.sin(2 * math.pi * i * STEP_S / DAY_S) + (1.0 if shift_at and i >= shift_at else 0)
        for i, x in enumerate(noise)
    ]


def run(monitor: Monitor, values: list[float]) -> list[tuple[int, str, str]]:
    return [
        (i, a.kind, a.reason)
        for i, x in enumerate(values)
        for a in monitor.update(x, event_time_ms=i * STEP_S * 1000)
    ]


def test_the_profile_is_the_mean_and_sd_of_each_phase() -> None:
    profile = SeasonProfile(season_ms=4_000, bins=4)
    assert profile.learning(0)
    for t, x in [(0, 1.0), (500, 3.0), (1000, 10.0), (1500, 10.0), (1999, 12.0)]:
        assert profile.learning(t)
        profile.learn(x, t)
    assert not profile.learning(4_000)  # one season after the first value
    assert (profile.n, profile.mean) == ([2, 3, 0, 0], [2.0, pytest.approx(32 / 3), 0.0, 0.0])
    assert profile.residual(4.0, 4_200) == pytest.approx((4.0 - 2.0) / math.sqrt(2.0))
    assert profile.residual(5.0, 6_100) is None  # a phase never seen
    assert SeasonProfile.from_dict(profile.to_dict(), 4_000, 4).to_dict() == profile.to_dict()
    with pytest.raises(ValueError, match="n must be a list of 4"):
        SeasonProfile.from_dict({**profile.to_dict(), "n": [1]}, 4_000, 4)


def test_a_daily_cycle_is_quiet_with_season_and_a_shift_on_it_is_found() -> None:
    config = make_config(season="1d", season_bins=24, warmup=1000)
    # without season the cycle itself keeps opening incidents
    assert [k for _, k, _ in run(Monitor(make_config(warmup=1000)), daily(1, 8))].count(
        "opened"
    ) >= 3
    quiet = Monitor(config)
    assert run(quiet, daily(1, 8)) == []
    assert quiet.n_filling == 8640  # the first day learned the profile
    shift_at = 8640 * 5
    alerts = run(Monitor(config), daily(2, 8, shift_at=shift_at))
    opened = [i for i, k, _ in alerts if k == "opened"]
    assert len(opened) == 1 and 0 <= opened[0] - shift_at < 200, alerts


def test_a_seasonal_monitor_restarts_exactly_and_refuses_a_profile_it_lacks() -> None:
    config = make_config(season="1d", season_bins=24, warmup=200)
    values = daily(3, 1.5)
    first = Monitor(config)
    run(first, values[:5000])  # mid-profile
    restored = Monitor.from_state(first.to_state(), config=config)
    for monitor in (first, restored):
        for i, x in enumerate(values[5000:], start=5000):
            monitor.update(x, event_time_ms=i * STEP_S * 1000)
    assert restored.to_state() == first.to_state()
    seasonal = orjson.loads(first.to_state())
    seasonal["season"]["n"] = [1]  # not a count per phase
    with pytest.raises(DriftStateError, match="season"):
        Monitor.from_document(seasonal)
    plain = orjson.loads(Monitor(make_config(warmup=200)).to_state())
    plain["season"] = seasonal["season"]  # a profile the monitor's config has no season for
    with pytest.raises(DriftStateError, match="season"):
        Monitor.from_document(plain)
