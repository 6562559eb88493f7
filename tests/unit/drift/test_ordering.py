"""Event-time order across partitions: what a merger releases, against a brute-force merge."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from driftline.drift.ordering import EventTimeMerger, Sample


def release(merger: EventTimeMerger, now_ms: int) -> list[Sample]:
    out = merger.release(now_ms=now_ms)
    assert all(lane == sample[3] or lane.startswith("tx/") for lane, sample in out)
    return [sample for _, sample in out]


def lanes() -> st.SearchStrategy[dict[str, list[Sample]]]:
    """Up to 4 partitions, each with non-decreasing event times, offsets 0, 1, ..."""

    def lane(name: str) -> st.SearchStrategy[list[Sample]]:
        return st.lists(st.integers(0, 50), max_size=40).map(
            lambda steps: [(i, sum(steps[: i + 1]), float(i), name) for i in range(len(steps))]
        )

    return st.lists(st.sampled_from("abcd"), unique=True, min_size=1).flatmap(
        lambda names: st.fixed_dictionaries({n: lane(n) for n in names})
    )


@settings(max_examples=300, deadline=None)
@given(lanes(), st.lists(st.integers(1, 10), min_size=1, max_size=20), st.integers(1, 200))
def test_released_in_event_time_order_nothing_lost_nothing_twice(
    streams: dict[str, list[Sample]], chunks: list[int], max_buffered: int
) -> None:
    """Partitions arrive in uneven chunks; the released stream is the merge by event time."""
    merger = EventTimeMerger(idle_after_ms=1_000, max_buffered=max_buffered, now_ms=0)
    released: list[Sample] = []
    positions = dict.fromkeys(streams, 0)
    origin = 0
    now = 0
    while any(positions[n] < len(s) for n, s in streams.items()):
        for name, samples in streams.items():
            size = chunks[(origin + len(name)) % len(chunks)]
            part = samples[positions[name] : positions[name] + size]
            positions[name] += len(part)
            if part:
                merger.add(name, origin, part, now_ms=now)
            origin += 1
        released += release(merger, now)
        assert merger.buffered <= max_buffered
        waiting = merger.lowest_origin()
        assert (waiting is None) == (merger.buffered == 0)
        now += 1  # partitions keep reporting: none goes idle
    released += release(merger, now + 1_000)  # then every one is idle: the rest
    everything = [s for samples in streams.values() for s in samples]
    assert sorted(released, key=repr) == sorted(everything, key=repr)  # each exactly once
    assert merger.buffered == 0 and merger.lowest_origin() is None
    if merger.forced == 0:  # nothing forced out early: one stream in event-time order
        assert [s[1] for s in released] == sorted(s[1] for s in everything)
    else:
        assert merger.forced <= len(everything)
    for name in streams:  # each partition's own order is kept
        assert [s for s in released if s[3] == name] == streams[name]


def test_a_fast_partition_waits_for_a_slow_one_until_it_goes_idle() -> None:
    merger = EventTimeMerger(idle_after_ms=5_000, max_buffered=1000, now_ms=0)
    merger.add("tx/0", 10, [(0, 100, 1.0, None), (1, 200, 2.0, None)], now_ms=0)
    assert release(merger, 4_999) == []  # a new merger waits for the others to report
    merger.add("tx/1", 11, [(0, 150, 3.0, None)], now_ms=4_999)
    assert release(merger, 5_000) == [(0, 100, 1.0, None), (0, 150, 3.0, None)]
    assert merger.buffered == 1  # tx/0's 200 waits: tx/1 has only reached 150
    assert merger.lowest_origin() == 10  # record 10 must not be committed yet
    merger.add("tx/0", 12, [(2, 900, 4.0, None)], now_ms=9_000)
    assert release(merger, 9_000) == []
    # tx/1 silent for 5 s of arrival time: it no longer holds the watermark back
    assert release(merger, 9_999) == [(1, 200, 2.0, None), (2, 900, 4.0, None)]
    assert merger.lowest_origin() is None
    merger.add("tx/1", 13, [(1, 160, 5.0, None)], now_ms=10_000)  # late: released as it comes
    assert release(merger, 10_000) == [(1, 160, 5.0, None)]


def test_a_full_buffer_releases_the_oldest_and_counts_them() -> None:
    merger = EventTimeMerger(idle_after_ms=5_000, max_buffered=3, now_ms=0)
    merger.add("tx/0", 0, [(i, 1000 + i, float(i), None) for i in range(5)], now_ms=0)
    merger.add("tx/1", 1, [(0, 10, 9.0, None)], now_ms=0)
    # even while the merger waits for partitions to report, memory stays bounded
    assert release(merger, 0) == [(0, 10, 9.0, None), (0, 1000, 0.0, None),
                                        (1, 1001, 1.0, None)]  # fmt: skip
    assert (merger.buffered, merger.forced) == (3, 3)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["tx/0", "tx/1", "tx/2"]),
        st.lists(st.integers(0, 30), max_size=25),
        min_size=1,
    ),
    st.one_of(st.none(), st.integers(0, 30)),
    st.one_of(st.none(), st.integers(0, 40)),
)
@example({"tx/0": [1, 2]}, None, 0)  # a limit of nothing
@example({"tx/0": [1, 2], "tx/1": [1]}, 1, 1)  # one sample taken
def test_the_sorted_fast_path_takes_what_popping_heads_takes(
    times: dict[str, list[int]], mark: int | None, limit: int | None
) -> None:
    """Lanes in or out of event-time order, with or without a limit: the fast path (when it
    applies) takes what the heads merge takes."""

    def filled() -> EventTimeMerger:
        merger = EventTimeMerger(idle_after_ms=0, max_buffered=10_000, now_ms=0)
        for name, ts in times.items():
            merger.add(name, 7, [(i, t, float(i), None) for i, t in enumerate(ts)], now_ms=0)
        return merger

    fast, slow = filled(), filled()
    got = fast._take_sorted(mark, limit)
    want = slow._take_heads(mark, limit)
    in_order = all(ts == sorted(ts) for ts in times.values())
    assert (got is not None) == in_order
    if got is None:  # nothing was taken: the heads merge runs on untouched lanes
        assert fast._take(mark, limit) == want
    else:
        assert got == want
    assert fast.buffered == slow.buffered and fast.lowest_origin() == slow.lowest_origin()
    assert fast.release(now_ms=1) == slow.release(now_ms=1)


class HeadsOnly(EventTimeMerger):
    """The merger without its fast path: the reference for it."""

    def _take_sorted(self, mark: int | None, limit: int | None) -> None:
        return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tx/0", "tx/1", "tx/2"]),
            st.lists(st.integers(0, 40), max_size=8),  # event times of one record's samples
            st.integers(0, 3),  # clock steps before releasing
        ),
        max_size=30,
    ),
    st.integers(1, 30),
)
def test_a_merger_with_the_fast_path_behaves_as_one_without(
    steps: list[tuple[str, list[int], int]], max_buffered: int
) -> None:
    """Records arrive on lanes in or out of order, lanes empty and fill again, the buffer
    overflows: every release is the same as the reference's."""
    fast = EventTimeMerger(idle_after_ms=2, max_buffered=max_buffered, now_ms=0)
    slow = HeadsOnly(idle_after_ms=2, max_buffered=max_buffered, now_ms=0)
    offsets = dict.fromkeys(["tx/0", "tx/1", "tx/2"], 0)
    now = 0
    for origin, (lane, times, wait) in enumerate(steps):
        samples = [(offsets[lane] + i, t, float(t), None) for i, t in enumerate(times)]
        offsets[lane] += len(times)
        for merger in (fast, slow):
            merger.add(lane, origin, samples, now_ms=now)
        now += wait
        assert fast.release(now_ms=now) == slow.release(now_ms=now)
        assert fast.buffered == slow.buffered and fast.forced == slow.forced
        assert fast.lowest_origin() == slow.lowest_origin()
    assert fast.release(now_ms=now + 10) == slow.release(now_ms=now + 10)
