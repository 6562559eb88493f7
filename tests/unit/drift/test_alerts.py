"""Alert records and their JSON contract (schemas/contracts/drift_alert.schema.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from driftline.drift import Alert, Monitor, Stats
from tests.unit.drift.streams import feed, make_config, normal, shifted

SCHEMA_PATH = (
    Path(__file__).resolve().parents[3] / "schemas" / "contracts" / "drift_alert.schema.json"
)


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture(scope="module")
def alerts() -> list[Alert]:
    # a blip opens and recovers; a step opens, escalates and is accepted
    blip = [x + (3.0 if 3000 <= i < 3100 else 0.0) for i, x in enumerate(normal(9, 5000))]
    step = shifted(normal(1, 6000), 3000, shift=1.0)
    with_offsets = [a for _, a in feed(Monitor(make_config()), blip)]
    monitor = Monitor(make_config(segment_by="country"), segment="fr")
    without_offsets = [a for x in step for a in monitor.update(x, event_time_ms=7)]
    accepted = monitor.accept(event_time_ms=8)
    assert accepted is not None
    return [*with_offsets, *without_offsets, accepted]


def test_alerts_cover_every_kind_and_reason(alerts: list[Alert]) -> None:
    assert {(a.kind, a.reason) for a in alerts} == {
        ("opened", "detected"),
        ("updated", "escalated"),
        ("closed", "recovered"),
        ("closed", "accepted"),
    }
    assert {a.first_offset is None for a in alerts} == {True, False}


def test_to_json_matches_the_schema(alerts: list[Alert], validator: Any) -> None:
    for alert in alerts:
        record = orjson.loads(alert.to_json())
        validator.validate(record)
        assert record == alert.to_dict()


def test_undefined_numbers_become_null(validator: Any) -> None:
    alert = Alert(
        monitor="m",
        source="s",
        field="f",
        segment="__all__",
        incident_id="m/__all__/1-0",
        kind="opened",
        reason="detected",
        detector="adwin",
        statistic="location",
        severity="critical",
        event_time_ms=0,
        value_index=1001,
        opened_event_time_ms=0,
        opened_value_index=1001,
        change_start_index=1001,
        first_offset=None,
        last_offset=None,
        detections=1,
        detectors=("adwin/location",),
        reference=Stats(5.0, 0.0, 1000),
        current=Stats(math.nan, math.nan, 0),
        mean_shift_sd=math.inf,
        sd_ratio=None,
    )
    record = orjson.loads(alert.to_json())
    validator.validate(record)
    assert record["current"] == {"mean": None, "std": None, "n": 0}
    assert record["mean_shift_sd"] is None


def test_schema_rejects_what_it_should(alerts: list[Alert], validator: Any) -> None:
    record = alerts[0].to_dict()
    for broken in [
        {**record, "kind": "reopened"},
        {**record, "extra": 1},
        {k: v for k, v in record.items() if k != "reason"},
    ]:
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)
