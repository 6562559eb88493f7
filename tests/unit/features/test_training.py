"""Point-in-time training features against the brute-force reference: nothing after a row leaks in.

For random event streams and random row times (before the first event, on
event times, between and after them), every row's features equal the
reference computed from the events at or before the row's time only.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.engine import read_features
from driftline.features.training import PointInTimeJoin, point_in_time
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import GROUP, T0, assert_matches, event_streams, reference


@settings(max_examples=150, deadline=None)
@given(event_streams(max_size=60), st.data())
def test_each_row_sees_exactly_the_events_up_to_its_time(
    events: list[ParsedEvent], data: st.DataObject
) -> None:
    times = [e.event_time_ms for e in events]
    picks = st.one_of(
        st.sampled_from(times) if times else st.just(T0),  # on an event: it counts
        st.integers(min(times, default=T0) - 5_000, max(times, default=T0) + 300_000),
    )
    rows = data.draw(
        st.lists(st.tuples(st.sampled_from(["a", "b", "c", "nobody"]), picks), max_size=12)
    )
    shuffled = list(events)
    random.Random(len(rows)).shuffle(shuffled)  # the log's order is not event-time order
    got = point_in_time(GROUP, shuffled, rows)
    assert len(got) == len(rows)
    for (entity, t), vector in zip(rows, got, strict=True):
        assert vector.as_of_ms == t
        # in the order given: among events at the same time, the later one wins last
        seen = [e for e in shuffled if e.event_time_ms <= t]
        assert_matches(vector.values, reference(GROUP, seen, entity, t))
        mine = [e.event_time_ms for e in seen if e.entity == entity]
        assert vector.newest_event_ms == (max(mine) if mine else None)


def test_an_entity_without_events_gets_the_empty_values_of_an_online_read() -> None:
    event = ParsedEvent("a", T0, {"amount": 5.0, "category": "x"})
    early, missing = point_in_time(GROUP, [event], [("a", T0 - 1), ("zed", T0)])
    assert early.values == missing.values == read_features(GROUP, None, T0).values
    [on_time] = point_in_time(GROUP, [event], [("a", T0)])
    assert on_time.values["amount_count_1s"] == 1  # an event at the row's time counts


def test_an_event_after_the_row_never_leaks_in() -> None:
    events = [
        ParsedEvent("a", T0, {"amount": 1.0, "category": "x"}),
        ParsedEvent("a", T0 + 1, {"amount": 100.0, "category": "y"}),
    ]
    [row] = point_in_time(GROUP, events, [("a", T0)])
    assert row.values["amount_max_1m"] == 1.0
    assert row.values["amount_last"] == 1.0
    assert row.values["category_distinct_count_1m"] == 1


@settings(max_examples=150, deadline=None)
@given(event_streams(max_size=60), st.data())
def test_a_join_fed_in_chunks_folding_early_matches_the_reference(
    events: list[ParsedEvent], data: st.DataObject
) -> None:
    """As the training-set builder feeds it: a day at a time, entities folded every few events."""
    ordered = sorted(events, key=lambda e: e.event_time_ms)
    times = [e.event_time_ms for e in ordered]
    rows = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c", "nobody"]),
                st.integers(min(times, default=T0) - 5_000, max(times, default=T0) + 300_000),
            ),
            max_size=12,
        )
    )
    join = PointInTimeJoin(GROUP, rows, fold_every=data.draw(st.integers(1, 5)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ordered)), max_size=4)))
    start = 0
    for cut in [*cuts, len(ordered)]:
        join.feed(ordered[start:cut])
        start = max(start, cut)
    got = join.finish()
    for (entity, t), vector in zip(rows, got, strict=True):
        seen = [e for e in ordered if e.event_time_ms <= t]
        assert_matches(vector.values, reference(GROUP, seen, entity, t))


def test_a_join_refuses_events_out_of_event_time_order() -> None:
    join = PointInTimeJoin(GROUP, [("a", T0)])
    join.feed([ParsedEvent("a", T0, {"amount": 1.0})])
    with pytest.raises(ValueError, match="event-time order"):
        join.feed([ParsedEvent("a", T0 - 1, {"amount": 1.0})])


def test_a_join_forgets_an_entity_after_its_last_row() -> None:
    rows = [("a", T0), ("b", T0 + 10_000)]
    join = PointInTimeJoin(GROUP, rows)
    join.feed([ParsedEvent("a", T0, {"amount": 1.0}), ParsedEvent("b", T0 + 1, {"amount": 2.0})])
    join.feed([ParsedEvent("a", T0 + 2, {"amount": 3.0})])  # after a's only row: not kept
    assert join.entities == frozenset({"b"})
    a, b = join.finish()
    assert a.values["amount_count_1m"] == 1 and b.values["amount_count_1m"] == 1
