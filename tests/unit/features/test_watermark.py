"""Late and future events per partition: examples, replay determinism, engine on top."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.engine import read_features
from driftline.features.watermark import Watermark, split_by_time
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import GROUP, T0, assert_matches, reference, run, split

NOW = T0 + 3_600_000


def at(t: int, entity: str = "u", **data: object) -> ParsedEvent:
    return ParsedEvent(entity, t, dict(data))


def numbered(events: list[ParsedEvent], first: int = 100) -> list[tuple[int, ParsedEvent]]:
    return list(enumerate(events, start=first))


def test_verdicts_in_offset_order() -> None:
    events = [
        at(NOW - 10_000),  # accepted: nothing is late before a watermark exists
        at(NOW - 45_000),  # 35 s behind the watermark: late
        at(NOW - 39_000),  # 29 s behind: accepted, out of order
        at(NOW + 301_000),  # beyond wall clock + 5 min: future; the watermark stays
        at(NOW - 40_000),  # still measured against NOW - 10 s: accepted
        at(NOW + 299_000),  # within the future tolerance: accepted, advances
        at(NOW - 1_000),  # now 300 s behind: late
    ]
    result = split_by_time(numbered(events), None, NOW, 30_000, 300_000)
    assert result.accepted == [events[0], events[2], events[4], events[5]]
    assert result.late == [(101, events[1]), (106, events[6])]
    assert result.future == [(103, events[3])]
    assert result.watermark_ms == NOW + 299_000


def test_boundaries_are_inclusive_for_acceptance() -> None:
    wm = NOW
    edge = [at(NOW - 30_000), at(NOW - 30_001), at(NOW + 300_000), at(NOW + 300_001)]
    result = split_by_time(numbered(edge), wm, NOW, 30_000, 300_000)
    assert result.accepted == [edge[0], edge[2]]
    assert [e for _, e in result.late] == [edge[1]]
    assert [e for _, e in result.future] == [edge[3]]


def test_empty_batch_keeps_the_watermark() -> None:
    assert split_by_time([], 5, NOW) == ([], [], [], 5)
    assert split_by_time([], None, NOW).watermark_ms is None


def test_offsets_must_increase() -> None:
    with pytest.raises(ValueError, match="offsets must increase"):
        split_by_time([(5, at(NOW)), (5, at(NOW))], None, NOW)


def test_watermark_object() -> None:
    result, wm = Watermark().split(numbered([at(NOW), at(NOW - 60_000)]), wall_now_ms=NOW)
    assert wm == Watermark(NOW) and len(result.late) == 1
    result, wm = wm.split([(9, at(NOW + 10 * 60_000))], wall_now_ms=NOW)
    assert wm == Watermark(NOW) and len(result.future) == 1


TIMES = st.lists(st.integers(-120_000, 420_000).map(lambda d: NOW + d), max_size=80)


@settings(max_examples=150)
@given(
    TIMES,
    st.lists(st.integers(0, 80), max_size=5),
    st.sampled_from([None, NOW - 50_000, NOW + 50_000]),
)
def test_replay_in_any_chunks_decides_identically(
    times: list[int], cuts: list[int], start: int | None
) -> None:
    """A crash between any two batches, replayed with the stored watermark, changes nothing."""
    events = numbered([at(t) for t in times])
    whole = split_by_time(events, start, NOW)
    wm = start
    accepted: list[ParsedEvent] = []
    late: list[tuple[int, ParsedEvent]] = []
    future: list[tuple[int, ParsedEvent]] = []
    for chunk in split(events, cuts):
        part = split_by_time(chunk, wm, NOW)
        accepted += part.accepted
        late += part.late
        future += part.future
        wm = part.watermark_ms
    assert (accepted, late, future, wm) == tuple(whole)
    assert len(whole.accepted) + len(whole.late) + len(whole.future) == len(events)
    # invariants: the watermark is the max accepted time; nothing accepted is in the future
    if whole.accepted:
        assert whole.watermark_ms == max(
            start or -(2**62), *(e.event_time_ms for e in whole.accepted)
        )
    assert all(e.event_time_ms <= NOW + 300_000 for e in whole.accepted)


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, 200), max_size=5))
def test_out_of_order_stream_within_lateness_through_the_engine(
    rng: random.Random, cuts: list[int]
) -> None:
    """A realistic stream: time advances, arrivals jitter by up to 40 s (some late)."""
    events = []
    t = NOW - 600_000
    for i in range(rng.randrange(1, 200)):
        t += rng.randrange(0, 3_000)
        jitter = rng.randrange(0, 40_000) if rng.random() < 0.2 else rng.randrange(0, 3_000)
        events.append(
            at(
                t - jitter,
                rng.choice("ab"),
                amount=round(rng.uniform(0, 500), 2),
                category=f"c{i % 37}",
                qty=i % 4,
            )
        )
    result = split_by_time(
        numbered(events), None, NOW, GROUP.allowed_lateness_ms, GROUP.future_tolerance_ms
    )
    accepted = result.accepted
    states = run(GROUP, split(accepted, cuts))
    for entity, state in states.items():
        assert state.newest_event_ms is not None
        for delay in (0, 1_000, 45_000, 10**7):
            t_read = state.newest_event_ms + delay
            assert_matches(
                read_features(GROUP, state, t_read).values,
                reference(GROUP, accepted, entity, t_read),
            )
