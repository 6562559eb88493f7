"""A batch's records as the agents hand them over, and the first step: the contract's verdict.

:func:`classify` is the hot loop of the worker: each record's value is parsed
and validated by its source's :class:`~driftline.schemas.EventParser`; a
record that fails gets a :class:`~driftline.schemas.Rejection` (its
dead-letter reason), never an exception out of the batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from driftline.drift.quality import QualityReport
from driftline.schemas import REASONS, EventParser, InvalidEvent, ParsedEvent, Rejection

log = logging.getLogger(__name__)


class RawRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]

    @classmethod
    def of(cls, message: Any) -> RawRecord:
        """An aiokafka ``ConsumerRecord`` (its timestamp in ms) as the verdicts take it."""
        m = message
        return cls(
            m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, list(m.headers or ())
        )


@dataclass
class Classified:
    """Valid events (with the record each came from) and rejections of a batch."""

    valid: list[ParsedEvent] = field(default_factory=list)
    valid_records: list[RawRecord] = field(default_factory=list)
    rejected: list[tuple[RawRecord, Rejection]] = field(default_factory=list)
    replayed: int = 0
    quality: QualityReport | None = None
    #: per feature group keyed by another field: accepted events without that field
    key_missing: Counter[str] = field(default_factory=Counter)

    def reasons(self) -> Counter[str]:
        return Counter(rejection.reason for _, rejection in self.rejected)


def classify(parser: EventParser, records: Sequence[RawRecord]) -> Classified:
    """Split a batch into valid events and rejections.  Pure; the hot loop."""
    out = Classified()
    parse = parser.parse
    add_valid = out.valid.append
    add_record = out.valid_records.append
    add_rejected = out.rejected.append
    for record in records:
        try:
            event = parse(record.value, record.timestamp_ms)
        except InvalidEvent as exc:
            add_rejected((record, exc.rejection))
        except Exception as exc:
            # Not a verdict on the data but a failure to reach one (a bug here or
            # in a library, RecursionError, MemoryError on a huge value ...).  The
            # record still gets a verdict, so its partition goes on; the log line
            # and the internal_error series make the bug visible.
            add_rejected((record, _internal_rejection(record, exc)))
        else:
            add_valid(event)
            add_record(record)
    return out


def _internal_rejection(record: RawRecord, exc: Exception) -> Rejection:
    log.error(
        "cannot judge record topic=%s partition=%d offset=%d (%d bytes): %s; "
        "dead-lettered as internal_error",
        record.topic,
        record.partition,
        record.offset,
        len(record.value or b""),
        type(exc).__name__,
        exc_info=not isinstance(exc, RecursionError | MemoryError),
    )
    name = type(exc).__name__
    return Rejection(
        REASONS["internal_error"],
        "internal_error",
        f"driftline could not judge this record ({name}); please report it",
        name,
    )
