"""The feature registry's pure parts: records, feature descriptions, status, lineage, table."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from driftline.features.catalog import (
    Catalog,
    SchemaInfo,
    SourceInfo,
    build_registry,
    describe_features,
    key_space,
    lineage_text,
)
from driftline.features.definitions import FeatureGroup
from driftline.features.registry import DeployedVersion, group_from_definition, parse_records
from driftline.schemas.fields import field_types
from driftline.sinks.registry_store import _glob_escape
from driftline.streams.serve.registry import format_table

SPEND: dict[str, Any] = {
    "name": "spend",
    "version": 2,
    "source": "tx",
    "entity_key": "user_id",
    "description": "Spending of a user",
    "owner": "risk",
    "tags": ["payments"],
    "values": {"amount": ["sum", "count"]},
    "distinct": ["country"],
    "last": ["category", "flag"],
    "windows": ["5m", "1m"],
}
FINGERPRINT = "sha256:" + "ab" * 32
SOURCE = SourceInfo(
    name="tx",
    topic="transactions",
    entity_key="user_id",
    event_time="event_time",
    schema=SchemaInfo("transactions.schema.json", "json", FINGERPRINT),
    field_types={"amount": "number", "country": "string", "category": "string|null"},
)


def group(**changes: Any) -> FeatureGroup:
    return FeatureGroup.from_config({**SPEND, **changes})


def record(g: FeatureGroup, deployed: int | None = 1_700_000_000_000) -> DeployedVersion:
    return DeployedVersion(g.name, g.version, g.fingerprint(), g.canonical(), deployed)


def catalog(*groups: FeatureGroup) -> Catalog:
    return Catalog("dl", groups, {"tx": SOURCE})


# ------------------------------------------------------------------ records


def test_parse_records_reads_versions_and_reports_bad_fields() -> None:
    g = group()
    good = orjson.dumps(
        {"fingerprint": g.fingerprint(), "definition": g.canonical(), "first_deployed_ms": 5}
    )
    fields: dict[bytes | str, bytes | str] = {
        b"v2": good,
        "v10": orjson.dumps({"fingerprint": "f", "first_deployed_ms": True}),
        b"v1": b"{not json",
        b"v3": b'{"definition": {}}',
        b"latest": good,
    }
    versions, problems = parse_records("spend", fields)
    assert problems.pop(0).startswith("spend v1: not JSON (")
    assert [(v.version, v.fingerprint, v.first_deployed_ms) for v in versions] == [
        (2, g.fingerprint(), 5),
        (10, "f", None),  # a boolean is not a time
    ]
    assert versions[1].definition == {}
    assert problems == [
        "spend v3: expected an object with a fingerprint",
        "spend latest: not a version field (expected v<version>)",
    ]


def test_group_from_definition_round_trips_the_canonical_form() -> None:
    g = group()
    rebuilt = group_from_definition(g.canonical())
    assert rebuilt is not None and rebuilt.fingerprint() == g.fingerprint()
    assert rebuilt.feature_names() == g.feature_names()
    assert rebuilt.description == "" and rebuilt.owner == ""  # not recorded
    assert group_from_definition({}) is None
    assert group_from_definition({**g.canonical(), "windows": [["5m", 1, 1]]}) is None


# ------------------------------------------------------------------ features


def test_field_types_of_json_schema_and_avro() -> None:
    json_schema = {
        "properties": {
            "amount": {"type": "number"},
            "note": {"type": ["string", "null"]},
            "kind": {"enum": ["a", "b"]},
        }
    }
    assert field_types(json_schema, "jsonschema") == {
        "amount": "number",
        "note": "string|null",
        "kind": "any",
    }
    avro = {
        "type": "record",
        "fields": [
            {"name": "amount", "type": "double"},
            {"name": "note", "type": ["null", "string"]},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        ],
    }
    assert field_types(avro, "avro") == {
        "amount": "double",
        "note": "null|string",
        "at": "long(timestamp-millis)",
    }
    assert field_types({"properties": []}, "jsonschema") == {}


def test_describe_features_types_and_order() -> None:
    g = group()
    features = describe_features(g, SOURCE.field_types)
    assert tuple(f.name for f in features) == g.feature_names()
    by_name = {f.name: f for f in features}
    assert by_name["amount_count_1m"].as_dict() == {
        "name": "amount_count_1m",
        "kind": "value",
        "value_type": "integer",
        "aggregation": "count",
        "window": "1m",
        "window_ms": 60_000,
        "source_field": "amount",
    }
    assert by_name["amount_sum_5m"].value_type == "number"
    assert by_name["country_distinct_count_5m"].aggregation == "distinct_count"
    assert by_name["country_distinct_count_5m"].value_type == "integer"
    assert by_name["category_last"].value_type == "string|null"  # already nullable
    assert by_name["flag_last"].value_type == "scalar|null"  # not in the contract
    assert (by_name["flag_last"].window, by_name["flag_last"].window_ms) == (None, None)
    mean = describe_features(group(values={"amount": ["mean", "std"]}))
    assert {f.value_type for f in mean if f.kind == "value"} == {"number|null"}


# ------------------------------------------------------------------ status


def test_active_version_deployed_has_lineage() -> None:
    g = group()
    (entry,) = build_registry(catalog(g), [record(g)])
    assert (entry.status, entry.first_deployed_ms, entry.warnings) == (
        "active",
        1_700_000_000_000,
        (),
    )
    assert (entry.description, entry.owner, entry.tags) == (
        "Spending of a user",
        "risk",
        ("payments",),
    )
    assert entry.fields == ("amount", "country", "category", "flag")
    assert entry.key_space == "dl:fg:spend:v2:*" == key_space("dl", "spend", 2)
    doc = entry.as_dict()
    assert doc["lineage"] == {
        "topic": "transactions",
        "schema": {
            "file": "transactions.schema.json",
            "encoding": "json",
            "fingerprint": FINGERPRINT,
            "schema_ids": {},
        },
        "fields": ["amount", "country", "category", "flag"],
        "entity_key": "user_id",
        "event_time": "event_time",
        "feature_group": {"name": "spend", "version": 2, "fingerprint": g.fingerprint()},
        "redis_key_space": "dl:fg:spend:v2:*",
        "path": "transactions → transactions.schema.json (sha256:abababababab) → amount, "
        "country, category, flag → spend v2 → dl:fg:spend:v2:*",
        "contracts_seen": [],
    }
    assert orjson.loads(orjson.dumps(doc)) == doc  # JSON-able as is


def test_active_not_deployed_and_conflicting_versions_warn() -> None:
    g = group()
    (fresh,) = build_registry(catalog(g), [])
    assert fresh.first_deployed_ms is None
    assert fresh.warnings == ("not deployed yet: no worker has recorded this version in Redis",)
    other = group(windows=["1h"])
    conflicting = DeployedVersion("spend", 2, other.fingerprint(), other.canonical(), 1)
    (entry,) = build_registry(catalog(g), [conflicting])
    assert entry.status == "active" and "deployed with a different definition" in entry.warnings[0]
    assert entry.fingerprint == g.fingerprint()  # the config's definition is described


def test_versions_not_in_the_config_are_retired() -> None:
    current = group()
    old = group(version=1, values={"amount": ["max"]}, distinct=[], last=[], windows=["1h"])
    removed = FeatureGroup.from_config(
        {
            "name": "legacy",
            "version": 4,
            "source": "gone",
            "entity_key": "uid",
            "last": ["x"],
            "windows": ["1m"],
        }
    )
    broken = DeployedVersion("broken", 1, "f" * 64, {"name": "broken"}, None)
    entries = build_registry(
        catalog(current), [record(old, 7), record(current), record(removed, 9), broken]
    )
    assert [(e.name, e.version, e.status) for e in entries] == [
        ("broken", 1, "retired"),
        ("legacy", 4, "retired"),
        ("spend", 2, "active"),
        ("spend", 1, "retired"),
    ]
    _, legacy, _, spend_v1 = entries
    assert [f.name for f in spend_v1.features] == ["amount_max_1h"]
    assert (spend_v1.topic, spend_v1.schema, spend_v1.first_deployed_ms) == (
        "transactions",
        None,
        7,
    )
    assert spend_v1.key_space == "dl:fg:spend:v1:*"
    assert "schema unknown" in lineage_text(spend_v1)
    # its source is no longer configured: no topic, but its features are still known
    assert (legacy.topic, legacy.entity_key) == (None, "uid")
    assert [f.value_type for f in legacy.features] == ["scalar|null"]
    assert lineage_text(legacy).startswith("(source gone not configured) → schema unknown → x")
    assert entries[0].features == () and entries[0].warnings == (
        "recorded definition is unreadable: features unknown",
    )


# ------------------------------------------------------------------ table


def test_table_lists_rows_then_details() -> None:
    g = group()
    old = group(version=1, values={"amount": ["max"]}, distinct=[], last=[], windows=["1h"])
    text = format_table(build_registry(catalog(g), [record(g), record(old)]))
    lines = text.splitlines()
    assert lines[0].split() == [
        "GROUP",
        "VERSION",
        "STATUS",
        "SOURCE",
        "FEATURES",
        "FIRST",
        "DEPLOYED",
        "FINGERPRINT",
    ]
    assert lines[1].split() == [
        "spend",
        "2",
        "active",
        "tx",
        "8",
        "2023-11-14",
        "22:13:20Z",
        g.fingerprint()[:12],
    ]
    assert lines[2].split()[:5] == ["spend", "1", "retired", "tx", "1"]
    assert "spend v2 (active): Spending of a user" in lines
    assert "  owner risk; tags payments" in lines
    assert any(
        line.split() == ["amount_sum_1m", "number", "sum", "of", "amount", "over", "1m"]
        for line in lines
    )
    assert any(
        line.split() == ["category_last", "string|null", "last", "of", "category"] for line in lines
    )
    assert format_table([]).startswith("no feature groups")


@pytest.mark.parametrize(
    ("prefix", "escaped"),
    [("driftline", "driftline"), ("a*b?[c]\\", "a\\*b\\?\\[c\\]\\\\")],
)
def test_scan_pattern_escapes_the_prefix(prefix: str, escaped: str) -> None:
    assert _glob_escape(prefix) == escaped


def test_contract_history_and_deploy_time_lineage_are_read_back() -> None:
    g = group()
    old = group(version=1, values={"amount": ["max"]}, distinct=[], last=[], windows=["1h"])
    lineage = {
        "topic": "payments-v1",
        "schema": {
            "file": "transactions.schema.json",
            "encoding": "json",
            "fingerprint": "sha256:" + "cd" * 32,
            "schema_ids": {},
        },
    }
    doc = {"fingerprint": old.fingerprint(), "definition": old.canonical(), "lineage": lineage}
    fields: dict[bytes | str, bytes | str] = {
        b"v1": orjson.dumps({**doc, "first_deployed_ms": 3}),
        b"v1@sha256:" + b"cd" * 32: b"3",
        b"v1@sha256:" + b"ef" * 32: b"9",
        b"v2@" + FINGERPRINT.encode(): b"12",
        b"v2": orjson.dumps(
            {"fingerprint": g.fingerprint(), "definition": g.canonical(), "first_deployed_ms": 12}
        ),
        b"v2@sha256:bad": b"soon",
    }
    versions, problems = parse_records("spend", fields)
    assert problems == ["spend v2@sha256:bad: expected a time in ms"]
    v1, v2 = versions
    assert v1.contracts == (("sha256:" + "cd" * 32, 3), ("sha256:" + "ef" * 32, 9))
    assert v2.contracts == ((FINGERPRINT, 12),)
    active, retired = build_registry(catalog(g), versions)
    assert active.as_dict()["lineage"]["contracts_seen"] == [
        {"fingerprint": FINGERPRINT, "first_seen_ms": 12}
    ]
    # the retired version shows the topic and contract it was deployed with
    assert retired.status == "retired" and retired.topic == "payments-v1"
    assert retired.schema is not None and retired.schema.fingerprint == "sha256:" + "cd" * 32
    assert "payments-v1 → transactions.schema.json (sha256:cdcdcdcdcdcd)" in lineage_text(retired)
    assert len(retired.contracts_seen) == 2


def test_retired_versions_are_listed_until_their_keys_expire() -> None:
    current = group()
    old = group(version=1, values={"amount": ["max"]}, distinct=[], last=[], windows=["1h"])
    fields: dict[bytes | str, bytes | str] = {
        b"v1": orjson.dumps(
            {
                "fingerprint": old.fingerprint(),
                "definition": old.canonical(),
                "first_deployed_ms": 1,
            }
        ),
        b"v1:last_write_ms": b"1000000",
        b"v2": orjson.dumps(
            {"fingerprint": current.fingerprint(), "definition": current.canonical()}
        ),
        b"v2:last_write_ms": b"soon",
    }
    versions, problems = parse_records("spend", fields)
    assert problems == ["spend v2:last_write_ms: expected a time in ms"]
    expires = 1_000_000 + old.ttl_ms
    listed = build_registry(catalog(current), versions, now_ms=expires - 1)
    retired = [e for e in listed if e.status == "retired"]
    assert [(e.version, e.last_write_ms, e.keys_expire_ms) for e in retired] == [
        (1, 1_000_000, expires)
    ]
    assert "keys expire by" in format_table(listed)
    later = build_registry(catalog(current), versions, now_ms=expires + 1)
    assert [(e.version, e.status) for e in later] == [(2, "active")]  # v1's keys are gone
    # a version never recorded as written stays listed (its expiry is unknown)
    unknown = dataclasses.replace(versions[0], last_write_ms=None)
    assert len(build_registry(catalog(current), [unknown], now_ms=10**15)) == 2


async def test_registry_reader_caches_the_scan_and_never_caches_a_failure() -> None:
    from driftline.sinks.registry_store import MemoryRegistryStore
    from driftline.streams.serve.registry import RegistryReader

    store = MemoryRegistryStore()
    clock = [0.0]
    reader = RegistryReader(
        store,
        catalog(group()),
        cache_s=30.0,
        monotonic=lambda: clock[0],
        now_ms=lambda: 1_700_000_000_000,
    )
    store.fail_next = 1
    with pytest.raises(ConnectionError):
        await reader.entries()
    [entry] = await reader.entries()  # the failure was not cached: read again
    assert (entry["name"], entry["status"], entry["first_deployed_ms"]) == ("spend", "active", None)
    store.record(group(), now_ms=1_699_999_000_000)
    clock[0] = 29.0
    assert (await reader.entries())[0]["first_deployed_ms"] is None  # cached for 30 s
    clock[0] = 30.0
    assert (await reader.entries())[0]["first_deployed_ms"] == 1_699_999_000_000
    store.record(group(version=3))  # a version no longer configured: listed as retired
    clock[0] = 61.0
    assert [(e["version"], e["status"]) for e in await reader.entries()] == [
        (3, "retired"),
        (2, "active"),
    ]
