"""The window engine against a brute-force reference (``reference.py``).

The engine must agree with it however the events are split into batches,
whatever their order, at any read time at or after the newest event, and its
state must stay bounded; plus the promised semantics as worked examples.
"""

from __future__ import annotations

import copy
import math
import statistics
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.sketch import kmv_estimate, kmv_of, value_hash
from driftline.features.state import EntityState, merge_buckets
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import (
    GROUP,
    MANY_CATEGORIES,
    READ_DELAYS,
    T0,
    assert_matches,
    check_bounded,
    event_streams,
    reference,
    run,
    split,
)

# ---------------------------------------------------------------------- tests


@settings(max_examples=120, deadline=None)
@given(
    event_streams(),
    st.lists(st.integers(0, 60), max_size=6),
    st.lists(READ_DELAYS, min_size=1, max_size=3),
)
def test_engine_matches_brute_force_reference(
    events: list[ParsedEvent], cuts: list[int], delays: list[int]
) -> None:
    batched = run(GROUP, split(events, cuts))
    one_shot = run(GROUP, [events])
    assert batched.keys() == one_shot.keys() == {e.entity for e in events}
    for entity, state in batched.items():
        check_bounded(GROUP, state)
        other = one_shot[entity]
        assert state.newest_event_ms == other.newest_event_ms
        assert state.last == other.last
        for r in GROUP.resolutions:  # same buckets; integers and sketches exactly equal
            assert state.rings[r].keys() == other.rings[r].keys()
            for b, stats in state.rings[r].items():
                assert stats.sketches == other.rings[r][b].sketches
                assert [s.n for s in stats.summaries] == [s.n for s in other.rings[r][b].summaries]
        assert state.newest_event_ms is not None
        for delay in delays:
            t = state.newest_event_ms + delay
            want = reference(GROUP, events, entity, t)
            assert_matches(read_features(GROUP, state, t).values, want)
            assert_matches(read_features(GROUP, other, t).values, want)


def merge_unpruned(state: EntityState | None, delta: EntityState) -> EntityState:
    """apply_delta without pruning: keep every bucket ever seen."""
    rings = {r: dict(ring) for r, ring in (state.rings.items() if state else ())}
    for r, ring in delta.rings.items():
        target = rings.setdefault(r, {})
        for b, s in ring.items():
            target[b] = merge_buckets(target[b], s) if b in target else s
    last = dict(state.last) if state else {}
    for f, tv in delta.last.items():
        if f not in last or tv[0] >= last[f][0]:
            last[f] = tv
    times = [
        x
        for x in (state.newest_event_ms if state else None, delta.newest_event_ms)
        if x is not None
    ]
    return EntityState(rings, last, max(times) if times else None)


@settings(max_examples=60, deadline=None)
@given(
    event_streams(),
    st.lists(st.integers(0, 60), max_size=6),
    st.lists(READ_DELAYS, min_size=1, max_size=4),
)
def test_pruning_never_changes_a_read_at_or_after_the_newest_event(
    events: list[ParsedEvent], cuts: list[int], delays: list[int]
) -> None:
    pruned: dict[str, EntityState] = {}
    full: dict[str, EntityState] = {}
    for batch in split(events, cuts):
        for entity, delta in build_deltas(GROUP, batch).items():
            pruned[entity] = apply_delta(GROUP, pruned.get(entity), delta)
            full[entity] = merge_unpruned(full.get(entity), delta)
    for entity, state in pruned.items():
        assert state.newest_event_ms is not None
        assert state.bucket_count() <= full[entity].bucket_count()
        for delay in delays:
            t = state.newest_event_ms + delay
            assert (
                read_features(GROUP, state, t).values
                == read_features(GROUP, full[entity], t).values
            )


USER_SPEND = FeatureGroup.from_config(
    {
        "name": "user_spend",
        "version": 1,
        "source": "transactions",
        "entity_key": "user_id",
        "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
        "distinct": ["category"],
        "last": ["amount", "category"],
        "windows": ["1m", "5m", "1h", "24h"],
    }
)


def ev(entity: str, t: int, **data: Any) -> ParsedEvent:
    return ParsedEvent(entity, t, data)


@settings(max_examples=40, deadline=None)
@given(
    event_streams(categories=MANY_CATEGORIES, entities=("a",), max_size=120),
    st.lists(st.integers(0, 120), max_size=4),
    READ_DELAYS,
)
def test_distinct_counts_past_32_match_the_reference(
    events: list[ParsedEvent], cuts: list[int], delay: int
) -> None:
    for state in run(GROUP, split(events, cuts)).values():
        assert state.newest_event_ms is not None
        t = state.newest_event_ms + delay
        got = read_features(GROUP, state, t).values
        want = reference(GROUP, events, "a", t)
        assert {k: v for k, v in got.items() if "_distinct_" in k} == {
            k: v for k, v in want.items() if "_distinct_" in k
        }


@pytest.mark.parametrize("n", [31, 32, 33, 40, 200])
def test_distinct_count_is_exact_up_to_32_in_one_bucket(n: int) -> None:
    events = [ev("u", T0 + i, category=f"c{i}") for i in range(n)]  # one 1 s bucket
    expected = n if n <= 32 else round(kmv_estimate(kmv_of(value_hash(f"c{i}") for i in range(n))))
    for batches in ([events], [events[1::2], events[::2]]):
        state = run(USER_SPEND, batches)["u"]
        assert (
            read_features(USER_SPEND, state, T0 + n).values["category_distinct_count_1m"]
            == expected
        )


def test_an_idle_entity_decays_to_zero() -> None:
    state = run(USER_SPEND, [[ev("u", T0, amount=10.0, category="fuel")]])["u"]
    four = read_features(USER_SPEND, state, T0 + 4 * 60_000).values
    assert four["amount_count_5m"] == 1 and four["amount_sum_5m"] == 10.0
    assert four["amount_count_1m"] == 0 and four["amount_mean_1m"] is None
    six = read_features(USER_SPEND, state, T0 + 6 * 60_000).values
    assert six["amount_count_5m"] == 0 and six["amount_sum_5m"] == 0.0
    assert six["amount_std_5m"] is None and six["category_distinct_count_5m"] == 0
    assert six["amount_count_1h"] == 1
    later = read_features(USER_SPEND, state, T0 + 25 * 3_600_000)
    assert later.values["amount_count_24h"] == 0
    assert later.values["amount_last"] == 10.0  # last does not decay; the store's TTL expires it
    assert later.newest_event_ms == T0 and later.as_of_ms == T0 + 25 * 3_600_000


def test_missing_entity() -> None:
    fv = read_features(USER_SPEND, None, T0)
    assert list(fv.values) == list(USER_SPEND.feature_names())
    for name, value in fv.values.items():
        if "_count_" in name:
            assert value == 0 and type(value) is int
        elif "_sum_" in name:
            assert value == 0.0
        else:
            assert value is None, name
    assert fv.newest_event_ms is None


def test_window_covers_whole_buckets_ending_with_the_read_time_bucket() -> None:
    # 1m window at 1 s resolution: read at t covers event times in [(t//1000 - 59) * 1000, (t//1000 + 1) * 1000)
    t = T0 + 123_456
    start = (t // 1000 - 59) * 1000
    events = [ev("u", start - 1, amount=1.0), ev("u", start, amount=2.0), ev("u", t, amount=4.0)]
    state = run(USER_SPEND, [events])["u"]
    assert read_features(USER_SPEND, state, t).values["amount_sum_1m"] == 6.0
    assert read_features(USER_SPEND, state, t + 999 - t % 1000).values["amount_sum_1m"] == 6.0
    assert read_features(USER_SPEND, state, t + 1000 - t % 1000).values["amount_sum_1m"] == 4.0


def test_skipped_values_are_counted_per_field_in_the_delta() -> None:
    batch = [
        ev("u", T0, amount="12", category="fuel"),
        ev("u", T0 + 1, amount=float("nan"), category=["x"]),
        ev("u", T0 + 2, amount=True, category=None),
        ev("u", T0 + 3, amount=3.0),
        ev("v", T0, amount=1.0, category="fuel"),
    ]
    deltas = build_deltas(USER_SPEND, batch)
    assert deltas["u"].skipped == {"amount": 4, "category": 2}  # amount: also skipped as last
    assert deltas["v"].skipped == {}
    state = apply_delta(USER_SPEND, None, deltas["u"])
    assert state.skipped == {}
    values = read_features(USER_SPEND, state, T0 + 3).values
    assert values["amount_count_1m"] == 1 and values["category_distinct_count_1m"] == 1
    assert values["amount_last"] == 3.0 and values["category_last"] == "fuel"


def test_last_is_newest_by_event_time_and_ties_go_to_the_later_event() -> None:
    deltas = build_deltas(
        USER_SPEND,
        [ev("u", T0 + 5, category="b"), ev("u", T0, category="old"), ev("u", T0 + 5, category="c")],
    )
    assert deltas["u"].last == {"category": (T0 + 5, "c")}
    state = apply_delta(USER_SPEND, None, deltas["u"])
    later = build_deltas(USER_SPEND, [ev("u", T0 + 5, category="d"), ev("u", T0 + 1, amount=2.0)])
    state = apply_delta(USER_SPEND, state, later["u"])
    assert state.last == {"category": (T0 + 5, "d"), "amount": (T0 + 1, 2.0)}


def test_apply_delta_is_pure() -> None:
    first = run(
        USER_SPEND,
        [[ev("u", T0 + i * 7_000, amount=float(i), category=f"c{i}") for i in range(30)]],
    )["u"]
    delta = build_deltas(USER_SPEND, [ev("u", T0 + 400_000, amount=1.0, category="z")])["u"]
    before = (copy.deepcopy(first), copy.deepcopy(delta))
    after = apply_delta(USER_SPEND, first, delta)
    assert (first, delta) == before
    assert after is not first and after.rings is not first.rings
    # the 1m ring was pruned relative to the new newest event, and stays bounded
    check_bounded(USER_SPEND, after)
    assert read_features(USER_SPEND, after, T0 + 400_000).values["amount_count_1m"] == 1


def test_state_stays_bounded_over_a_long_stream() -> None:
    state: EntityState | None = None
    for minute in range(0, 3 * 24 * 60, 7):
        batch = [ev("u", T0 + minute * 60_000 + s * 1_000, amount=1.0) for s in range(0, 60, 13)]
        state = apply_delta(USER_SPEND, state, build_deltas(USER_SPEND, batch)["u"])
    assert state is not None
    check_bounded(USER_SPEND, state)
    assert state.bucket_count() <= sum(USER_SPEND.layout.ring_buckets.values())


@pytest.mark.parametrize("n", [1, 2, 10])
def test_variance_near_1e9_through_the_engine(n: int) -> None:
    values = [1e9 + d for d in (-1.0, 0.0, 1.0)] * 50
    events = [ev("u", T0 + i * 100, amount=v) for i, v in enumerate(values)]
    batches = [events[i::n] for i in range(n)]  # out of order across batches
    state = run(USER_SPEND, batches)["u"]
    std = read_features(USER_SPEND, state, T0 + 15_000).values["amount_std_1m"]
    exact = math.sqrt(statistics.pvariance(values))
    assert isinstance(std, float) and abs(std - exact) / exact < 1e-6
