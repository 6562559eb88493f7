"""Event time of one partition batch: which events are late or from the future.

Judged so that a replay judges the same (see :func:`judge_event_time`); the
watermark arithmetic itself is :func:`driftline.features.watermark.split_by_time`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from driftline.features.watermark import split_by_time
from driftline.schemas import REASONS, ParsedEvent, Rejection
from driftline.streams.worker.records import RawRecord

#: "Now" for split_by_time once future events are removed per record.
_NO_HORIZON = 1 << 62


def _time_rejection(reason: str, event: ParsedEvent, record: RawRecord, limit_ms: int) -> Rejection:
    if reason == "future":
        message = (
            f"event time {event.event_time_ms} is {event.event_time_ms - record.timestamp_ms} ms "
            f"after the record's timestamp (tolerance {limit_ms} ms)"
        )
    else:
        message = (
            f"event time {event.event_time_ms} is more than {limit_ms} ms "
            "behind the partition's watermark"
        )
    return Rejection(REASONS[reason], reason, message, "EventTime")


class TimeJudged(NamedTuple):
    accepted: list[ParsedEvent]
    rejected: list[tuple[RawRecord, Rejection]]
    watermark_ms: int | None


def judge_event_time(
    events: Sequence[ParsedEvent],
    records: Sequence[RawRecord],
    watermark_ms: int | None,
    *,
    allowed_lateness_ms: int,
    future_tolerance_ms: int,
) -> TimeJudged:
    """Late and future events of one partition, decided so a replay decides the same.

    *Future* is judged against each record's own Kafka timestamp (producer or
    log-append time), not the worker's clock, and *late* against the watermark
    stored with the partition's offset: both are fixed properties of the
    partition's history, so reprocessing after a crash gives the same verdicts.
    """
    if events:
        # Fast path, the common case: nothing can be late or future.  No event
        # is ahead of its record by more than the tolerance, and the oldest one
        # is within the lateness of the highest watermark the batch can reach.
        times = [e.event_time_ms for e in events]
        newest = max(times)
        top = newest if watermark_ms is None or newest > watermark_ms else watermark_ms
        if min(times) >= top - allowed_lateness_ms and all(
            t <= r.timestamp_ms + future_tolerance_ms for t, r in zip(times, records, strict=True)
        ):
            return TimeJudged(list(events), [], top)
    return _judge_each(
        events,
        records,
        watermark_ms,
        allowed_lateness_ms=allowed_lateness_ms,
        future_tolerance_ms=future_tolerance_ms,
    )


def _judge_each(
    events: Sequence[ParsedEvent],
    records: Sequence[RawRecord],
    watermark_ms: int | None,
    *,
    allowed_lateness_ms: int,
    future_tolerance_ms: int,
) -> TimeJudged:
    """:func:`judge_event_time` event by event (:func:`.split_by_time`)."""
    rejected: list[tuple[RawRecord, Rejection]] = []
    pairs: list[tuple[int, ParsedEvent]] = []
    by_offset: dict[int, RawRecord] = {}
    for event, record in zip(events, records, strict=True):
        if event.event_time_ms > record.timestamp_ms + future_tolerance_ms:
            rejected.append((record, _time_rejection("future", event, record, future_tolerance_ms)))
        else:
            pairs.append((record.offset, event))
            by_offset[record.offset] = record
    split = split_by_time(pairs, watermark_ms, _NO_HORIZON, allowed_lateness_ms, 0)
    for offset, event in split.late:
        record = by_offset[offset]
        rejected.append((record, _time_rejection("late", event, record, allowed_lateness_ms)))
    rejected.sort(key=lambda pair: pair[0].offset)
    return TimeJudged(split.accepted, rejected, split.watermark_ms)
