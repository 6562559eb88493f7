"""Seasonal fields: compare each value with its phase of the cycle, not with the whole day.

A field with a daily (or weekly) cycle is stationary over the cycle but not
over an hour: a monitor with one reference opens an incident every time the
cycle moves away from the hours its warm-up saw, and a real change hides in
the cycle.  With ``season: 1d`` a monitor first learns a **profile** over one
whole cycle of event time: the mean and standard deviation of the values in
each of ``season_bins`` phases (96 for a day: 15 minutes each).  After that
it monitors the **residual** of each value, ``(x - mean of its phase) / sd of
its phase``: stationary when the field only follows its cycle, shifted by
``k`` when the field moves by ``k`` of its phase's sd.  The reference, the
detectors and the incidents then work on residuals as on any field (so alert
records of a seasonal monitor give residual units, not raw ones).

Why a profile rather than one reference per phase: a reference per phase
needs ``warmup`` values in *each* of 96 phases before anything is monitored,
and 96 sets of detectors would each see a ninety-sixth of the stream
(detection delay times 96).  The profile needs one cycle; one set of
detectors sees every value.  What it assumes: the cycle's shape is the same
from one cycle to the next (a level shift is the change to detect, a
changed shape is one too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class SeasonProfile:
    """Per-phase mean and sd learned over one cycle of event time (Welford per bin)."""

    def __init__(self, season_ms: int, bins: int) -> None:
        if season_ms <= 0 or bins < 1:
            raise ValueError("season_ms > 0 and bins >= 1")
        self.season_ms = season_ms
        self.bins = bins
        self.n = [0] * bins
        self.mean = [0.0] * bins
        self.m2 = [0.0] * bins
        #: event time of the first value: the profile is learned until one season later
        self.start_ms: int | None = None

    def phase(self, event_time_ms: int) -> int:
        return (event_time_ms % self.season_ms) * self.bins // self.season_ms

    def learning(self, event_time_ms: int) -> bool:
        """True while the first cycle is being learned (counting from the first value)."""
        if self.start_ms is None:
            self.start_ms = event_time_ms
        return event_time_ms < self.start_ms + self.season_ms

    def learn(self, value: float, event_time_ms: int) -> None:
        b = self.phase(event_time_ms)
        self.n[b] += 1
        delta = value - self.mean[b]
        self.mean[b] += delta / self.n[b]
        self.m2[b] += delta * (value - self.mean[b])

    def residual(self, value: float, event_time_ms: int) -> float | None:
        """``(value - phase mean) / phase sd``; None for a phase seen too little to say."""
        b = self.phase(event_time_ms)
        n = self.n[b]
        if n < 2:
            return None
        sd = math.sqrt(self.m2[b] / (n - 1))
        if sd <= 0:
            return None
        return (value - self.mean[b]) / sd

    # -- checkpoints ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], season_ms: int, bins: int) -> SeasonProfile:
        """Restore :meth:`to_dict`; ``ValueError`` on anything else."""
        profile = cls(season_ms, bins)
        start = data.get("start_ms")
        if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
            raise ValueError("season profile: start_ms must be an integer or null")
        profile.start_ms = start
        profile.n = [int(v) for v in _numbers(data, "n", bins, counts=True)]
        profile.mean = _numbers(data, "mean", bins)
        profile.m2 = _numbers(data, "m2", bins)
        return profile


def _numbers(data: Mapping[str, Any], key: str, bins: int, *, counts: bool = False) -> list[float]:
    seq = data.get(key)
    if not isinstance(seq, list) or len(seq) != bins:
        raise ValueError(f"season profile: {key} must be a list of {bins} numbers")
    out: list[float] = []
    for v in seq:
        number = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not number or (counts and (not isinstance(v, int) or v < 0)):
            raise ValueError(f"season profile: bad {key} value {v!r}")
        out.append(float(v))
    return out
