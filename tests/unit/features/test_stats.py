"""Mergeable summaries: merge laws, accessors, and numerical stability."""

from __future__ import annotations

import math
import statistics
from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features import stats
from driftline.features.stats import EMPTY, Summary, merge, summary_of, summary_of_values

VALUES = st.lists(
    st.one_of(
        st.integers(-(10**6), 10**6).map(lambda c: c / 100),
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    ),
    max_size=20,
)


def close(a: float, b: float, scale: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


def assert_same(a: Summary, b: Summary, scale: float) -> None:
    assert a.n == b.n
    assert (a.min, a.max) == (b.min, b.max)
    assert close(a.mean, b.mean, scale)
    # m2 / n is the variance: compare it on the variance's scale
    assert close(a.m2, b.m2, scale * scale * max(a.n, 1))


def scale_of(*samples: list[float]) -> float:
    return max((abs(x) for s in samples for x in s), default=0.0)


@settings(max_examples=150)
@given(VALUES, VALUES, VALUES)
def test_merge_is_associative_and_commutative(
    xs: list[float], ys: list[float], zs: list[float]
) -> None:
    a, b, c = (summary_of_values(v) for v in (xs, ys, zs))
    s = scale_of(xs, ys, zs)
    left = merge(merge(a, b), c)
    right = merge(a, merge(b, c))
    assert_same(left, right, s)
    assert_same(merge(a, b), merge(b, a), s)
    assert_same(left, summary_of_values(xs + ys + zs), s)


@given(VALUES)
def test_empty_is_the_identity(xs: list[float]) -> None:
    a = summary_of_values(xs)
    assert merge(EMPTY, a) == a
    assert merge(a, EMPTY) == a


@given(VALUES.filter(bool))
def test_accessors_match_population_statistics(xs: list[float]) -> None:
    s = reduce(merge, map(summary_of, xs), EMPTY)
    scale = scale_of(xs)
    assert stats.count(s) == len(xs)
    assert close(stats.sum(s), math.fsum(xs), scale * len(xs))
    assert close(stats.mean(s) or 0.0, statistics.fmean(xs), scale)
    assert math.isclose(
        stats.var(s) or 0.0,
        statistics.pvariance(xs),
        rel_tol=1e-9,
        abs_tol=1e-9 * max(1.0, scale) ** 2,
    )
    assert stats.minimum(s) == min(xs) and stats.maximum(s) == max(xs)


def test_empty_and_single() -> None:
    assert (stats.count(EMPTY), stats.sum(EMPTY)) == (0, 0.0)
    assert [f(EMPTY) for f in (stats.mean, stats.var, stats.std, stats.minimum, stats.maximum)] == [
        None
    ] * 5
    one = summary_of(4.5)
    assert (stats.count(one), stats.sum(one), stats.mean(one)) == (1, 4.5, 4.5)
    assert stats.var(one) == 0.0 and stats.std(one) == 0.0
    assert summary_of_values([2.0, 4.0]) == Summary(2, 3.0, 2.0, 2.0, 4.0)
    assert stats.std(summary_of_values([2.0, 4.0])) == 1.0  # population, ddof=0


def test_variance_of_values_around_1e9_is_stable() -> None:
    """1e9 ± 1: Chan's merge keeps the std exact where sum/sum-of-squares cannot."""
    xs = [1e9 + d for d in (-1.0, 0.0, 1.0, 0.5, -0.5)] * 400
    exact_var = statistics.pvariance(xs)  # exact (rational arithmetic)
    exact_std = math.sqrt(exact_var)

    # naive: var = E[x^2] - E[x]^2 in doubles: catastrophic cancellation
    n = len(xs)
    naive_var = sum(x * x for x in xs) / n - (sum(xs) / n) ** 2
    assert abs(math.sqrt(abs(naive_var)) - exact_std) / exact_std > 1e-3

    # one value at a time (a merge per event), in chunks, and as a tree: all accurate
    one_by_one = reduce(merge, map(summary_of, xs), EMPTY)
    chunks = [summary_of_values(xs[i : i + 7]) for i in range(0, n, 7)]
    chunked = reduce(merge, chunks, EMPTY)
    while len(chunks) > 1:
        chunks = [reduce(merge, chunks[i : i + 2]) for i in range(0, len(chunks), 2)]
    for s in (one_by_one, chunked, chunks[0]):
        assert abs((stats.std(s) or 0.0) - exact_std) / exact_std < 1e-6
        assert abs((stats.var(s) or 0.0) - exact_var) / exact_var < 1e-6
        assert abs((stats.mean(s) or 0.0) - 1e9) / 1e9 < 1e-12
