"""KMV sketches: hashing, merge laws, exactness up to K and accuracy beyond."""

from __future__ import annotations

import hashlib
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.features.sketch import (
    CAPACITY,
    HASH_MASK,
    K,
    canonical_text,
    kmv_add,
    kmv_estimate,
    kmv_merge,
    kmv_of,
    value_hash,
)

HASHES = st.lists(st.integers(0, HASH_MASK), max_size=50)
SKETCHES = HASHES.map(kmv_of)


def test_hash_is_the_documented_blake2b_prefix() -> None:
    digest = hashlib.blake2b(b"grocery").digest()
    assert value_hash("grocery") == int.from_bytes(digest[:8], "big") & (2**52 - 1)
    assert 0 <= value_hash("grocery") < 2**52
    assert float(value_hash("grocery")) == value_hash("grocery")  # exact as a double


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0),
        ("1", 1),
        (True, "true"),
        (-0.0, 0),
        (2.5, "2.5"),
        (10**20, "100000000000000000000"),
    ],
)
def test_canonical_text_equates_the_same_category(a: object, b: object) -> None:
    assert canonical_text(a) == canonical_text(b)
    assert value_hash(a) == value_hash(b)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), [1], {"a": 1}])
def test_non_categories(bad: object) -> None:
    assert canonical_text(bad) is None
    with pytest.raises(ValueError, match="not a categorical value"):
        value_hash(bad)


@given(SKETCHES, SKETCHES, SKETCHES)
def test_merge_is_associative_commutative_idempotent(
    a: tuple[int, ...], b: tuple[int, ...], c: tuple[int, ...]
) -> None:
    assert kmv_merge(kmv_merge(a, b), c) == kmv_merge(a, kmv_merge(b, c))
    assert kmv_merge(a, b) == kmv_merge(b, a)
    assert kmv_merge(a, a) == a
    assert kmv_merge(a, ()) == a == kmv_merge((), a)


@given(HASHES, HASHES)
def test_merge_is_the_sketch_of_the_union(xs: list[int], ys: list[int]) -> None:
    merged = kmv_merge(kmv_of(xs), kmv_of(ys))
    assert merged == kmv_of(xs + ys)
    assert len(merged) <= CAPACITY
    assert list(merged) == sorted(set(merged))


@given(HASHES, st.integers(0, HASH_MASK))
def test_add_is_merge_with_one(xs: list[int], h: int) -> None:
    assert kmv_add(kmv_of(xs), h) == kmv_merge(kmv_of(xs), (h,)) == kmv_of([*xs, h])


def test_exact_up_to_k() -> None:
    rng = random.Random(5)
    values = [f"merchant-{rng.getrandbits(48):x}" for _ in range(K + 1)]
    sketch: tuple[int, ...] = ()
    for n, v in enumerate(values, start=1):
        sketch = kmv_add(sketch, value_hash(v))
        sketch = kmv_add(sketch, value_hash(v))  # duplicates do not count
        if n <= K:
            assert kmv_estimate(sketch) == n
    assert len(sketch) == CAPACITY  # 33 hashes: "more than 32", estimated


def test_estimate_within_30_percent_beyond_k() -> None:
    """Seeded: each cardinality within 30 %, and the estimator unbiased on average.

    The KMV relative standard error is about 1/sqrt(K - 2) ≈ 18 %, so single
    estimates can stray further; the aggregate checks say the error is what
    the theory says, not worse.
    """
    rng = random.Random(2024)
    for n in (40, 100, 1_000, 10_000):
        sketch = kmv_of(value_hash(f"v{rng.getrandbits(64):x}") for _ in range(n))
        assert abs(kmv_estimate(sketch) - n) / n < 0.30, n
    errors = []
    for _ in range(60):
        n = rng.randrange(33, 2_000)
        sketch = kmv_of(value_hash(f"v{rng.getrandbits(64):x}") for _ in range(n))
        errors.append((kmv_estimate(sketch) - n) / n)
    assert sum(abs(e) < 0.30 for e in errors) / len(errors) >= 0.85
    assert abs(statistics.fmean(errors)) < 0.06
    assert statistics.pstdev(errors) < 0.25
