"""Every record gets a verdict: hostile bytes through the real parsers, no exception escapes.

The parsers here are the ones the worker builds (the shipped JSON Schema and
Avro contracts); a verdict is either a valid event or a rejection whose
reason is one of :data:`driftline.schemas.REASONS`.  Time is bounded by pytest's
timeout, never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.schemas import REASONS, EventParser, build_parser
from driftline.schemas.wire import frame
from driftline.streams.worker.records import Classified, RawRecord, classify

CONTRACTS = Path(__file__).resolve().parents[2] / "schemas" / "contracts"
MiB = 1 << 20


def parser_for(
    contract: str, encoding: str = "json", max_event_bytes: int = MiB, **extra: Any
) -> EventParser:
    return build_parser(
        encoding=encoding,
        contract_path=CONTRACTS / contract,
        entity_key="user_id",
        event_time_field="event_time",
        event_time_unit="ms",
        max_event_bytes=max_event_bytes,
        **extra,
    )


def json_parser(max_event_bytes: int = MiB) -> EventParser:
    return parser_for("transactions.schema.json", max_event_bytes=max_event_bytes)


PARSERS = {"jsonschema": json_parser(), "avro-json": parser_for("transactions.avsc")}
AVRO = parser_for(
    "transactions.avsc", "confluent-avro", schema_ids={1: CONTRACTS / "transactions.avsc"}
)


def verdicts(parser: EventParser, values: list[bytes | None]) -> Classified:
    records = [
        RawRecord("tx", 0, offset, 1_700_000_000_000, None, value, [])
        for offset, value in enumerate(values)
    ]
    out = classify(parser, records)
    judged = sorted([r.offset for r in out.valid_records] + [r.offset for r, _ in out.rejected])
    assert judged == list(range(len(values)))  # each record exactly one verdict
    for _, rejection in out.rejected:
        assert rejection.reason in REASONS
        assert rejection.stage == REASONS[rejection.reason]
    return out


def reason_of(parser: EventParser, value: bytes | None) -> str:
    out = verdicts(parser, [value])
    assert not out.valid, value[:80] if value else value
    return out.rejected[0][1].reason


def nested(depth: int, opener: bytes = b'{"a":', closer: bytes = b"}") -> bytes:
    return opener * depth + b"1" + closer * depth


def good(**extra: Any) -> dict[str, Any]:
    event = {
        "event_id": "e-1",
        "user_id": "u-1",
        "amount": 12.5,
        "currency": "EUR",
        "country": "DE",
        "category": "grocery",
        "event_time": 1_700_000_000_000,
    }
    event.update(extra)
    return event


POISON: list[tuple[str, bytes | None, set[str]]] = [
    ("nested 1,100 deep", nested(1_100), {"too_deep"}),
    ("nested 100,000 deep", nested(100_000), {"oversize", "too_deep"}),
    ("array nested 200,000 deep", b"[" * 200_000, {"too_deep"}),
    ("deep but within orjson's limit", nested(1_000), {"not_an_object", "missing_field"}),
    ("empty", b"", {"malformed_json"}),
    ("null value", None, {"malformed_json"}),
    ("JSON null", b"null", {"not_an_object"}),
    ("binary", bytes(range(256)) * 8, {"invalid_utf8"}),
    ("1e400", b'{"amount": 1e400}', {"non_finite_number"}),
    ("NaN", b'{"amount": NaN}', {"non_finite_number"}),
    ("-Infinity", b'{"amount": -Infinity}', {"non_finite_number"}),
    ("escaped lone surrogate", b'{"user_id": "\\ud800"}', {"invalid_utf8"}),
    ("raw surrogate bytes", b'{"user_id": "\xed\xa0\x80"}', {"invalid_utf8"}),
    ("10 MB string", orjson.dumps(good(category="x" * 10_000_000)), {"oversize"}),
    ("100 MB value", b"{" + b" " * (100 * MiB) + b"}", {"oversize"}),
]


@pytest.mark.parametrize("name, value, reasons", POISON, ids=[p[0] for p in POISON])
@pytest.mark.parametrize("contract", sorted(PARSERS))
def test_poison_gets_a_verdict(
    contract: str, name: str, value: bytes | None, reasons: set[str]
) -> None:
    reason = reason_of(PARSERS[contract], value)
    assert reason in reasons, (name, reason)


def test_poison_between_good_events_leaves_the_good_ones_valid() -> None:
    values: list[bytes | None] = []
    for i, (_, poison, _) in enumerate(POISON):
        values.append(orjson.dumps(good(event_id=f"e-{i}")))
        values.append(poison)
    out = verdicts(json_parser(), values)
    assert [r.offset for r in out.valid_records] == list(range(0, len(values), 2))


def test_big_structures_within_a_raised_limit_get_a_verdict() -> None:
    parser = json_parser(max_event_bytes=16 * MiB)
    million = orjson.dumps(good(tags=[0] * 1_000_000))
    wide = orjson.dumps(good(**{f"k{i}": i for i in range(100_000)}))
    out = verdicts(parser, [million, wide, b"[" + b"0," * 1_000_000 + b"0]"])
    assert len(out.valid) + len(out.rejected) == 3
    assert out.rejected[-1][1].reason == "not_an_object"


def test_avro_binary_poison_gets_a_verdict() -> None:
    values: list[bytes | None] = [
        b"",
        None,
        b"\x00",
        b"\x01\x00\x00\x00\x01abc",
        frame(1, b""),
        frame(1, b"\xff" * 64),
        frame(7, b"abc"),
        frame(1, bytes(range(256)) * 1000),
    ]
    out = verdicts(AVRO, values)
    assert not out.valid


def test_a_parser_bug_dead_letters_the_record_as_internal_error() -> None:
    class Exploding:
        def decode(self, value: bytes) -> dict[str, Any]:
            if value == b"boom":
                raise KeyError("a bug")
            return orjson.loads(value)  # type: ignore[no-any-return]

    parser = EventParser(Exploding(), entity_key="user_id")
    out = verdicts(parser, [orjson.dumps(good()), b"boom", orjson.dumps(good())])
    assert [r.offset for r in out.valid_records] == [0, 2]
    [(record, rejection)] = out.rejected
    assert (record.offset, rejection.reason, rejection.stage) == (1, "internal_error", "internal")


def test_rejection_messages_do_not_quote_the_value() -> None:
    secret = "alice@example.com"
    for value in (
        orjson.dumps(good(amount=secret)),
        orjson.dumps(good(currency=secret)),
        orjson.dumps(good(event_time=secret)),
        orjson.dumps(good(event_time=f"{secret}T00:00:00")),
    ):
        for contract, parser in PARSERS.items():
            out = verdicts(parser, [value])
            if contract == "jsonschema":
                assert out.rejected  # every one of these breaks the JSON Schema contract
            for _, rejection in out.rejected:
                assert secret not in rejection.message, rejection


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values,
        "user_id": json_values,
        "amount": json_values,
        "currency": json_values,
        "country": json_values,
        "category": json_values,
        "event_time": json_values | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.binary(max_size=300) | st.none(), max_size=8))
def test_any_bytes_get_a_verdict(values: list[bytes | None]) -> None:
    for parser in (*PARSERS.values(), AVRO):
        verdicts(parser, values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(json_values | event_like, min_size=1, max_size=8))
def test_any_json_gets_a_verdict(docs: list[Any]) -> None:
    # the stdlib writes integers of any size (orjson refuses those over 64 bits)
    values = [json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass") for doc in docs]
    for parser in PARSERS.values():
        verdicts(parser, values)
