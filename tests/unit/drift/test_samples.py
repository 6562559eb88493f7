"""Values-topic records: samples and acceptances round-trip, and nothing else passes for one."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.drift.samples import (
    MAX_BY_CHARS,
    MAX_SAMPLE_RECORD_BYTES,
    AcceptRequest,
    accept_doc,
    decode_accept,
    decode_samples,
    sample_docs,
)


def test_an_acceptance_round_trips_keyed_by_its_monitor() -> None:
    request = AcceptRequest("amount", "fr", 1_700_000_000_000, "alice")
    key, value = accept_doc(request)
    assert key == b"amount" and decode_accept(value) == request
    assert decode_samples(value) is None  # the runner tells the two kinds apart
    everything = AcceptRequest("amount", None, 1, "b" * 1000)
    assert decode_accept(accept_doc(everything)[1]) == everything._replace(by="b" * MAX_BY_CHARS)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"m": "a"}',
        b'{"m": "a", "accept": {"segment": null, "at_ms": "now", "by": "x"}}',
        b'{"m": "a", "accept": {"segment": 3, "at_ms": 1, "by": "x"}}',
        b'{"m": "a", "accept": {"segment": null, "at_ms": true, "by": "x"}}',
        b'{"m": 1, "accept": {"segment": null, "at_ms": 1, "by": "x"}}',
        b'{"m": "a", "accept": {"segment": null, "at_ms": 1}}',
        b'{"m": "a", "accept": [1]}',
        sample_docs("a", "tx", 0, [(1, 2, 3.0, None)])[0][1],
    ],
)
def test_anything_else_is_not_an_acceptance(value: bytes | None) -> None:
    assert decode_accept(value) is None


_segments = st.one_of(
    st.none(), st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.just(1.5)
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**40),
            st.integers(-(2**50), 2**50),
            st.floats(allow_nan=False, allow_infinity=False),
            _segments,
        ),
        min_size=1,
        max_size=60,
        unique_by=lambda s: s[0],
    )
)
def test_samples_round_trip_by_columns(samples: list[tuple[int, int, float, Any]]) -> None:
    samples.sort(key=lambda s: s[0])  # a partition batch is in offset order
    decoded: list[tuple[int, int, float, Any]] = []
    for key, value in sample_docs("amount", "tx", 2, samples):
        assert key == b"amount"
        got = decode_samples(value)
        assert got is not None
        name, source, partition, part = got
        assert (name, source, partition) == ("amount", "tx", 2)
        decoded += part
    assert decoded == samples
    assert all(type(x) is float for _, _, x, _ in decoded)


def test_a_large_batch_is_split_into_records_under_the_limit() -> None:
    samples = [(i, 1_700_000_000_000 + i, i / 7, f"country-{i % 50}") for i in range(40_000)]
    records = sample_docs("amount", "tx", 0, samples)
    assert len(records) > 1
    assert all(len(value) <= MAX_SAMPLE_RECORD_BYTES for _, value in records)
    back = [s for _, value in records for s in decode_samples(value)[3]]  # type: ignore[index]
    assert back == samples


def test_non_finite_values_arrive_as_nan_for_the_monitor_to_skip() -> None:
    samples = [(1, 10, math.nan, None), (2, 11, math.inf, None), (3, 12, 2.0, None)]
    got = decode_samples(sample_docs("a", "tx", 0, samples)[0][1])
    assert got is not None
    xs = [x for _, _, x, _ in got[3]]
    assert math.isnan(xs[0]) and math.isnan(xs[1]) and xs[2] == 2.0


def test_the_row_form_of_earlier_versions_is_still_read() -> None:
    doc = b'{"m": "a", "s": "tx", "p": 3, "v": [[1, 2, 3, "DE"], [2, 3, 4.5, null]]}'
    assert decode_samples(doc) == ("a", "tx", 3, [(1, 2, 3.0, "DE"), (2, 3, 4.5, None)])


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"[]",
        # the row form of earlier versions
        b'{"m": ["a"], "s": "tx", "p": 0, "v": []}',
        b'{"m": "a", "s": "tx", "p": 0, "v": [[1, 2]]}',
        b'{"m": "a", "s": "tx", "p": 0, "v": [["1", 2, 3.0, null]]}',
        b'{"m": "a", "s": "tx", "p": 0, "v": [[1, 2, true, null]]}',
        b'{"m": "a", "s": "tx", "p": 0, "v": [[1, 2, 3.0, {"x": 1}]]}',
        b'{"m": "a", "s": "tx", "p": 0, "v": [[2, 1, 1.0, null], [1, 1, 1.0, null]]}',
        # the column form
        b'{"m": "a", "s": "tx", "p": 0, "o": [1, 2], "t": [1], "x": [1.0, 2.0]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [2, 1], "t": [1, 2], "x": [1.0, 2.0]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1, 1], "t": [1, 2], "x": [1.0, 2.0]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1, true], "t": [1, 2], "x": [1.0, 2.0]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1], "t": [1.5], "x": [1.0]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1], "t": [1], "x": ["1"]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1], "t": [1], "x": [true]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1], "t": [1], "x": [1.0], "g": [[1]]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1], "t": [1], "x": [1.0], "g": []}',
        b'{"m": "a", "s": "tx", "p": 0, "o": [1], "t": [1]}',
        b'{"m": "a", "s": "tx", "p": 0, "o": {"1": 1}, "t": [1], "x": [1.0]}',
        b'{"m": "a", "s": "tx", "p": true, "o": [1], "t": [1], "x": [1.0]}',
    ],
)
def test_foreign_values_topic_records_are_not_sample_batches(value: bytes) -> None:
    assert decode_samples(value) is None
