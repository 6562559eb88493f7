"""Event-time order for a monitor that hears from many source partitions.

A monitor's values come from every partition of its source, each read by
whichever worker owns it and at its own pace.  Live, the partitions advance
together; on a backlog one runs ahead (a worker with less to do, a partition
with fewer events covers the same event time in fewer records), so values
from before and after a change arrive interleaved and one change looks like
many.  The runner therefore feeds a monitor through an :class:`EventTimeMerger`:

* samples are kept per source partition, in the order they came (a
  partition's own samples come in offset order);
* the **watermark** is the lowest, over the partitions heard from lately, of
  the newest event time each has sent; samples at or below it are released
  in event-time order (ties by partition, then offset): the order one stream
  would have had;
* a new merger releases nothing for ``idle_after_ms``: the partitions it will
  hear from have that long to report, so the first partition to arrive does
  not run ahead of the others;
* a partition silent for ``idle_after_ms`` (arrival time, the runner's clock)
  stops holding the watermark back until it sends again: an idle partition
  (a quiet shard, a worker that died) must not stop detection; its late
  values are released as they come;
* at most ``max_buffered`` samples wait: beyond, the oldest are released
  anyway (counted in :attr:`forced`), so memory stays bounded whatever the
  skew.

Each sample carries an ``origin`` (the values-topic offset of the record it
came in): :meth:`lowest_origin` is the oldest record whose samples are not
all released, which the worker must not commit yet, so that samples waiting
here are read again after a crash rather than lost.  Pure: no Kafka, no clock
of its own.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ``(source offset, event time ms, value, segment)``, as in :mod:`driftline.drift.samples`
Sample = tuple[int, int, float, Any]


@dataclass
class _Lane:
    #: ``(origin, sample)`` in arrival order
    samples: deque[tuple[int, Sample]] = field(default_factory=deque)
    #: newest event time this partition has sent (released or not)
    newest_ms: int | None = None
    #: arrival clock (ms) of its last samples
    heard_at_ms: int = 0
    #: the waiting samples are in event-time order (the usual case: see _take_sorted)
    in_order: bool = True


class EventTimeMerger:
    """Per-partition buffers released in event-time order behind a watermark."""

    def __init__(self, *, idle_after_ms: int, max_buffered: int, now_ms: int) -> None:
        if idle_after_ms < 0 or max_buffered < 1:
            raise ValueError("idle_after_ms >= 0 and max_buffered >= 1")
        self.idle_after_ms = idle_after_ms
        self.max_buffered = max_buffered
        self._lanes: dict[str, _Lane] = {}
        self._buffered = 0
        self._opens_at_ms = now_ms + idle_after_ms
        #: samples released before the watermark reached them (the buffer was full)
        self.forced = 0

    @property
    def buffered(self) -> int:
        return self._buffered

    def __bool__(self) -> bool:
        return self._buffered > 0

    def add(self, partition: str, origin: int, samples: Iterable[Sample], *, now_ms: int) -> None:
        """Samples of one source partition that came in record ``origin``, at ``now_ms``."""
        lane = self._lanes.setdefault(partition, _Lane())
        batch = list(samples)
        if batch:
            times = list(map(_event_time, batch))
            if lane.in_order:
                tail = lane.samples[-1][1][1] if lane.samples else times[0]
                lane.in_order = tail <= times[0] and all(map(operator.le, times, times[1:]))
            lane.samples.extend(zip(itertools.repeat(origin), batch, strict=False))
            self._buffered += len(batch)
            newest = max(times)
            if lane.newest_ms is None or newest > lane.newest_ms:
                lane.newest_ms = newest
        lane.heard_at_ms = now_ms

    def watermark(self, *, now_ms: int) -> int | None:
        """The event time every partition heard from lately has reached; None if none was."""
        active = [
            lane.newest_ms
            for lane in self._lanes.values()
            if lane.newest_ms is not None and now_ms - lane.heard_at_ms < self.idle_after_ms
        ]
        return min(active) if active else None

    def lowest_origin(self) -> int | None:
        """The oldest origin with a sample still waiting; None when nothing waits."""
        heads = [lane.samples[0][0] for lane in self._lanes.values() if lane.samples]
        return min(heads) if heads else None

    def release(self, *, now_ms: int) -> list[tuple[str, Sample]]:
        """``(partition, sample)`` of the samples that may be fed now, in event-time order."""
        if now_ms < self._opens_at_ms:
            return self._take_oldest(self._buffered - self.max_buffered)
        # no watermark: every partition is idle, nothing can still come before what waits
        out = self._take(self.watermark(now_ms=now_ms))
        return out + self._take_oldest(self._buffered - self.max_buffered)

    def _take(self, mark: int | None, limit: int | None = None) -> list[tuple[str, Sample]]:
        """Merge the lanes' heads in event-time order: those at or below ``mark`` (all if
        None), at most ``limit`` of them."""
        fast = self._take_sorted(mark, limit)
        return fast if fast is not None else self._take_heads(mark, limit)

    def _take_sorted(self, mark: int | None, limit: int | None) -> list[tuple[str, Sample]] | None:
        """:meth:`_take` when every lane is in event-time order (the usual case), with C
        loops: merging sorted lanes by their heads is sorting their union by the same
        key, and the first ``limit`` of it hold a prefix of each lane.  None (nothing
        taken) when a lane is out of order."""
        lanes = [(name, lane) for name, lane in self._lanes.items() if lane.samples]
        if not all(lane.in_order for _, lane in lanes):
            return None
        # lanes by name, each in offset order: a stable sort by event time alone then
        # breaks ties by (partition, offset), as the heads merge does
        lanes.sort(key=_lane_name)
        pairs: list[tuple[str, Sample]] = []
        times: list[int] = []
        taken: list[tuple[_Lane, int]] = []
        for name, lane in lanes:
            # only what is released is looked at: the rest may be a long backlog
            waiting = lane.samples
            if mark is None:
                k = len(waiting)
            else:
                k = bisect.bisect_right(waiting, mark, key=_entry_time)
            if k:
                samples = list(map(_sample, itertools.islice(waiting, k)))
                pairs += zip(itertools.repeat(name), samples, strict=False)
                times += map(_event_time, samples)
                taken.append((lane, k))
        if not pairs:
            return []
        order = np.argsort(np.array(times, dtype=np.int64), kind="stable")
        if limit is not None and limit < len(order):
            order = order[:limit]
            bounds = np.cumsum([k for _, k in taken])
            counts = np.bincount(np.searchsorted(bounds, order, side="right"), minlength=len(taken))
            taken = [(lane, int(c)) for (lane, _), c in zip(taken, counts.tolist(), strict=True)]
        for lane, k in taken:
            waiting = lane.samples
            if k == len(waiting):
                waiting.clear()
            else:
                pop = waiting.popleft
                for _ in range(k):
                    pop()
        self._buffered -= len(order)
        if len(order) <= 1:  # itemgetter wants at least one index
            return [pairs[i] for i in order.tolist()]
        return list(operator.itemgetter(*order.tolist())(pairs))

    def _take_heads(self, mark: int | None, limit: int | None) -> list[tuple[str, Sample]]:
        """:meth:`_take` by popping the smallest head, one sample at a time."""
        heads = [
            _key(name, lane.samples[0][1])
            for name, lane in self._lanes.items()
            if lane.samples and (mark is None or lane.samples[0][1][1] <= mark)
        ]
        heapq.heapify(heads)
        out: list[tuple[str, Sample]] = []
        while heads and (limit is None or len(out) < limit):
            _, name, _ = heapq.heappop(heads)
            lane = self._lanes[name]
            out.append((name, lane.samples.popleft()[1]))
            if not lane.samples:
                lane.in_order = True
            if lane.samples and (mark is None or lane.samples[0][1][1] <= mark):
                heapq.heappush(heads, _key(name, lane.samples[0][1]))
        self._buffered -= len(out)
        return out

    def _take_oldest(self, count: int) -> list[tuple[str, Sample]]:
        """The ``count`` oldest waiting samples (by event time), counted as forced."""
        if count <= 0:
            return []
        out = self._take(None, count)
        self.forced += len(out)
        return out


def _key(name: str, sample: Sample) -> tuple[int, str, int]:
    return sample[1], name, sample[0]


_sample = operator.itemgetter(1)  # of an (origin, sample) entry


def _entry_time(entry: tuple[int, Sample]) -> int:
    return entry[1][1]


_event_time = operator.itemgetter(1)  # of a sample
_lane_name = operator.itemgetter(0)  # of a (name, lane) pair
