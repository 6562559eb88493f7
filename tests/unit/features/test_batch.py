"""The batch form of the window engine (features/batch.py) against the reference, build_deltas.

Same entities, buckets, counts, minima, maxima, newest times, last values and
skipped counts; means and m2 to float rounding relative to the bucket's
magnitude (the reference sums with math.fsum, the batch form in order).  Blobs decode with the codec,
so the store's format is the one the Lua script and every reader know.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.batch import build_encoded
from driftline.features.codec import decode_delta, encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas
from driftline.features.state import EncodedDelta, EntityState
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import GROUP, GROUP_CONFIG, event_streams

#: the reference test group (its rings derive from each other both ways) without its
#: distinct field: sketches take the reference path
VALUES_GROUP = FeatureGroup.from_config(
    {k: v for k, v in GROUP_CONFIG.items() if k != "distinct"} | {"name": "batch_test"}
)

#: values a producer may send for a value field, the unusable ones included
ODD = st.sampled_from(
    [
        None,
        "12.5",
        float("nan"),
        float("inf"),
        -float("inf"),
        True,
        False,
        1e200,
        -1e100,
        1e100,
        10**100,
        10**100 + 10**84,
        10**400,
        [1],
        {"a": 1},
    ]
)


def close(a: float, b: float, scale: float) -> bool:
    """Equal to rounding relative to the data's magnitude ``scale``: sums in another order
    can cancel differently (1e100 - 1e100 + 0.01), as the engine's own tests allow."""
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12 * max(1.0, scale))


def assert_same(group: FeatureGroup, got: EntityState, want: EntityState) -> None:
    assert got.newest_event_ms == want.newest_event_ms
    assert got.last == want.last
    assert got.skipped == want.skipped
    assert got.rings.keys() == want.rings.keys()
    for r, ring in want.rings.items():
        assert got.rings[r].keys() == ring.keys()
        for bid, stats in ring.items():
            for g, w in zip(got.rings[r][bid].summaries, stats.summaries, strict=True):
                assert (g.n, g.min, g.max) == (w.n, w.min, w.max)
                scale = max(abs(w.min), abs(w.max)) if w.n else 0.0
                assert close(g.mean, w.mean, scale), (g, w)
                assert close(g.m2, w.m2, w.n * scale * scale), (g, w)
            assert got.rings[r][bid].sketches == stats.sketches


@settings(max_examples=300, deadline=None)
@given(event_streams(max_size=80), st.data())
def test_batch_deltas_equal_the_reference(events: list[ParsedEvent], data: st.DataObject) -> None:
    # now and then a value no contract would let through, in any field
    for i in data.draw(st.lists(st.integers(0, max(len(events) - 1, 0)), max_size=4)):
        if events:
            field = data.draw(st.sampled_from(["amount", "qty"]))
            events[i].data[field] = data.draw(ODD)
    want = build_deltas(VALUES_GROUP, events)
    got = build_encoded(VALUES_GROUP, events)
    assert got is not None
    assert list(got) == list(want)  # the same entities, in the same order
    for entity, delta in got.items():
        assert isinstance(delta, EncodedDelta)
        assert_same(VALUES_GROUP, decode_delta(VALUES_GROUP, delta), want[entity])


@settings(max_examples=100, deadline=None)
@given(event_streams(max_size=40))
def test_blobs_are_what_the_codec_writes_for_those_buckets(events: list[ParsedEvent]) -> None:
    got = build_encoded(VALUES_GROUP, events)
    assert got is not None
    for delta in got.values():
        state = decode_delta(VALUES_GROUP, delta)
        for r, blob in delta.blobs.items():
            assert blob == encode_ring(VALUES_GROUP, state.rings[r])  # layout and order
        assert all(state.rings[r] == {} for r in state.rings if r not in delta.blobs)


def test_groups_with_sketches_and_odd_times_take_the_reference_path() -> None:
    event = ParsedEvent("u1", 1_000, {"amount": 1.0, "category": "x"})
    assert build_encoded(GROUP, [event]) is None  # a distinct field
    assert build_encoded(VALUES_GROUP, [event._replace(event_time_ms=2**60)]) is None
    assert build_encoded(VALUES_GROUP, [event._replace(event_time_ms=1.5)]) is None  # type: ignore[arg-type]
    assert build_encoded(VALUES_GROUP, []) == {}


def test_a_large_batch_of_many_entities() -> None:
    events = [
        ParsedEvent(
            f"u{i % 997}", 1_700_000_000_000 + 7 * i, {"amount": (i % 101) / 3, "qty": i % 5}
        )
        for i in range(20_000)
    ]
    want = build_deltas(VALUES_GROUP, events)
    got = build_encoded(VALUES_GROUP, events)
    assert got is not None and list(got) == list(want)
    for entity, delta in got.items():
        assert_same(VALUES_GROUP, decode_delta(VALUES_GROUP, delta), want[entity])
