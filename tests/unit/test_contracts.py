"""Contract loading and validation: JSON Schema, Avro, Confluent framing."""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from driftline.schemas import InvalidEvent, SchemaError, build_parser, load_contract
from driftline.schemas.avro_contract import AvroContract
from driftline.schemas.json_contract import JsonSchemaContract, decode_json, fast_engine_is_exact
from driftline.schemas.wire import ConfluentAvroDecoder, frame, schema_id_of

CONTRACTS = Path(__file__).resolve().parents[2] / "schemas" / "contracts"
TX_JSON = CONTRACTS / "transactions.schema.json"
TX_AVRO = CONTRACTS / "transactions.avsc"

GOOD = {
    "event_id": "e1",
    "user_id": "u1",
    "amount": 12.5,
    "category": "grocery",
    "currency": "EUR",
    "country": "DE",
    "event_time": 1_700_000_000_000,
}


def reason_of(fn, *args) -> str:
    with pytest.raises(InvalidEvent) as info:
        fn(*args)
    return info.value.rejection.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"a": "\\ud800"}', "invalid_utf8"),
        (b'{"a": 1', "malformed_json"),
        (b"", "malformed_json"),
        (b'{"a": NaN}', "non_finite_number"),
        (b'{"a": -Infinity}', "non_finite_number"),
        (b'{"a": 1e400}', "non_finite_number"),
    ],
)
def test_json_decode_failures_are_classified(payload: bytes, reason: str) -> None:
    assert reason_of(decode_json, payload) == reason


def test_shipped_json_contract_uses_fast_engine_and_names_the_field() -> None:
    contract = JsonSchemaContract.from_file(TX_JSON)
    assert contract.engine == "fastjsonschema"
    contract.validate(GOOD)
    with pytest.raises(InvalidEvent) as info:
        contract.validate({**GOOD, "amount": "12"})
    assert info.value.rejection.reason == "wrong_type"
    assert "$.amount" in info.value.rejection.message
    missing = {k: v for k, v in GOOD.items() if k != "category"}
    assert reason_of(contract.validate, missing) == "missing_field"
    assert reason_of(contract.validate, {**GOOD, "amount": -1}) == "schema_violation"


def test_2020_12_only_keywords_switch_to_the_exact_engine(tmp_path: Path) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"pair": {"type": "array", "prefixItems": [{"type": "integer"}]}},
        "unevaluatedProperties": False,
    }
    path = tmp_path / "s.json"
    path.write_bytes(orjson.dumps(schema))
    contract = JsonSchemaContract.from_file(path)
    assert contract.engine == "jsonschema"
    # fastjsonschema would accept both of these; 2020-12 does not.
    assert reason_of(contract.validate, {"pair": ["x"]}) == "wrong_type"
    assert reason_of(contract.validate, {"pair": [1], "extra": 1}) == "schema_violation"
    contract.validate({"pair": [1, "anything"]})


def test_tuple_items_and_remote_refs_are_not_fast_safe() -> None:
    assert not fast_engine_is_exact({"items": [{"type": "string"}]})
    assert not fast_engine_is_exact({"$ref": "https://example.com/x.json"})
    assert fast_engine_is_exact({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "strnig"}', "not a valid JSON Schema"),
    ],
)
def test_bad_json_schema_files_are_schema_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SchemaError, match=message) as info:
        load_contract(path)
    assert str(path) in str(info.value)


def test_missing_and_unknown_contract_files(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        load_contract(tmp_path / "nope.json")
    odd = tmp_path / "c.proto"
    odd.write_text("syntax")
    with pytest.raises(SchemaError, match="unknown contract type"):
        load_contract(odd)


def test_bad_avro_schema(tmp_path: Path) -> None:
    path = tmp_path / "bad.avsc"
    path.write_text('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')
    with pytest.raises(SchemaError, match="not a valid Avro schema"):
        load_contract(path)


def test_json_events_against_avro_contract() -> None:
    contract = AvroContract.from_file(TX_AVRO)
    contract.validate(GOOD)
    assert reason_of(contract.validate, {**GOOD, "amount": "12"}) == "wrong_type"
    assert (
        reason_of(contract.validate, {k: v for k, v in GOOD.items() if k != "user_id"})
        == "missing_field"
    )
    # nullable fields may be absent
    contract.validate({k: v for k, v in GOOD.items() if k != "country"})


def _avro_body(contract: AvroContract, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, contract.parsed, record)
    return buf.getvalue()


def test_confluent_wire_format_round_trip_and_failures() -> None:
    contract = AvroContract.from_file(TX_AVRO)
    decoder = ConfluentAvroDecoder({7: contract})
    body = _avro_body(contract, GOOD)
    value = frame(7, body)
    assert schema_id_of(value) == 7
    assert decoder.decode(value)["amount"] == 12.5
    assert reason_of(decoder.decode, frame(8, body)) == "unknown_schema_id"
    assert reason_of(decoder.decode, b"\x01" + value[1:]) == "bad_wire_format"
    assert reason_of(decoder.decode, b"\x00\x00") == "bad_wire_format"
    assert reason_of(decoder.decode, value[:-3]) == "avro_decode_error"
    assert reason_of(decoder.decode, value + b"\x00") == "avro_decode_error"


class FakeRegistry:
    """A schema lookup double (the real client is tested against an HTTP server)."""

    def __init__(self, contracts: dict[int, AvroContract]) -> None:
        self.contracts = contracts
        self.asked: list[int] = []

    def fetch(self, schema_id: int) -> AvroContract | None:
        self.asked.append(schema_id)
        return self.contracts.get(schema_id)


def test_unknown_ids_are_resolved_once_through_the_registry() -> None:
    contract = AvroContract.from_file(TX_AVRO)
    registry = FakeRegistry({42: contract})
    decoder = ConfluentAvroDecoder({}, registry)
    values = [frame(42, _avro_body(contract, GOOD)), frame(43, b"x"), b"junk"]
    assert decoder.unknown_ids(values) == {42, 43}
    decoder.resolve({42, 43})
    assert decoder.unknown_ids(values) == set()  # 43 is remembered as unresolvable
    assert decoder.decode(values[0])["user_id"] == "u1"
    assert reason_of(decoder.decode, values[1]) == "unknown_schema_id"
    assert sorted(registry.asked) == [42, 43]


def test_build_parser_checks_config_against_contract() -> None:
    common = {
        "encoding": "json",
        "contract_path": TX_JSON,
        "event_time_unit": "ms",
        "max_event_bytes": 1000,
    }
    with pytest.raises(SchemaError, match="entity key field 'account'"):
        build_parser(entity_key="account", event_time_field=None, **common)
    with pytest.raises(SchemaError, match="event time field 'ts'"):
        build_parser(entity_key="user_id", event_time_field="ts", **common)
    with pytest.raises(SchemaError, match="needs an Avro"):
        build_parser(
            **{**common, "encoding": "confluent-avro"}, entity_key="user_id", event_time_field=None
        )


# -- differential test: the fast engine agrees with draft 2020-12 -------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10**13)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.sampled_from(["grocery", "EUR", "DE", "e1", "u1"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=8,
)
events = st.fixed_dictionaries(
    {},
    optional={key: json_values | st.just(value) for key, value in GOOD.items()},
)


TX_CONTRACT = JsonSchemaContract.from_file(TX_JSON)
TX_EXACT = Draft202012Validator(TX_CONTRACT.schema)


@settings(max_examples=400, deadline=None)
@given(events)
def test_fast_engine_verdict_equals_draft_2020_12(event: dict) -> None:
    contract = TX_CONTRACT
    exact = TX_EXACT.is_valid(event)
    try:
        contract.validate(event)
        verdict = True
    except InvalidEvent:
        verdict = False
    assert verdict == exact
