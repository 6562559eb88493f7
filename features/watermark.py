"""Late and future events, decided per Kafka partition and replayable.

Each partition has a *watermark*: the largest event time accepted so far.
Events are judged one by one **in offset order**::

    late      event_time <  watermark - allowed_lateness      (too old to merge)
    future    event_time >  wall_now + future_tolerance       (clock skew, bad data)
    accepted  otherwise; watermark = max(watermark, event_time)

                 allowed_lateness                     future_tolerance
            ◄──────────────────────►          ◄────────────────────────►
    ── late ─┤        accepted (may be out of order)        ├── future ──►
            wm - L                wm            wall_now            wall_now + F

Only accepted events move the watermark, so one event stamped in 2099 can
neither advance it nor make everything after it late.

**Determinism.**  :func:`split_by_time` is a pure function of (events in
offset order, watermark, wall_now, the two tolerances).  A replay after a
crash therefore decides exactly as the first run did if the caller restores
the watermark that was stored *with* the state the batch was merged into
(same write as the features) and passes the same ``wall_now_ms``.  A
wall-clock reading is not reproducible; a replay-stable choice is a time
carried by the batch itself, such as the largest Kafka record timestamp
(log-append time) of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from driftline.features.definitions import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_FUTURE_TOLERANCE_MS

if TYPE_CHECKING:  # typing only: importing schemas pulls in the contract libraries
    from driftline.schemas.parser import ParsedEvent


class TimeSplit(NamedTuple):
    """The verdicts on one partition's batch.

    ``late`` and ``future`` keep their offsets so the worker can log (and
    dead-letter) them by topic, partition and offset.
    """

    accepted: list[ParsedEvent]
    late: list[tuple[int, ParsedEvent]]
    future: list[tuple[int, ParsedEvent]]
    watermark_ms: int | None


def split_by_time(
    events_with_offsets: Iterable[tuple[int, ParsedEvent]],
    watermark_ms: int | None,
    wall_now_ms: int,
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
    future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
) -> TimeSplit:
    """Split ``(offset, event)`` pairs of one partition into accepted, late and future.

    ``watermark_ms`` is ``None`` for a partition that never accepted an event
    (nothing is late then).  Offsets must increase strictly: the verdicts
    depend on the order, and the order that replays identically is the
    offset order.
    """
    accepted: list[ParsedEvent] = []
    late: list[tuple[int, ParsedEvent]] = []
    future: list[tuple[int, ParsedEvent]] = []
    horizon = wall_now_ms + future_tolerance_ms
    wm = watermark_ms
    floor = None if wm is None else wm - allowed_lateness_ms
    previous: int | None = None
    for offset, event in events_with_offsets:
        if previous is not None and offset <= previous:
            raise ValueError(f"offsets must increase within a partition: {offset} after {previous}")
        previous = offset
        t = event.event_time_ms
        if floor is not None and t < floor:
            late.append((offset, event))
        elif t > horizon:
            future.append((offset, event))
        else:
            accepted.append(event)
            if wm is None or t > wm:
                wm = t
                floor = wm - allowed_lateness_ms
    return TimeSplit(accepted, late, future, wm)


@dataclass(frozen=True, slots=True)
class Watermark:
    """The watermark of one partition: the largest accepted event time (``None``: none yet)."""

    ms: int | None = None

    def split(
        self,
        events_with_offsets: Iterable[tuple[int, ParsedEvent]],
        *,
        wall_now_ms: int,
        allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
        future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
    ) -> tuple[TimeSplit, Watermark]:
        """:func:`split_by_time` from this watermark; also returns the next watermark."""
        result = split_by_time(
            events_with_offsets, self.ms, wall_now_ms, allowed_lateness_ms, future_tolerance_ms
        )
        return result, Watermark(result.watermark_ms)
