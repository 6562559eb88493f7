"""Values-topic records: acceptances round-trip, and nothing else passes for one."""

from __future__ import annotations

import pytest

from driftline.drift.samples import (
    MAX_BY_CHARS,
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
