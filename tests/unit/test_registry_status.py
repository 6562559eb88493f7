"""The status of each feature group version (pure): active, ready, backfilling, warming, retired."""

from __future__ import annotations

from typing import Any

import orjson

from driftline.features.catalog import (
    Catalog,
    SchemaInfo,
    SourceInfo,
    backfill_text,
    build_registry,
    count_text,
    served_version,
)
from driftline.features.definitions import FeatureGroup
from driftline.features.registry import BackfillProgress, parse_records, version_record
from driftline.streams.serve.models import Registry
from driftline.streams.serve.registry import format_table

T0 = 1_700_000_000_000
SOURCE = SourceInfo(
    name="tx",
    topic="transactions",
    entity_key="user_id",
    event_time="event_time",
    schema=SchemaInfo("transactions.schema.json", "json", "sha256:" + "ab" * 32),
    field_types={"amount": "number"},
)


def group(version: int, windows: list[str] | None = None) -> FeatureGroup:
    return FeatureGroup.from_config(
        {
            "name": "spend",
            "version": version,
            "source": "tx",
            "entity_key": "user_id",
            "values": {"amount": ["sum"] if version == 1 else ["sum", "mean"]},
            "windows": windows or ["1h"],
        }
    )


V1, V2 = group(1), group(2)
TTL = V2.ttl_ms  # 1h + 30 s of allowed lateness


def catalog(*groups: FeatureGroup) -> Catalog:
    return Catalog("dl", groups, {"tx": SOURCE})


def hash_of(
    *deployed: tuple[FeatureGroup, int],
    active: int | None = None,
    backfills: dict[int, BackfillProgress] | None = None,
) -> dict[bytes | str, bytes | str]:
    """The registry hash as workers, ``driftline backfill`` and ``registry activate`` write it."""
    fields: dict[bytes | str, bytes | str] = {
        f"v{g.version}".encode(): orjson.dumps(version_record(g, at)) for g, at in deployed
    }
    for version, progress in (backfills or {}).items():
        fields[f"v{version}:backfill".encode()] = orjson.dumps(progress.as_dict())
    if active is not None:
        fields[b"active"] = str(active).encode()
    return fields


def statuses(cat: Catalog, fields: dict[bytes | str, bytes | str], now_ms: int | None) -> Any:
    versions, problems = parse_records("spend", fields)
    assert problems == []
    entries = build_registry(cat, versions, now_ms)
    return {e.version: (e.status, e.active) for e in entries}, {e.version: e for e in entries}


def running(events: int = 1_234_567, total: int | None = 3_400_000) -> BackfillProgress:
    return BackfillProgress("running", events, total, T0 - 86_400_000, T0, T0 + 5_000)


def test_served_version_is_the_activated_one_if_configured_else_the_lowest() -> None:
    assert served_version([2, 1, 3], None) == 1
    assert served_version([2, 1, 3], 3) == 3
    assert served_version([2, 1], 5) == 1  # names a version not in the config
    assert served_version([], 1) is None


def test_without_an_active_field_the_lowest_configured_version_is_active() -> None:
    status, entries = statuses(catalog(V1, V2), hash_of((V1, T0), (V2, T0)), T0 + 1)
    assert status == {1: ("active", True), 2: ("warming", False)}
    assert "lowest configured one is" in entries[1].status_detail
    # one configured version, not even deployed yet: it is what serving reads
    status, entries = statuses(catalog(V2), {}, T0)
    assert status == {2: ("active", True)}


def test_the_active_field_names_the_served_version() -> None:
    fields = hash_of((V1, T0), (V2, T0), active=2)
    status, entries = statuses(catalog(V1, V2), fields, T0 + TTL)
    assert status == {2: ("active", True), 1: ("ready", False)}  # v1: deployed a TTL ago
    assert entries[2].status_detail == "served: the registry's active field names it"
    assert entries[2].as_dict()["active"] is True and entries[1].as_dict()["active"] is False


def test_an_active_field_naming_an_unconfigured_version_falls_back_to_the_lowest() -> None:
    v3 = group(3, ["5m"])
    fields = hash_of((V1, T0), (V2, T0), (v3, T0), active=3)
    status, entries = statuses(catalog(V1, V2), fields, T0 + 1)
    assert status == {3: ("retired", False), 2: ("warming", False), 1: ("active", True)}
    assert any("serving reads v1" in w for w in entries[3].warnings)
    # the field names a version nobody ever recorded: the same fallback
    status, _ = statuses(catalog(V1, V2), hash_of((V1, T0), active=7), T0)
    assert status == {1: ("active", True), 2: ("warming", False)}


def test_warming_until_the_ttl_has_passed_since_the_first_deployment() -> None:
    fields = hash_of((V1, T0 - 10 * TTL), (V2, T0))
    status, entries = statuses(catalog(V1, V2), fields, T0 + TTL - 1)
    assert status[2] == ("warming", False)
    warming = entries[2]
    assert warming.ready_by_ms == T0 + TTL
    assert warming.as_dict()["ready_by_ms"] == T0 + TTL
    assert "ready by itself at 2023-11-14 23:13:50Z" in warming.status_detail
    assert (
        "run driftline backfill --group spend --version 2 to make it ready sooner"
        in warming.status_detail
    )
    status, entries = statuses(catalog(V1, V2), fields, T0 + TTL)
    assert status[2] == ("ready", False) and entries[2].ready_by_ms is None
    assert "live events alone have filled every window" in entries[2].status_detail
    # without a clock only a finished backfill makes a version ready
    status, _ = statuses(catalog(V1, V2), fields, None)
    assert status[2] == ("warming", False)


def test_not_deployed_is_warming_with_no_time_to_wait_for() -> None:
    status, entries = statuses(catalog(V1, V2), hash_of((V1, T0)), T0 + 100 * TTL)
    assert status[2] == ("warming", False)
    assert entries[2].ready_by_ms is None and "not deployed yet" in entries[2].status_detail


def test_a_running_backfill_is_backfilling_with_its_progress() -> None:
    # a long-deployed version that is being backfilled is still backfilling
    fields = hash_of((V1, T0), (V2, T0 - 10 * TTL), backfills={2: running()})
    status, entries = statuses(catalog(V1, V2), fields, T0)
    assert status[2] == ("backfilling", False)
    entry = entries[2]
    assert entry.status_detail == "backfill running: 1.2M of 3.4M events"
    assert entry.as_dict()["backfill"] == running().as_dict()
    table = format_table(list(entries.values()))
    assert "backfilling (running: 1.2M of 3.4M events)" in table
    assert "  backfill running: 1.2M of 3.4M events (from 2023-11-13 22:13:20Z;" in table


def test_a_finished_backfill_is_ready_at_once() -> None:
    done = BackfillProgress("done", 3_400_000, 3_400_000, T0 - 86_400_000, T0, T0 + 60_000)
    fields = hash_of((V1, T0), (V2, T0), backfills={2: done})
    status, entries = statuses(catalog(V1, V2), fields, T0 + 1)
    assert status[2] == ("ready", False)
    assert entries[2].status_detail == "ready to activate: backfill done: 3.4M of 3.4M events"
    # the active version stays active whatever its backfill says
    fields = hash_of((V1, T0), (V2, T0), active=2, backfills={2: running()})
    status, _ = statuses(catalog(V1, V2), fields, T0 + 1)
    assert status == {2: ("active", True), 1: ("warming", False)}


def test_counts_for_people() -> None:
    assert [count_text(n) for n in (0, 999, 1_000, 12_345, 1_234_567)] == [
        "0",
        "999",
        "1.0k",
        "12.3k",
        "1.2M",
    ]
    assert backfill_text(running(5, None)) == "running: 5 events"


def test_entries_conform_to_the_served_model() -> None:
    v3 = group(3, ["5m"])
    fields = hash_of((V1, T0), (V2, T0), (v3, T0), active=1, backfills={2: running()})
    _, entries = statuses(catalog(V1, V2), fields, T0)
    doc = {"groups": [e.as_dict() for e in entries.values()]}
    assert Registry.model_validate(doc).model_dump(by_alias=True) == doc


def test_a_version_served_before_and_still_configured_is_ready() -> None:
    """Switching back is instant: the workers kept writing the version it served."""
    cat = catalog(V1, V2)
    fields = hash_of((V1, T0), (V2, T0), active=2)
    now = T0 + 60_000  # both deployed a minute ago: v1 alone would be warming
    assert statuses(cat, fields, now)[0] == {2: ("active", True), 1: ("warming", False)}
    fields[b"v1:served_ms"] = str(T0).encode()
    got, entries = statuses(cat, fields, now)
    assert got == {2: ("active", True), 1: ("ready", False)}
    assert "switching back to it is instant" in entries[1].status_detail
    # a served version no longer configured is retired all the same
    assert statuses(catalog(V2), fields, now)[0] == {2: ("active", True), 1: ("retired", False)}
