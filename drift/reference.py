"""The reference distribution and the normal scores computed against it.

Why scores
----------
Detector thresholds only mean something in known units.  River's defaults
work on raw values, so Page-Hinkley's threshold of 50 is "50 dollars" for one
feature and "50 milliseconds" for another, and heavy tails (one 40-sigma value
in a Student-t stream) look like change to ADWIN.  A monitor therefore learns a
*reference* (the first ``warmup`` values, kept sorted) and turns every later
value ``x`` into two scores that are close to standard normal whatever the
shape of the data, as long as it does not change:

``location``  z = Phi^-1(F(x)), F the reference's interpolated empirical CDF:
              moves with the median; a mean shift is a shift of z.
``scale``     s = Phi^-1(|2 F(x) - 1|): how far from the reference median x
              lies, in probability.  |2F - 1| is uniform when F is, so s is
              N(0, 1) too; a wider distribution shifts s up, a narrower one
              (a stuck sensor) shifts it down.

Both are clipped by construction: with ``n`` reference values, F ranges
over [0.5/(n+1), 1 - 0.5/(n+1)], so |z| stays below about 3.3 for
n = 1000.  A single extreme value can move a detector by at most that much,
which is what keeps heavy tails from raising alarms.

::

    reference (sorted)   x_1 <= x_2 <= ... <= x_n          u_i = i / (n + 1)
    knots                (x_i, Phi^-1(u_i), Phi^-1(|2 u_i - 1|))
    new value x          bisect, interpolate linearly between the two knots
                         below x_1 / above x_n: the tail midpoints

Ties (discrete data) share their mid-rank, and both scores are standardised
by their own mean and sd over the reference sample, so a field with three
distinct values still gives mean-0, sd-1 scores and no spurious scale change.
"""

from __future__ import annotations

import itertools
import math
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from statistics import NormalDist

import numpy as np

from driftline.drift.stats import Stats

_PPF = NormalDist().inv_cdf


class Reference:
    """A sorted reference sample, its knots and its raw :class:`Stats`."""

    __slots__ = ("_hi", "_lo", "_sc", "_xs", "_zs", "sample", "stats")

    def __init__(self, sample: Iterable[float]) -> None:
        values = sorted(sample)
        n = len(values)
        if n == 0:
            raise ValueError("a reference needs at least one value")
        # arrays, not lists: a worker keeps one reference per monitor and
        # segment, and an array of floats takes a third of the memory
        self.sample = array("d", values)
        self.stats = Stats.of(values)

        xs: list[float] = []
        zs: list[float] = []
        ss: list[float] = []
        weights: list[int] = []
        floor = 0.5 / (n + 1)
        rank = 0
        for x, group in itertools.groupby(values):
            count = sum(1 for _ in group)
            u = (rank + (count + 1) / 2) / (n + 1)  # mid-rank of the tie group
            rank += count
            xs.append(x)
            zs.append(_PPF(u))
            ss.append(_PPF(max(abs(2 * u - 1), floor)))
            weights.append(count)
        # tails: the midpoint of the probability left outside the sample
        z_out = _PPF(1 - floor)
        s_out = _PPF(1 - 2 * floor)

        z_mean, z_sd = _weighted_moments(zs, weights)
        s_mean, s_sd = _weighted_moments(ss, weights)
        self._xs = array("d", xs)
        self._zs = array("d", [(z - z_mean) / z_sd for z in zs])
        self._sc = array("d", [(s - s_mean) / s_sd for s in ss])
        self._lo = ((-z_out - z_mean) / z_sd, (s_out - s_mean) / s_sd)
        self._hi = ((z_out - z_mean) / z_sd, (s_out - s_mean) / s_sd)

    def __len__(self) -> int:
        return len(self.sample)

    def scores(self, x: float) -> tuple[float, float]:
        """``(location, scale)`` scores of ``x``: both ~N(0, 1) while nothing changes."""
        xs = self._xs
        i = bisect_right(xs, x)
        if i == 0:
            return self._lo
        if i == len(xs):
            return (self._zs[-1], self._sc[-1]) if x == xs[-1] else self._hi
        x0 = xs[i - 1]
        if x == x0:
            return self._zs[i - 1], self._sc[i - 1]
        f = (x - x0) / (xs[i] - x0)
        z0 = self._zs[i - 1]
        s0 = self._sc[i - 1]
        return z0 + f * (self._zs[i] - z0), s0 + f * (self._sc[i] - s0)

    def scores_many(self, values: Sequence[float]) -> tuple[list[float], list[float]]:
        """:meth:`scores` of each value, as two lists (location, scale), computed at once.

        The same IEEE operations in the same order as :meth:`scores`, elementwise
        with numpy, so every score is bit for bit the one :meth:`scores` gives
        (``tests/unit/drift/test_reference.py``).  Non-finite values get some
        number: the monitor skips them before it reads their scores.
        """
        xs = np.frombuffer(self._xs, dtype=np.float64)
        size = len(xs)
        if size < 2:  # one distinct reference value: no interval to interpolate in
            pairs = [self.scores(x) for x in values]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        x = np.asarray(values, dtype=np.float64)
        i = np.searchsorted(xs, x, side="right")  # bisect_right
        right = np.clip(i, 1, size - 1)
        left = right - 1
        x0 = xs[left]
        below = i == 0
        above = i == size
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            f = (x - x0) / (xs[right] - x0)
        at = np.maximum(i - 1, 0)  # the knot at or below x (the first one below them all)
        exact = (x == xs[at]) & ~below
        on_top = above & ~exact
        out: list[list[float]] = []
        for k, knots in enumerate((self._zs, self._sc)):
            zs = np.frombuffer(knots, dtype=np.float64)
            z0 = zs[left]
            with np.errstate(invalid="ignore", over="ignore"):
                z = z0 + f * (zs[right] - z0)
            z = np.where(exact, zs[at], z)
            z = np.where(on_top, self._hi[k], z)
            z = np.where(below, self._lo[k], z)
            out.append(z.tolist())
        return out[0], out[1]


def _weighted_moments(values: list[float], weights: list[int]) -> tuple[float, float]:
    total = sum(weights)
    mean = math.fsum(v * w for v, w in zip(values, weights, strict=True)) / total
    var = math.fsum(w * (v - mean) ** 2 for v, w in zip(values, weights, strict=True)) / total
    # A constant reference has no spread: any other value is then a change,
    # and a unit scale keeps its scores finite.
    sd = math.sqrt(var)
    return mean, sd if sd > 1e-12 else 1.0
