"""The window engine against a brute-force reference.

The reference keeps every event and computes each feature at ``as_of`` by
filtering the events whose bucket is in ``(bucket(t) - n, bucket(t)]`` and
aggregating them with plain Python (``statistics`` for the variance, which is
exact).  The engine must agree however the events are split into batches,
whatever their order, at any read time at or after the newest event.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.definitions import AGGREGATIONS, FeatureGroup
from features.engine import apply_delta, build_deltas, read_features
from features.sketch import canonical_text, hash_text, kmv_estimate
from features.state import EntityState, merge_buckets
from schemas.parser import ParsedEvent

GROUP = FeatureGroup.from_config(
    {
        "name": "engine_test",
        "version": 1,
        "source": "events",
        "entity_key": "user_id",
        "values": {"amount": list(AGGREGATIONS), "qty": ["count", "sum", "max"]},
        "distinct": ["category"],
        "last": ["amount", "category"],
        # rings: 100 ms (1s), 1 s (10s and 30s share it), 1.5 s (not a multiple
        # of 1 s), 6 s (1m), 30 s (2m): both ways _finish derives coarse rings
        "windows": [
            "1s",
            "10s",
            "1m",
            {"window": "30s", "resolution": "1s"},
            {"window": "45s", "resolution": "1500ms"},
            {"window": "2m", "resolution": "30s"},
        ],
        "buckets_per_window": 10,
    }
)
T0 = 1_700_000_000_000
ABSENT: Any = object()

# ------------------------------------------------------------------ reference


def usable_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and math.isfinite(v) and abs(v) <= 1e100


def usable_last(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, bool | str):
        return True
    return isinstance(v, int) and -(2**63) <= v < 2**63


def reference(group: FeatureGroup, events: list[ParsedEvent], entity: str, t: int) -> dict[str, Any]:
    """Every feature of ``entity`` as of ``t``, from the raw events (in arrival order)."""
    mine = [e for e in events if e.entity == entity]
    out: dict[str, Any] = {}
    for spec in group.layout.features:
        if spec.kind == "last":
            best: tuple[int, Any] | None = None
            for e in mine:
                v = e.data.get(spec.field)
                if v is not None and usable_last(v) and (best is None or e.event_time_ms >= best[0]):
                    best = (e.event_time_ms, v)
            out[spec.name] = None if best is None else best[1]
            continue
        assert spec.window is not None
        r, n = spec.window.resolution_ms, spec.window.n_buckets
        bt = t // r
        inside = [e for e in mine if bt - n < e.event_time_ms // r <= bt]
        vals = [e.data.get(spec.field) for e in inside]
        if spec.kind == "distinct":
            texts = {canonical_text(v) for v in vals if v is not None} - {None}
            hashes = sorted({hash_text(x) for x in texts if x is not None})
            out[spec.name] = len(texts) if len(texts) <= 32 else round(kmv_estimate(tuple(hashes[:33])))
            continue
        xs = [float(v) for v in vals if usable_number(v)]
        agg = spec.aggregation
        if agg == "count":
            out[spec.name] = len(xs)
        elif agg == "sum":
            out[spec.name] = math.fsum(xs)
        elif not xs:
            out[spec.name] = None
        elif agg == "mean":
            out[spec.name] = math.fsum(xs) / len(xs)
        elif agg == "min":
            out[spec.name] = min(xs)
        elif agg == "max":
            out[spec.name] = max(xs)
        elif agg == "var":
            out[spec.name] = statistics.pvariance(xs)
        elif agg == "std":
            out[spec.name] = math.sqrt(statistics.pvariance(xs))
        out[f"__scale__{spec.name}"] = max((abs(x) for x in xs), default=0.0)
    return out


def assert_matches(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in got.items():
        expected = want[name]
        if isinstance(expected, float) and not name.endswith("_last"):
            scale = want.get(f"__scale__{name}", 0.0)
            if "_std_" in name or "_var_" in name:
                ok = math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)
            else:  # sums and means can cancel: tolerance relative to the data's magnitude
                ok = math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))
            assert ok, f"{name}: engine {value!r} != reference {expected!r}"
        else:
            assert value == expected and type(value) is type(expected), f"{name}: {value!r} != {expected!r}"


# --------------------------------------------------------------------- engine


def run(group: FeatureGroup, batches: Iterable[list[ParsedEvent]], states: dict[str, EntityState] | None = None) -> dict[str, EntityState]:
    states = {} if states is None else states
    for batch in batches:
        for entity, delta in build_deltas(group, batch).items():
            states[entity] = apply_delta(group, states.get(entity), delta)
    return states


def check_bounded(group: FeatureGroup, state: EntityState) -> None:
    assert state.newest_event_ms is not None
    assert state.skipped == {}
    for r, n in group.layout.ring_buckets.items():
        ring = state.rings[r]
        newest_bucket = state.newest_event_ms // r
        assert len(ring) <= n
        assert all(newest_bucket - n < b <= newest_bucket for b in ring)


# ----------------------------------------------------------------- strategies

AMOUNT = st.one_of(
    st.integers(-100_000, 100_000).map(lambda c: c / 100),
    st.integers(-1000, 1000),
    st.sampled_from([ABSENT, None, "12.5", float("nan"), float("inf"), True, 1e200]),
)
CATEGORY = st.one_of(
    st.sampled_from(["grocery", "fuel", "travel", "health"]),
    st.integers(0, 80),  # many distinct values: pushes windows past 32
    st.sampled_from([ABSENT, None, 2.0, False, ["x"]]),
)


@st.composite
def event_streams(draw: st.DrawFn) -> list[ParsedEvent]:
    base = draw(st.sampled_from([T0, -7_777]))  # negative times: floor division
    span = draw(st.sampled_from([300, 5_000, 60_000, 200_000]))
    size = draw(st.integers(0, 60))
    events = []
    for _ in range(size):
        data: dict[str, Any] = {}
        for field, strategy in (("amount", AMOUNT), ("category", CATEGORY), ("qty", st.integers(0, 5))):
            value = draw(strategy)
            if value is not ABSENT:
                data[field] = value
        entity = draw(st.sampled_from(["a", "b", "c"]))
        events.append(ParsedEvent(entity, base + draw(st.integers(0, span)), data))
    return events


def split(events: list[ParsedEvent], cuts: list[int]) -> list[list[ParsedEvent]]:
    points = sorted({min(c, len(events)) for c in cuts})
    bounds = [0, *points, len(events)]
    return [events[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


READ_DELAYS = st.one_of(
    st.sampled_from([0, 1, 99, 100, 999, 1_000, 1_499, 5_999, 6_000, 29_999, 30_000, 60_000, 120_000, 10**9]),
    st.integers(0, 200_000),
)

# ---------------------------------------------------------------------- tests


@settings(max_examples=120, deadline=None)
@given(event_streams(), st.lists(st.integers(0, 60), max_size=6), st.lists(READ_DELAYS, min_size=1, max_size=3))
def test_engine_matches_brute_force_reference(events: list[ParsedEvent], cuts: list[int], delays: list[int]) -> None:
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
    times = [x for x in (state.newest_event_ms if state else None, delta.newest_event_ms) if x is not None]
    return EntityState(rings, last, max(times) if times else None)


@settings(max_examples=60, deadline=None)
@given(event_streams(), st.lists(st.integers(0, 60), max_size=6), st.lists(READ_DELAYS, min_size=1, max_size=4))
def test_pruning_never_changes_a_read_at_or_after_the_newest_event(events: list[ParsedEvent], cuts: list[int], delays: list[int]) -> None:
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
            assert read_features(GROUP, state, t).values == read_features(GROUP, full[entity], t).values


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
    first = run(USER_SPEND, [[ev("u", T0 + i * 7_000, amount=float(i), category=f"c{i}") for i in range(30)]])["u"]
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
