"""Dead letters: a rejected record, its bytes kept, with headers that say why; cut to fit.

The record's key, value and own headers are kept as they were, with
``driftline.errors.*`` headers added (:func:`~driftline.schemas.deadletter.dead_letter_headers`);
a dead letter over the broker's size limit is cut to fit
(:func:`~driftline.schemas.deadletter.fit_dead_letter`) and says so in a header,
and one the broker still refuses is cut to its headers (:func:`shrink_dead_letter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from driftline.schemas import Rejection
from driftline.schemas.deadletter import (
    MAX_KEY_BYTES,
    TRUNCATED_HEADER,
    dead_letter_headers,
    fit_dead_letter,
)
from driftline.schemas.deadletter import PREFIX as DEAD_LETTER_PREFIX
from driftline.sinks.kafka_sink import Record
from driftline.streams.worker.ports import RecordBuffer
from driftline.streams.worker.records import RawRecord

log = logging.getLogger(__name__)

#: Rejections logged one by one per batch; the rest are summarised (the
#: metrics and the dead-letter topic have them all).
LOG_REJECTIONS_PER_BATCH = 5


def shrink_dead_letter(record: Record) -> Record | None:
    """A dead letter the broker refused for its size, cut to its headers (None: not one)."""
    topic, key, value, headers = record
    if not any(name.startswith(DEAD_LETTER_PREFIX) for name, _ in headers):
        return None
    if not value and (key is None or len(key) <= MAX_KEY_BYTES):
        return None  # already cut to its headers: nothing left to cut
    return (topic, *fit_dead_letter(key, value, headers, 0))


def add_dead_letters(
    sink: RecordBuffer,
    topic: str,
    rejected: Sequence[tuple[RawRecord, Rejection]],
    *,
    source: str,
    max_bytes: int,
    on_truncated: Callable[[], None],
) -> None:
    """Buffer the dead letters of a batch's ``rejected`` records on ``sink``.

    The first LOG_REJECTIONS_PER_BATCH are logged one by one, the rest in one
    line; ``on_truncated`` is called for each dead letter cut to fit.
    """
    now_ms = int(time.time() * 1000)
    for i, (record, rejection) in enumerate(rejected):
        if i < LOG_REJECTIONS_PER_BATCH:
            log.warning(
                "rejected record topic=%s partition=%d offset=%d reason=%s: %s",
                record.topic,
                record.partition,
                record.offset,
                rejection.reason,
                rejection.message,
            )
        key, value, headers = dead_letter_record(
            record, rejection, source=source, now_ms=now_ms, max_bytes=max_bytes
        )
        if any(name == TRUNCATED_HEADER for name, _ in headers):
            on_truncated()
        sink.add(topic, key, value, headers)
    if len(rejected) > LOG_REJECTIONS_PER_BATCH:
        log.warning(
            "... and %d more rejected records in this batch of %s (dead-letter topic %s)",
            len(rejected) - LOG_REJECTIONS_PER_BATCH,
            source,
            topic,
        )


def dead_letter_record(
    record: RawRecord, rejection: Rejection, *, source: str, now_ms: int, max_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The dead letter of ``record``: its bytes, our headers, its own headers; cut to fit."""

    def headers(original: Sequence[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
        return dead_letter_headers(
            rejection,
            source=source,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            now_ms=now_ms,
            original=original,
        )

    try:
        ours = headers(record.headers)
    except Exception:  # original headers of an unexpected shape: keep the record, not them
        log.exception(
            "dead letter of topic=%s partition=%d offset=%d: its headers cannot be copied",
            record.topic,
            record.partition,
            record.offset,
        )
        ours = [*headers(None), (TRUNCATED_HEADER, b"headers")]
    return fit_dead_letter(record.key, record.value, ours, max_bytes)
