"""The ring codec: the documented byte layout, round trips, and malformed input."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.codec import decode_last, decode_ring, encode_last, encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.exceptions import CodecError
from driftline.features.sketch import HASH_MASK, kmv_of
from driftline.features.state import BucketStats, LastValue
from driftline.features.stats import EMPTY, Summary, summary_of_values
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import GROUP, event_streams, run, split

TWO_BY_ONE = FeatureGroup.from_config(
    {
        "name": "codec",
        "version": 1,
        "source": "s",
        "entity_key": "id",
        "values": {"amount": ["sum"], "fee": ["max"]},
        "distinct": ["category"],
        "windows": ["1m"],
    }
)


def test_layout_is_exactly_as_documented() -> None:
    ring = {
        28_333_334: BucketStats((Summary(2, 3.0, 2.0, 2.0, 4.0), EMPTY), ((5, 9),)),
        28_333_333: BucketStats(
            (Summary(1, 1.5, 0.0, 1.5, 1.5), Summary(1, 0.25, 0.0, 0.25, 0.25)), ((),)
        ),
    }
    blob = encode_ring(TWO_BY_ONE, ring)
    expected = struct.pack(
        "<26d",
        # first bucket (ascending id): id, amount summary, fee summary, k=0
        28_333_333, 1, 1.5, 0.0, 1.5, 1.5, 1, 0.25, 0.0, 0.25, 0.25, 0,
        # second bucket: id, amount summary, empty fee summary, k=2 and its hashes
        28_333_334, 2, 3.0, 2.0, 2.0, 4.0, 0, 0.0, 0.0, math.inf, -math.inf, 2, 5, 9,
    )  # fmt: skip
    assert len(blob) == 8 * (12 + 14)
    assert blob == expected
    assert decode_ring(TWO_BY_ONE, blob) == ring
    assert encode_ring(TWO_BY_ONE, {}) == b"" and decode_ring(TWO_BY_ONE, b"") == {}


FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
SUMMARIES = st.one_of(
    st.just(EMPTY),
    st.lists(FLOATS.filter(lambda x: abs(x) < 1e100), min_size=1, max_size=5).map(
        summary_of_values
    ),
    st.builds(Summary, st.integers(1, 2**40), FLOATS, FLOATS.map(abs), FLOATS, FLOATS),
)
SKETCHES = st.lists(st.integers(0, HASH_MASK), max_size=60).map(kmv_of)


@st.composite
def rings(draw: st.DrawFn, group: FeatureGroup) -> dict[int, BucketStats]:
    nv, nd = len(group.layout.value_fields), len(group.layout.distinct_fields)
    ids = draw(st.sets(st.integers(-(2**52), 2**52), max_size=8))
    return {
        b: BucketStats(
            tuple(draw(SUMMARIES) for _ in range(nv)), tuple(draw(SKETCHES) for _ in range(nd))
        )
        for b in ids
    }


@given(rings(TWO_BY_ONE))
def test_round_trip_of_any_ring(ring: dict[int, BucketStats]) -> None:
    blob = encode_ring(TWO_BY_ONE, ring)
    assert len(blob) % 8 == 0
    assert decode_ring(TWO_BY_ONE, blob) == ring
    assert encode_ring(TWO_BY_ONE, decode_ring(TWO_BY_ONE, blob)) == blob  # canonical


@settings(max_examples=40, deadline=None)
@given(event_streams(), st.lists(st.integers(0, 60), max_size=3))
def test_round_trip_of_engine_state(events: list[ParsedEvent], cuts: list[int]) -> None:
    for state in run(GROUP, split(events, cuts)).values():
        for ring in state.rings.values():
            assert decode_ring(GROUP, encode_ring(GROUP, ring)) == ring
        assert decode_last(encode_last(state.last)) == state.last


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"\x00" * 7, "whole number of doubles"),
        (struct.pack("<3d", 1, 1, 1.5), "truncated bucket"),
        (
            struct.pack("<12d", 0.5, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0),
            "bucket id at double 0 is not an integer",
        ),
        (struct.pack("<12d", 7, -1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0), "negative count"),
        (struct.pack("<12d", 7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 34), "bad sketch size 34"),
        (struct.pack("<12d", 7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 2), "bad sketch size 2"),
        (struct.pack("<14d", 7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 2, 9, 5), "not ascending"),
        (struct.pack("<13d", 7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 2.0**52), "not ascending 52-bit"),
        (
            struct.pack("<24d", *([7, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0] * 2)),
            "bucket 7 appears twice",
        ),
    ],
)
def test_malformed_rings_are_rejected(blob: bytes, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        decode_ring(TWO_BY_ONE, blob)


def test_encode_checks_the_shape() -> None:
    with pytest.raises(CodecError, match="needs 2 and 1"):
        encode_ring(TWO_BY_ONE, {1: BucketStats((EMPTY,), ((),))})
    with pytest.raises(CodecError, match="not exact as a double"):
        encode_ring(TWO_BY_ONE, {2**53: BucketStats((EMPTY, EMPTY), ((),))})


def test_last_codec() -> None:
    last: dict[str, tuple[int, LastValue]] = {
        "category": (1_700_000_000_000, "fuel"),
        "amount": (1_700_000_000_001, 12.5),
        "ok": (3, True),
    }
    blob = encode_last(last)
    assert (
        blob == b'{"amount":[1700000000001,12.5],"category":[1700000000000,"fuel"],"ok":[3,true]}'
    )
    assert decode_last(blob) == last
    for bad in (b"nope", b"[1]", b'{"a":[1]}', b'{"a":[true,1]}', b'{"a":[1,[2]]}'):
        with pytest.raises(CodecError):
            decode_last(bad)
