"""Mergeable summaries of a numeric stream: count, mean, variance, min, max.

A :class:`Summary` is ``(n, mean, m2, min, max)`` where ``m2`` is the sum of
squared deviations from the mean.  Two summaries of disjoint samples merge
into the summary of their union with Chan, Golub and LeVeque's parallel
formula (1979)::

    n     = a.n + b.n
    delta = b.mean - a.mean
    mean  = a.mean + delta * b.n / n
    m2    = a.m2 + b.m2 + delta * delta * a.n * b.n / n
    min   = min(a.min, b.min)        max = max(a.max, b.max)

Why not ``(count, sum, sum of squares)``?  ``var = sumsq/n - mean**2``
subtracts two numbers of size ``mean**2``: for amounts around ``1e9 ± 1``
that is ``1e18 - 1e18`` in doubles with a spacing of 128, and the variance of
about 1 comes out as 0, 128 or negative.  ``m2`` only ever adds squared
*deviations*, so it stays accurate whatever the offset (see the tests).

Exact evaluation order (the Redis Lua script must use the same, left to
right, to produce bit-identical doubles): ``mean = a.mean + ((delta * b.n) /
n)`` and ``m2 = (a.m2 + b.m2) + ((((delta * delta) * a.n) * b.n) / n)``.
Counts are exact in doubles below 2**53, so Python ints and Lua numbers give
the same results.

The empty summary is ``(0, 0.0, 0.0, +inf, -inf)``: the identity of
:func:`merge`, and min/max merge correctly without a special case.

Derived values follow population statistics (``ddof=0``): ``var = m2 / n``,
``std = sqrt(var)``, ``sum = n * mean``.  For ``n == 0``: ``sum`` is 0.0 and
mean, var, std, min, max are ``None``; for ``n == 1``: var and std are 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

#: Values whose magnitude is above this are skipped by the engine: it keeps
#: every intermediate (``delta * delta * n``) finite in a double.
MAX_ABS_VALUE = 1e100


class Summary(NamedTuple):
    """Count, mean, sum of squared deviations, min and max of a sample."""

    n: int
    mean: float
    m2: float
    min: float
    max: float


EMPTY = Summary(0, 0.0, 0.0, math.inf, -math.inf)

# NamedTuple construction without the Python-level ``__new__`` (hot paths).
_new = tuple.__new__


def summary_of(value: float) -> Summary:
    """The summary of a single value."""
    x = float(value)
    return Summary(1, x, 0.0, x, x)


def summary_of_values(values: Sequence[float]) -> Summary:
    """The summary of a sample, computed in two passes.

    The mean is the correctly rounded ``fsum / n``; ``m2`` sums squared
    deviations from it (non-negative terms, so a plain sum is accurate).  This
    is how the engine summarises the values of one bucket of one batch; merges
    across buckets and batches then use :func:`merge`.
    """
    n = len(values)
    if n == 0:
        return EMPTY
    if n == 1:
        x = values[0]
        return _new(Summary, (1, x, 0.0, x, x))
    mu = math.fsum(values) / n
    m2 = 0.0
    for x in values:
        d = x - mu
        m2 += d * d
    return _new(Summary, (n, mu, m2, min(values), max(values)))


def merge(a: Summary, b: Summary) -> Summary:
    """The summary of the union of two disjoint samples (Chan et al.)."""
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    an = a.n
    bn = b.n
    n = an + bn
    delta = b.mean - a.mean
    return _new(
        Summary,
        (
            n,
            a.mean + delta * bn / n,
            a.m2 + b.m2 + delta * delta * an * bn / n,
            a.min if a.min <= b.min else b.min,
            a.max if a.max >= b.max else b.max,
        ),
    )


def count(s: Summary) -> int:
    return s.n


def sum(s: Summary) -> float:
    """``n * mean``; 0.0 for an empty summary."""
    return s.n * s.mean if s.n else 0.0


def mean(s: Summary) -> float | None:
    return s.mean if s.n else None


def var(s: Summary) -> float | None:
    """Population variance (``ddof=0``)."""
    if s.n == 0:
        return None
    return s.m2 / s.n if s.m2 > 0.0 else 0.0


def std(s: Summary) -> float | None:
    """Population standard deviation (``ddof=0``)."""
    v = var(s)
    return None if v is None else math.sqrt(v)


def minimum(s: Summary) -> float | None:
    return s.min if s.n else None


def maximum(s: Summary) -> float | None:
    return s.max if s.n else None
