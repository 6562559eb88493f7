"""Checkpoints: a restart in any phase continues exactly, and mismatches are refused.

A checkpoint is read from Redis, which others can write: it is a JSON
document of data only, and anything else (pickles above all) is refused
without being decoded.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import orjson
import pytest

from driftline.drift import DriftStateError, Monitor, SegmentedMonitor
from driftline.drift.detector_state import model_state, restore_model
from driftline.drift.detectors import build_model
from tests.unit.drift.streams import feed, make_config, normal, shifted

VALUES = shifted(normal(1, 7000), 3000, shift=1.0)
#: opened 3047, updated 3115, accepted 3647 (10 minutes of event time later),
#: relearning until the 601 values since the detection and 399 more make a
#: fresh reference (value 4046)
CONFIG = {"accept_after": "10m"}


def _dicts(alerts: list[tuple[int, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, a.to_dict()) for i, a in alerts]


@pytest.fixture(scope="module")
def uninterrupted() -> list[tuple[int, dict[str, Any]]]:
    alerts = feed(Monitor(make_config(**CONFIG)), VALUES)
    assert [(i, a.kind, a.reason) for i, a in alerts] == [
        (3047, "opened", "detected"),
        (3115, "updated", "escalated"),
        (3647, "closed", "accepted"),
    ]
    return _dicts(alerts)


@pytest.mark.parametrize(
    ("cut", "phase"),
    [
        (500, "warmup"),
        (2000, "monitoring"),
        (3048, "incident"),  # right after the incident opened
        (3100, "incident"),
        (3647, "incident"),  # the next value accepts the change
        (3648, "relearning"),
        (4046, "relearning"),  # the next value completes the fresh reference
        (4047, "monitoring"),
        (6000, "monitoring"),
    ],
)
def test_restart_continues_exactly(
    cut: int, phase: str, uninterrupted: list[tuple[int, dict[str, Any]]]
) -> None:
    config = make_config(**CONFIG)
    first = Monitor(config)
    before = feed(first, VALUES[:cut])
    assert first.phase == phase
    restored = Monitor.from_state(first.to_state(), config=config)
    assert (restored.phase, restored.incident_id, restored.n_values) == (
        first.phase,
        first.incident_id,
        first.n_values,
    )
    assert restored.reference_stats == first.reference_stats
    assert restored.recent_stats == first.recent_stats
    after = feed(restored, VALUES, start=cut)
    assert _dicts(before) + _dicts(after) == uninterrupted
    # and not only the alerts: the saved monitor, continued, is in the very same state
    assert _dicts(feed(first, VALUES, start=cut)) == _dicts(after)
    assert first.to_state() == restored.to_state()


def test_restart_neither_loses_nor_reraises_an_open_incident() -> None:
    config = make_config(**CONFIG)
    monitor = Monitor(config)
    feed(monitor, VALUES[:3100])
    state = monitor.to_state()
    for _ in range(2):  # restoring twice from the same checkpoint changes nothing
        restored = Monitor.from_state(state, config=config)
        assert restored.incident_id == "amount/__all__/1-3047000"
        kinds = [(i, a.kind, a.incident_id) for i, a in feed(restored, VALUES, start=3100)]
        assert kinds == [
            (3115, "updated", "amount/__all__/1-3047000"),
            (3647, "closed", "amount/__all__/1-3047000"),
        ]


def test_restore_without_config_uses_the_checkpointed_one() -> None:
    monitor = Monitor(make_config(warmup=200, detectors=["adwin"]))
    feed(monitor, VALUES[:300])
    restored = Monitor.from_state(monitor.to_state())
    assert restored.config == monitor.config
    assert restored.n_values == 300


@pytest.mark.parametrize(
    ("overrides", "change"),
    [
        ({"warmup": 500}, "warmup: 1000 -> 500"),
        ({"adwin": {"delta": 0.001}}, "adwin.delta: 0.0001 -> 0.001"),
        ({"detectors": ["adwin"]}, "detectors: ['page_hinkley', 'adwin'] -> ['adwin']"),
    ],
)
def test_a_checkpoint_of_another_configuration_is_refused(
    overrides: dict[str, object], change: str
) -> None:
    monitor = Monitor(make_config())
    feed(monitor, VALUES[:1500])
    with pytest.raises(DriftStateError) as caught:
        Monitor.from_state(monitor.to_state(), config=make_config(**overrides))
    assert "drift monitor 'amount': the checkpoint was written under another configuration" in str(
        caught.value
    )
    assert change in str(caught.value)


def test_a_checkpoint_is_a_versioned_json_document_of_data_only() -> None:
    monitor = Monitor(make_config())
    feed(monitor, VALUES[:3100])
    document = orjson.loads(monitor.to_state())
    assert document["format"] == "driftline.monitor/3"
    assert document["phase"] == "incident"
    assert [(c["detector"], c["statistic"]) for c in document["channels"]] == [
        ("page_hinkley", "location"),
        ("page_hinkley", "scale"),
        ("adwin", "location"),
        ("adwin", "scale"),
    ]
    assert set(document["channels"][2]["state"]) == {
        "total", "variance", "width", "total_width", "n_buckets", "max_n_buckets", "tick",
        "n_detections", "drift_detected", "rows",
    }  # fmt: skip
    segmented = orjson.loads(SegmentedMonitor(make_config()).to_state())
    assert segmented["format"] == "driftline.segmented-monitor/3"


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin"])
@pytest.mark.parametrize("cut", [0, 1, 40, 1500, 3040, 3100])
def test_a_detector_restored_from_its_numbers_continues_bit_for_bit(
    detector: Any, cut: int
) -> None:
    config = make_config()
    scores = shifted(normal(9, 4000), 3000, shift=1.0)
    saved = build_model(detector, config)
    for x in scores[:cut]:
        saved.update(x)
    state = orjson.loads(orjson.dumps(model_state(detector, saved)))  # through JSON
    restored = restore_model(detector, config, state, "test")
    for x in scores[cut:]:
        saved.update(x)
        restored.update(x)
        assert restored.drift_detected == saved.drift_detected
    assert model_state(detector, restored) == model_state(detector, saved)


_UNPICKLED: list[str] = []


def _mark(what: str) -> str:
    _UNPICKLED.append(what)
    return what


class _Payload:
    """What an attacker writes into the checkpoint key: unpickling it runs ``_mark``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_mark, ("code ran",))


@pytest.mark.parametrize("magic", [b"DLMON\x01", b"DLSEG\x01", b""])
def test_a_pickled_checkpoint_is_refused_without_being_unpickled(magic: bytes) -> None:
    data = magic + pickle.dumps({"config": {}, "payload": _Payload()}, protocol=5)
    for restore in (Monitor.from_state, SegmentedMonitor.from_state):
        with pytest.raises(DriftStateError, match="pickle format") as caught:
            restore(data, config=make_config())
        assert caught.value.reason == "pickle"
    assert _UNPICKLED == []


def test_garbage_wrong_version_and_truncated_checkpoints_are_refused() -> None:
    monitor = Monitor(make_config())
    feed(monitor, VALUES[:1500])
    state = monitor.to_state()
    cases = [
        (b"hello", "not a drift monitor checkpoint", "unreadable"),
        (b"[1, 2]", "not a drift monitor checkpoint", "unreadable"),
        (b'{"format": "something/1"}', "not a drift monitor checkpoint", "unreadable"),
        (state.replace(b"monitor/3", b"monitor/99"), "format '99' is not supported", "format"),
        (state.replace(b"monitor/3", b"monitor/2"), "format '2' is not supported", "format"),
        (state[:200], "not a drift monitor checkpoint", "unreadable"),
        (
            SegmentedMonitor(make_config()).to_state(),
            "not a drift monitor checkpoint",
            "unreadable",
        ),
    ]
    for data, message, reason in cases:
        with pytest.raises(DriftStateError, match=message) as caught:
            Monitor.from_state(data)
        assert caught.value.reason == reason


_WRONG: list[object] = [None, True, "x", -1, 1e300, [], {}, [1.0, "y"], {"a": 1}]


def _mutations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Copies of ``document`` with one field (top level, incident, detector) set wrong."""
    out = []
    for key in document:
        for wrong in _WRONG:
            changed = copy.deepcopy(document)
            changed[key] = wrong
            out.append((f"{key}={wrong!r}", changed))
    for key in document["incident"] or {}:
        for wrong in _WRONG:
            changed = copy.deepcopy(document)
            changed["incident"][key] = wrong
            out.append((f"incident.{key}={wrong!r}", changed))
    for i, channel in enumerate(document["channels"]):
        for key in [*channel, *channel["state"]]:
            for wrong in _WRONG:
                changed = copy.deepcopy(document)
                target = changed["channels"][i]
                (target if key in target else target["state"])[key] = wrong
                out.append((f"channels[{i}].{key}={wrong!r}", changed))
    if document["channels"]:  # rows of ADWIN buckets: too many entries or rows, bad entries
        for wrong in ([[[1.0, 0.0]] * 6], [[]] * 65, [[[1.0]]], [[["1", 0.0]]]):
            changed = copy.deepcopy(document)
            changed["channels"][-1]["state"]["rows"] = wrong
            out.append((f"adwin rows={wrong!r:.30}", changed))
    return out


@pytest.mark.parametrize("cut", [500, 3100, 4500])
def test_a_tampered_checkpoint_is_refused_or_restored_safely(cut: int) -> None:
    """Every single-field change either raises DriftStateError or gives a working monitor."""
    config = make_config()
    monitor = Monitor(config)
    feed(monitor, VALUES[:cut])
    document = orjson.loads(monitor.to_state())
    refused = 0
    for label, changed in _mutations(document):
        try:
            restored = Monitor.from_state(orjson.dumps(changed), config=config)
        except DriftStateError as exc:
            assert exc.reason in ("corrupt", "config", "format", "unreadable"), label
            refused += 1
            continue
        feed(restored, VALUES[cut : cut + 200], start=0)  # must not raise
    assert refused > 0


def test_checkpoint_size_is_bounded() -> None:
    monitor = Monitor(make_config())
    feed(monitor, VALUES[:3100])  # reference + relearning sample + recent window
    assert len(monitor.to_state()) < 40_000


def test_segmented_restart_continues_exactly() -> None:
    config = make_config(segment_by="country", max_segments=2)
    streams = {
        "fr": shifted(normal(21, 4000), 2500, shift=1.0),
        "de": normal(22, 4000),
        "it": shifted(normal(23, 4000), 2000, scale=2.0),  # third segment: __other__
    }
    events = [(key, values[i]) for i in range(4000) for key, values in streams.items()]

    def run(monitor: SegmentedMonitor, start: int, stop: int) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for j in range(start, stop):
            key, value = events[j]
            event = {"amount": value, "country": key}
            out += [
                (j, a.to_dict()) for a in monitor.update_event(event, event_time_ms=j, offset=j)
            ]
        return out

    expected = run(SegmentedMonitor(config), 0, len(events))
    assert {a["segment"] for _, a in expected} == {"fr", "__other__"}
    first = SegmentedMonitor(config)
    before = run(first, 0, 7000)
    restored = SegmentedMonitor.from_state(first.to_state(), config=config)
    assert list(restored.monitors) == ["fr", "de", "__other__"]
    assert before + run(restored, 7000, len(events)) == expected
    assert before + run(first, 7000, len(events)) == expected
    assert first.to_state() == restored.to_state()
    with pytest.raises(DriftStateError, match="max_segments: 2 -> 3"):
        SegmentedMonitor.from_state(
            first.to_state(), config=make_config(segment_by="country", max_segments=3)
        )


def test_a_checkpoint_from_before_new_settings_is_still_restored() -> None:
    """Settings added in a later version take their defaults; the warm-up is not lost."""
    from driftline.drift.state import check_config

    config = make_config()
    stored = config.model_dump(mode="json")
    for added in ("feature", "max_entities_per_batch"):
        del stored[added]
    assert check_config(stored, config) == config
    stored["warmup"] = 5000  # a real difference is still refused
    with pytest.raises(DriftStateError, match="warmup: 5000 -> 1000"):
        check_config(stored, config)
