"""The serving read path: features straight from ring blobs equal the engine's read."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.codec import encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import read_features
from driftline.features.exceptions import CodecError
from driftline.features.reader import read_rings
from driftline.features.state import BucketStats, EntityState
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import GROUP, event_streams, run, split
from tests.unit.features.test_codec import TWO_BY_ONE, rings


def same(a: Any, b: Any) -> bool:
    """Equal, and floats bit for bit (``-0.0`` is not ``0.0``)."""
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def presence(group: FeatureGroup, state: EntityState | None, as_of_ms: int) -> dict[str, Any]:
    """Brute force: which fields have data in the buckets each window covers."""
    nv, nd = len(group.layout.value_fields), len(group.layout.distinct_fields)
    out = {}
    for r, windows in group.layout.ring_windows:
        ring = state.rings.get(r, {}) if state is not None else {}
        top = as_of_ms // r
        for w in windows:
            inside = [s for b, s in ring.items() if top - w.n_buckets < b <= top]
            out[w.name] = (
                tuple(any(s.summaries[i].n > 0 for s in inside) for i in range(nv)),
                tuple(any(s.sketches[j] for s in inside) for j in range(nd)),
            )
    return out


def check(group: FeatureGroup, state: EntityState | None, as_of_ms: int) -> None:
    blobs = {r: encode_ring(group, ring) for r, ring in state.rings.items()} if state else {}
    last = state.last if state is not None else {}
    newest = state.newest_event_ms if state is not None else None
    reading = read_rings(group, blobs, last, newest, as_of_ms)
    expected = read_features(group, state, as_of_ms)
    assert reading.vector.as_of_ms == expected.as_of_ms
    assert reading.vector.newest_event_ms == expected.newest_event_ms
    assert list(reading.vector.values) == list(expected.values)
    for name, value in expected.values.items():
        assert same(reading.vector.values[name], value), (name, reading.vector.values[name], value)
    assert reading.present == presence(group, state, as_of_ms)


@settings(max_examples=150, deadline=None)
@given(event_streams(), st.lists(st.integers(0, 60), max_size=3), st.integers(-3_000, 150_000))
def test_engine_states_read_the_same_from_blobs(
    events: list[ParsedEvent], cuts: list[int], after_ms: int
) -> None:
    states = run(GROUP, split(events, cuts))
    for state in states.values():
        assert state.newest_event_ms is not None
        check(GROUP, state, state.newest_event_ms + after_ms)
    check(GROUP, None, 1_000)  # an unknown entity


@settings(max_examples=300, deadline=None)
@given(rings(TWO_BY_ONE), st.integers(-(2**52), 2**52))
def test_any_ring_reads_the_same_from_its_blob(ring: dict[int, BucketStats], as_of: int) -> None:
    # sketches of up to 33 hashes per bucket: the union is pruned on the way
    [(r, _)] = TWO_BY_ONE.layout.ring_windows
    state = EntityState({r: ring}, {}, None)
    check(TWO_BY_ONE, state, as_of * r if ring else as_of)
    if ring:  # as of the newest bucket, so the window covers some of them
        check(TWO_BY_ONE, state, max(ring) * r)


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"\x00" * 7, "whole number of doubles"),
        (struct.pack("<3d", 1, 1, 1.5), "truncated bucket"),
        (struct.pack("<12d", 0.5, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0), "bucket id at double 0"),
        (struct.pack("<12d", 7, -1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0), "bad count"),
        (struct.pack("<12d", 7, 1.5, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0), "bad count"),
        (struct.pack("<12d", 7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 34), "bad sketch size 34"),
        (struct.pack("<12d", 7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 2), "bad sketch size 2"),
        (
            struct.pack("<24d", *([7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0] * 2)),
            "bucket 7 appears twice",
        ),
    ],
)
def test_malformed_blobs_are_refused(blob: bytes, needle: str) -> None:
    [(r, _)] = TWO_BY_ONE.layout.ring_windows
    with pytest.raises(CodecError, match=needle):
        read_rings(TWO_BY_ONE, {r: blob}, {}, None, 7 * r)
