"""Checkpoints: a restart in any phase continues exactly, and mismatches are refused."""

from __future__ import annotations

from typing import Any

import pytest

from drift import DriftStateError, Monitor, SegmentedMonitor
from tests.unit.drift.streams import feed, make_config, normal, shifted

VALUES = shifted(normal(1, 7000), 3000, shift=1.0)  # opened 3047, updated 3115, closed 5046


def _dicts(alerts: list[tuple[int, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(i, a.to_dict()) for i, a in alerts]


@pytest.fixture(scope="module")
def uninterrupted() -> list[tuple[int, dict[str, Any]]]:
    return _dicts(feed(Monitor(make_config()), VALUES))


@pytest.mark.parametrize(
    ("cut", "phase"),
    [
        (500, "warmup"),
        (2000, "monitoring"),
        (3048, "relearning"),  # right after the incident opened
        (3100, "relearning"),
        (4500, "settling"),
        (5046, "settling"),  # the next value closes the incident
        (6000, "monitoring"),
    ],
)
def test_restart_continues_exactly(
    cut: int, phase: str, uninterrupted: list[tuple[int, dict[str, Any]]]
) -> None:
    config = make_config()
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


def test_restart_neither_loses_nor_reraises_an_open_incident() -> None:
    config = make_config()
    monitor = Monitor(config)
    feed(monitor, VALUES[:3100])
    state = monitor.to_state()
    for _ in range(2):  # restoring twice from the same checkpoint changes nothing
        restored = Monitor.from_state(state, config=config)
        assert restored.incident_id == "amount/__all__/1-3047000"
        kinds = [(i, a.kind, a.incident_id) for i, a in feed(restored, VALUES, start=3100)]
        assert kinds == [
            (3115, "updated", "amount/__all__/1-3047000"),
            (5046, "closed", "amount/__all__/1-3047000"),
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


def test_garbage_wrong_version_and_truncated_checkpoints_are_refused() -> None:
    monitor = Monitor(make_config())
    feed(monitor, VALUES[:1500])
    state = monitor.to_state()
    with pytest.raises(DriftStateError, match="not a drift monitor checkpoint"):
        Monitor.from_state(b"hello")
    with pytest.raises(DriftStateError, match="format 99 is not supported"):
        Monitor.from_state(state[:5] + bytes([99]) + state[6:])
    with pytest.raises(DriftStateError, match="corrupt drift monitor checkpoint"):
        Monitor.from_state(state[:200])
    with pytest.raises(DriftStateError, match="not a drift monitor checkpoint"):
        Monitor.from_state(SegmentedMonitor(make_config()).to_state())


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
    with pytest.raises(DriftStateError, match="max_segments: 2 -> 3"):
        SegmentedMonitor.from_state(
            first.to_state(), config=make_config(segment_by="country", max_segments=3)
        )


def test_a_checkpoint_from_before_new_settings_is_still_restored() -> None:
    """Settings added in a later version take their defaults; the warm-up is not lost."""
    from drift.state import check_config

    config = make_config()
    stored = config.model_dump(mode="json")
    for added in ("feature", "max_entities_per_batch"):
        del stored[added]
    assert check_config(stored, config) == config
    stored["warmup"] = 5000  # a real difference is still refused
    with pytest.raises(DriftStateError, match="warmup: 5000 -> 1000"):
        check_config(stored, config)
