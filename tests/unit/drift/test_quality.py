"""Data-quality checks: exact counts on small batches, uniqueness against a reference."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from driftline.drift.quality import QualityChecker, QualityConfig
from driftline.drift.recent_ids import DUPLICATE, NEW, REPLAY, RecentIds


class Event(NamedTuple):
    data: dict[str, Any]
    event_time_ms: int


def cfg(**raw: Any) -> QualityConfig:
    return QualityConfig.model_validate(raw)


def test_completeness_counts_absent_and_null_per_field() -> None:
    checker = QualityChecker(cfg(), contract_fields=["a", "b", "c"])
    events = [
        Event({"a": 1, "b": None}, 0),
        Event({"a": None, "b": 2, "c": 0}, 0),
        Event({"a": 0, "b": False, "c": ""}, 0),  # falsy values are present
    ]
    report = checker.check(0, events, [0, 1, 2])
    assert report.events == 3
    assert dict(report.missing) == {"a": 1, "b": 1, "c": 1}
    assert report.refused == []


def test_completeness_list_overrides_contract_fields() -> None:
    checker = QualityChecker(cfg(completeness=["b", "b"]), contract_fields=["a", "b"])
    assert checker.completeness == ("b",)
    report = checker.check(0, [Event({}, 0)], [0])
    assert dict(report.missing) == {"b": 1}
    assert QualityChecker(cfg(completeness=[]), ["a"]).check(0, [Event({}, 0)], [0]).missing == {}


def test_missing_ratio_limits_come_from_the_config() -> None:
    assert QualityChecker(cfg(), ["a", "b"]).missing_limits == {}  # contract default: count only
    assert QualityChecker(cfg(completeness=["a"])).missing_limits == {"a": 0.05}
    mapped = QualityChecker(cfg(completeness={"a": 0.01, "b": 1.0}))
    assert mapped.completeness == ("a", "b") and mapped.missing_limits == {"a": 0.01}


def test_range_and_domain_violations_are_counted_by_check() -> None:
    checker = QualityChecker(
        cfg(fields={"amount": {"min": 0, "max": 100}, "cat": {"allowed": ["a", "b", 1]}})
    )
    events = [
        Event({"amount": -1, "cat": "a"}, 0),  # min
        Event({"amount": 101.5, "cat": "z"}, 0),  # max, allowed
        Event({"amount": "7", "cat": True}, 0),  # type; True is not 1
        Event({"amount": float("nan"), "cat": 1}, 0),  # NaN is not a number in range
        Event({"amount": 0, "cat": None}, 0),  # bounds inclusive; null is not checked
        Event({"cat": 1.0}, 0),  # absent amount not checked; 1.0 == 1 as JSON numbers
    ]
    report = checker.check(0, events, list(range(6)))
    assert dict(report.violations) == {
        ("amount", "min"): 1,
        ("amount", "max"): 1,
        ("amount", "type"): 2,
        ("cat", "allowed"): 2,
    }
    assert report.refused == []  # on_violation defaults to count


def test_violations_routed_to_dead_letter_once_per_event_with_a_reason() -> None:
    checker = QualityChecker(
        cfg(fields={"amount": {"max": 10}, "cat": {"allowed": ["a"]}}, on_violation="dead_letter")
    )
    events = [Event({"amount": 11, "cat": "x"}, 0), Event({"amount": 1, "cat": "a"}, 0)]
    events.append(Event({"amount": 1, "cat": "x"}, 0))
    report = checker.check(3, events, [10, 11, 12])
    assert [(i, reason) for i, reason, _ in report.refused] == [
        (0, "out_of_range"),
        (2, "not_allowed"),
    ]
    assert "'amount' is outside [-inf, 10]" in report.refused[0][2]
    assert "11" not in report.refused[0][2]  # the value stays out of logs
    assert sum(report.violations.values()) == 3  # every violation counted, one refusal each


def test_duplicates_within_the_horizon_per_partition() -> None:
    checker = QualityChecker(cfg(unique={"field": "id", "horizon": "10s"}))
    events = [Event({"id": "x"}, 1_000), Event({"id": "x"}, 5_000), Event({"id": "y"}, 5_000)]
    report = checker.check(0, events, [0, 1, 2])
    assert report.duplicates == 1 and report.refused == []
    # another partition has its own memory
    assert checker.check(1, [Event({"id": "x"}, 5_000)], [0]).duplicates == 0
    # 12 s later the first sighting is out of the horizon: a new sighting
    assert checker.check(0, [Event({"id": "x"}, 12_000)], [3]).duplicates == 0
    assert checker.check(0, [Event({"id": "x"}, 13_000)], [4]).duplicates == 1


def test_a_redelivered_record_is_not_a_duplicate_and_verdicts_repeat() -> None:
    checker = QualityChecker(cfg(unique={"field": "id", "action": "dead_letter"}))
    batch = [Event({"id": 7}, 0), Event({"id": 7}, 1), Event({"id": None}, 2)]
    first = checker.check(0, batch, [5, 6, 7])
    again = checker.check(0, batch, [5, 6, 7])  # the same records after a crash
    assert first.duplicates == again.duplicates == 1
    assert [i for i, _, _ in first.refused] == [i for i, _, _ in again.refused] == [1]
    assert first.refused[0][1] == "duplicate"


def test_memory_is_bounded_and_evictions_counted() -> None:
    checker = QualityChecker(cfg(unique={"field": "id", "max_ids": 3}))
    events = [Event({"id": i}, 0) for i in range(5)]
    report = checker.check(0, events, list(range(5)))
    assert report.evicted == 2 and checker.tracked_ids() == 3
    # ids 0 and 1 were evicted: their duplicates are missed, 4's is not
    late = checker.check(0, [Event({"id": 0}, 0), Event({"id": 4}, 0)], [5, 6])
    assert late.duplicates == 1


def test_expired_sightings_leave_memory() -> None:
    recent = RecentIds(horizon_ms=1_000, max_ids=100)
    for i in range(50):
        recent.see(f"id{i}", i, i * 100)
    assert len(recent) <= 11  # only the last second of event time is kept


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"fields": {"a": {}}}, "give min, max or allowed"),
        ({"fields": {"a": {"min": 2, "max": 1}}}, "greater than max"),
        ({"fields": {"a": {"allowed": []}}}, "at least 1"),
        ({"unique": {"field": "id", "horizon": "soon"}}, "soon"),
        ({"unique": {"field": "id", "max_ids": 0}}, "greater than or equal to 1"),
        ({"on_violation": "drop"}, "'count' or 'dead_letter'"),
        ({"completness": ["a"]}, "Extra inputs"),
        ({"completeness": {"a": 1.5}}, "between 0 and 1"),
    ],
)
def test_bad_config_is_refused_with_a_reason(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        QualityConfig.model_validate(raw)


def reference_verdicts(sightings: list[tuple[int, int, int]], horizon: int) -> list[str]:
    """Brute force: a sighting is a duplicate of its id's latest *new* sighting."""
    verdicts: list[str] = []
    newest: int | None = None
    representative: dict[int, tuple[int, int]] = {}  # id -> (offset, time)
    for key, offset, time in sightings:
        newest = time if newest is None else max(newest, time)
        rep = representative.get(key)
        if rep is not None and rep[1] < newest - horizon:
            rep = None  # expired: forgotten
        if rep is not None and rep[0] == offset:
            verdicts.append(REPLAY)
        elif rep is not None and abs(time - rep[1]) <= horizon:
            verdicts.append(DUPLICATE)
        else:
            representative[key] = (offset, time)
            verdicts.append(NEW)
    return verdicts


sightings_strategy = st.lists(
    st.tuples(
        st.integers(0, 8),  # id
        st.integers(0, 30),  # offset (repeats model redeliveries)
        st.integers(-2_000, 20_000),  # event time, out of order
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(sightings_strategy, st.integers(0, 5_000))
def test_recent_ids_matches_the_reference_when_memory_suffices(
    sightings: list[tuple[int, int, int]], horizon: int
) -> None:
    recent = RecentIds(horizon, max_ids=10_000)
    got = [recent.see(key, offset, time)[0] for key, offset, time in sightings]
    assert got == reference_verdicts(sightings, horizon)


@settings(max_examples=200, deadline=None)
@given(sightings_strategy, st.integers(0, 5_000), st.integers(1, 5))
def test_recent_ids_never_exceeds_its_bound(
    sightings: list[tuple[int, int, int]], horizon: int, max_ids: int
) -> None:
    recent = RecentIds(horizon, max_ids)
    evicted = 0
    for key, offset, time in sightings:
        evicted += recent.see(key, offset, time)[1]
        assert len(recent) <= max_ids
    if len({k for k, _, _ in sightings}) <= max_ids:
        assert evicted == 0
