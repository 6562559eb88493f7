"""Reference scores: ~N(0, 1) whatever the shape, bounded, exact on ties."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.drift.reference import Reference
from tests.unit.drift.streams import lognormal, normal, student_t3


def _moments(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)


@pytest.mark.parametrize("draw", [normal, student_t3, lognormal])
def test_scores_of_new_values_are_standard_normal(draw: Callable[[int, int], list[float]]) -> None:
    reference = Reference(draw(1, 1000))
    scores = [reference.scores(x) for x in draw(2, 20_000)]
    for index in (0, 1):
        mean, sd = _moments([s[index] for s in scores])
        assert abs(mean) < 0.1
        assert abs(sd - 1) < 0.06


def test_reference_sample_scores_are_exactly_standardised() -> None:
    sample = normal(3, 1000)
    reference = Reference(sample)
    for index in (0, 1):
        mean, sd = _moments([reference.scores(x)[index] for x in sample])
        assert mean == pytest.approx(0, abs=1e-12)
        assert sd == pytest.approx(1, abs=1e-12)
    assert reference.stats.n == 1000
    assert len(reference) == 1000


def test_location_is_monotone_scale_is_v_shaped_and_both_are_bounded() -> None:
    reference = Reference(student_t3(4, 1000))
    grid = [x / 10 for x in range(-200, 201)]
    locations = [reference.scores(x)[0] for x in grid]
    assert locations == sorted(locations)
    assert reference.scores(-1e9) == reference.scores(-1e6)
    assert reference.scores(1e9) == reference.scores(1e6)
    assert max(abs(z) for z in locations) < 3.4
    # far from the median in either direction scores high on scale
    median = statistics.median(reference.sample)
    assert reference.scores(median)[1] < -2.5
    assert reference.scores(1e6)[1] == reference.scores(-1e6)[1] > 2.5


def test_ties_share_their_mid_rank() -> None:
    # discrete data: 0 (500 times), 1 (300), 2 (200)
    reference = Reference([0.0] * 500 + [1.0] * 300 + [2.0] * 200)
    scores = [reference.scores(x) for x in [0.0] * 500 + [1.0] * 300 + [2.0] * 200]
    for index in (0, 1):
        mean, sd = _moments([s[index] for s in scores])
        assert mean == pytest.approx(0, abs=1e-12)
        assert sd == pytest.approx(1, abs=1e-12)
    between = reference.scores(0.5)[0]
    assert between == pytest.approx((reference.scores(0.0)[0] + reference.scores(1.0)[0]) / 2)


def test_constant_reference_scores_any_other_value_as_extreme() -> None:
    reference = Reference([5.0] * 1000)
    assert reference.scores(5.0) == (0.0, 0.0)
    low, high = reference.scores(4.0), reference.scores(6.0)
    assert low[0] < -3 and high[0] > 3
    assert low[1] > 6 and high[1] > 6


def test_a_reference_rebuilt_from_its_sample_gives_identical_scores() -> None:
    """Checkpoints store the sample only; the knots are rebuilt exactly from it."""
    reference = Reference(lognormal(5, 1000))
    restored = Reference(reference.sample)
    assert restored.sample == reference.sample
    for x in [*lognormal(6, 100), -1.0, 0.0, 1e9, math.pi]:
        assert restored.scores(x) == reference.scores(x)


def test_empty_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        Reference([])


_VALUES = st.one_of(
    st.floats(-50, 50, allow_nan=False),
    st.sampled_from([0.0, 1.0, -1.0, 2.5]),
    st.integers(-3, 3).map(float),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_VALUES, min_size=1, max_size=40),
    st.lists(
        st.one_of(_VALUES, st.sampled_from([math.inf, -math.inf, 1e300])), min_size=1, max_size=60
    ),
)
def test_scores_of_a_batch_are_the_scores_one_by_one_bit_for_bit(
    sample: list[float], values: list[float]
) -> None:
    """Values below, above, between and on the knots (ties included), and one-knot references."""
    reference = Reference(sample)
    values += sample[:5]  # exactly on knots
    location, scale = reference.scores_many(values)
    for x, z, s in zip(values, location, scale, strict=True):
        assert (z, s) == reference.scores(x), x
