"""Errors raised by the contract layer.

Two kinds, kept apart on purpose:

* :class:`SchemaError` is a *configuration* problem (a contract file that does
  not exist, does not parse, or is not a valid schema).  It stops start-up and
  the CLI turns it into a one-line message and exit code 2.
* :class:`InvalidEvent` is a *data* problem with one record.  It never stops the
  worker: it carries a :class:`Rejection` that names the stage and the reason,
  and the record goes to the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from driftline.errors import DriftlineError


class SchemaError(DriftlineError):
    """A contract file is missing, unreadable or not a valid schema."""

    def __init__(self, path: object, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one record was refused.

    ``reason`` is a short, stable code (it becomes a Prometheus label value and
    a dead-letter header), ``message`` the human explanation for the producer
    team, ``stage`` where in the pipeline the record failed.
    """

    stage: str
    reason: str
    message: str
    error_class: str = "InvalidEvent"


class InvalidEvent(DriftlineError):
    """Raised by decoders and validators for one bad record."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason}: {rejection.message}")
        self.rejection = rejection


# Stages, in pipeline order.
STAGE_SIZE = "size"
STAGE_DESERIALIZE = "deserialize"
STAGE_VALIDATE = "validate"
STAGE_EXTRACT = "extract"
STAGE_TIME = "time"
STAGE_QUALITY = "quality"
STAGE_INTERNAL = "internal"

#: Every reason code the contract layer can produce, with its stage.  The
#: worker pre-creates a metric series per reason so dashboards show zeros
#: instead of gaps, and tests assert against this table.
REASONS: dict[str, str] = {
    "oversize": STAGE_SIZE,
    "invalid_utf8": STAGE_DESERIALIZE,
    "malformed_json": STAGE_DESERIALIZE,
    "non_finite_number": STAGE_DESERIALIZE,
    "too_deep": STAGE_DESERIALIZE,
    "not_an_object": STAGE_DESERIALIZE,
    "bad_wire_format": STAGE_DESERIALIZE,
    "unknown_schema_id": STAGE_DESERIALIZE,
    "avro_decode_error": STAGE_DESERIALIZE,
    "missing_field": STAGE_VALIDATE,
    "wrong_type": STAGE_VALIDATE,
    "schema_violation": STAGE_VALIDATE,
    "missing_entity_key": STAGE_EXTRACT,
    "bad_event_time": STAGE_EXTRACT,
    # decided by the feature stage, against the partition's event-time watermark
    "late": STAGE_TIME,
    "future": STAGE_TIME,
    # decided by the source's data-quality checks when they route to the dead-letter topic
    "out_of_range": STAGE_QUALITY,
    "not_allowed": STAGE_QUALITY,
    "duplicate": STAGE_QUALITY,
    # an unexpected error while judging the record (a bug in driftline or a
    # library): the record is dead-lettered so its partition goes on
    "internal_error": STAGE_INTERNAL,
}


def reject(reason: str, message: str, error_class: str = "InvalidEvent") -> InvalidEvent:
    """Build the exception for ``reason`` with its stage looked up."""
    return InvalidEvent(Rejection(REASONS[reason], reason, message, error_class))


def short_json(rule: object, limit: int = 120) -> str:
    """A piece of a *contract* (a type, an enum) for a rejection message, cut to ``limit``.

    Never used on the event's value: messages reach logs, and a bad field may
    hold personal data (the dead-letter topic keeps the bytes).
    """
    text = orjson.dumps(rule, default=str).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."
