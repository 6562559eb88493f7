"""msgspec's fast accept check never accepts what the contract refuses.

The check is one-sided: ``True`` skips the validator, so it must imply
validity under draft 2020-12 (jsonschema, the reference); ``False`` only
sends the event to the validator.  Hypothesis draws schemas of the subset
and objects (with duplicate keys, integers beyond 64 bits, ``1.0`` for
integers, ...) and checks the implication; the examples below check that
ordinary valid events do take the fast path, or it would be no use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from driftline.schemas.exceptions import InvalidEvent
from driftline.schemas.fast_check import compile_fast_check
from driftline.schemas.json_contract import JsonSchemaContract
from driftline.schemas.parser import JsonEventDecoder

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["a", "b-c", "class", "_x", "é", "f0"]
TEXT = st.sampled_from(["", "a", "AB", "ab", "ABC", "x1", "😀", "😀😀", "DE", " A"])
NUMBERS = st.sampled_from(
    [0, 1, -1, 2, 1.0, -0.0, 0.5, 2.5, 1e300, -1e300, 2**53, 2**53 + 1, 2**63, 2**64 + 7, 10]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), NUMBERS, TEXT, st.floats(allow_nan=False, allow_infinity=False)
)
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(TEXT, SCALARS, max_size=2)
)
TYPES = ["string", "number", "integer", "boolean", "null"]
BOUNDS = st.sampled_from([0, 1, -1, 0.5, 2, 2**52, 10])


@st.composite
def rules(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["any", "typed", "enum", "const"]))
    if kind == "any":
        return draw(st.sampled_from([{}, True, {"description": "d", "format": "email"}]))
    if kind in ("enum", "const"):
        strings = draw(st.lists(TEXT, min_size=1, max_size=3, unique=True))
        rule: dict[str, Any] = (
            {"enum": strings + ([None] if draw(st.booleans()) else [])}
            if kind == "enum"
            else {"const": strings[0]}
        )
        if draw(st.booleans()):
            rule["type"] = draw(st.sampled_from(["string", ["string", "null"], ["null", "string"]]))
        return rule
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True))
    rule = {"type": types[0] if len(types) == 1 and draw(st.booleans()) else types}
    if draw(st.booleans()):
        rule["minLength"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        rule["maxLength"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        rule["pattern"] = draw(st.sampled_from(["^[A-Z]{2}$", "a", "^x", "[0-9]"]))
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if draw(st.integers(0, 3)) == 0:
            rule[key] = draw(BOUNDS)
    return rule


@st.composite
def schemas(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: draw(rules()) for name in names},
        "required": draw(st.lists(st.sampled_from(names), unique=True)),
    }
    extra = draw(st.sampled_from([None, True, False]))
    if extra is not None:
        schema["additionalProperties"] = extra
    return schema


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A JSON object, maybe with repeated keys (orjson keeps the last)."""
    pairs = draw(st.lists(st.tuples(st.sampled_from([*NAMES, "zz"]), VALUES), max_size=6))
    body = ",".join(f"{orjson.dumps(k).decode()}:{_dumps(v)}" for k, v in pairs)
    return ("{" + body + "}").encode()


def _dumps(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)  # orjson writes 64-bit integers only
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{orjson.dumps(k).decode()}:{_dumps(v)}" for k, v in value.items())
            + "}"
        )
    return orjson.dumps(value).decode()


@settings(max_examples=1500, deadline=None)
@given(schema=schemas(), docs=st.lists(documents(), min_size=1, max_size=8))
def test_an_accepted_document_is_valid_for_the_contract(
    schema: dict[str, Any], docs: list[bytes]
) -> None:
    check = compile_fast_check(schema)
    assert check is not None, schema  # the strategy draws only schemas of the subset
    validator = Draft202012Validator(schema)
    for raw in docs:
        if check(raw):
            assert validator.is_valid(orjson.loads(raw)), (schema, raw)


@pytest.mark.parametrize(
    ("schema", "raw"),
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}}, b'{"a":"x","b":[1]}'),
        ({"type": "object", "properties": {"a": {"type": "number", "minimum": 0}}}, b'{"a":3}'),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            b'{"a":-4}',
        ),
        ({"type": "object", "properties": {"a": {"enum": ["x", None]}}}, b'{"a":null}'),
        ({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, b"{}"),
        (
            {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
            b'{"a":{"b":1}}',
        ),
    ],
)
def test_ordinary_valid_documents_take_the_fast_path(schema: dict[str, Any], raw: bytes) -> None:
    check = compile_fast_check(schema)
    assert check is not None and check(raw)
    assert Draft202012Validator(schema).is_valid(orjson.loads(raw))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "object"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "object", "properties": {"a": {"type": "number", "multipleOf": 2}}},
        {"type": "object", "properties": {"a": {"enum": [1, 2]}}},
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"type": "object", "properties": {"a": {"minimum": 1}}},
        {"type": "object", "properties": {"a": {"type": "number", "maximum": 2**60}}},
        {"type": "object", "required": ["not_a_property"]},
        {"properties": {"a": {"type": "string"}}},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ],
)
def test_rules_outside_the_subset_get_no_fast_check(schema: dict[str, Any]) -> None:
    assert compile_fast_check(schema) is None


def test_the_transactions_contract_is_checked_fast_and_explained_as_before() -> None:
    contract = JsonSchemaContract.from_file(ROOT / "schemas/contracts/transactions.schema.json")
    assert contract.fast_check is not None
    decoder = JsonEventDecoder(contract)
    event = {
        "event_id": "e1",
        "user_id": "u1",
        "amount": 12.5,
        "category": "grocery",
        "event_time": 1_700_000_000_000,
        "country": "DE",
        "note": {"free": ["form"]},
    }
    assert contract.fast_check(orjson.dumps(event))
    assert decoder.decode(orjson.dumps(event)) == event
    # what the fast check refuses is judged (and explained) by the validator
    for bad, reason in (
        ({**event, "amount": -1}, "schema_violation"),
        ({"user_id": "u"}, "missing_field"),
    ):
        raw = orjson.dumps(bad)
        assert not contract.fast_check(raw)
        with pytest.raises(InvalidEvent) as caught:
            decoder.decode(raw)
        assert caught.value.rejection.reason == reason
    # an integer event time written 1.0-style is valid (2020-12): the slow path says so
    slow = orjson.dumps({**event, "event_time": 1_700_000_000_000.0})
    assert not contract.fast_check(slow)
    assert decoder.decode(slow)["event_time"] == 1_700_000_000_000.0
