"""Alert records: what a monitor returns and the worker publishes.

An alert is one event in the life of an **incident**:

``opened``   a detector fired while no incident was open;
``updated``  the incident got worse (``reason: escalated``, warning ->
             critical);
``closed``   the stream is back at the baseline (``recovered``) or its new
             distribution was accepted as the new normal (``accepted``: by an
             operator, or after ``accept_after``; see
             :mod:`driftline.drift.monitor`).

Other detections during an open incident are folded into it (``detections``,
``detectors``, ``last_offset``) without an alert.  The JSON form is described
by ``schemas/contracts/drift_alert.schema.json``; ``schema_version`` changes with any
incompatible change to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson

from driftline.drift.stats import Stats

AlertKind = Literal["opened", "updated", "closed"]
#: why: ``detected`` (opened), ``escalated`` (warning -> critical),
#: ``recovered`` (closed: back at the baseline), ``accepted`` (closed: the new
#: distribution is the new normal)
AlertReason = Literal["detected", "escalated", "recovered", "accepted"]
Severity = Literal["warning", "critical"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One incident event of one monitor and segment."""

    SCHEMA_VERSION: ClassVar[int] = 2

    monitor: str
    source: str
    field: str
    segment: str
    incident_id: str
    kind: AlertKind
    reason: AlertReason
    #: the detector and statistic of the detection behind this alert (for
    #: ``closed``: of the incident's last detection)
    detector: str
    statistic: str
    severity: Severity
    #: event time of the value that triggered this alert
    event_time_ms: int
    #: values (finite ones) this monitor has seen, this one included
    value_index: int
    opened_event_time_ms: int
    opened_value_index: int
    #: estimated first value of the change (a value index)
    change_start_index: int
    #: offsets seen since the incident opened (the first and the latest passed
    #: by the caller); a span of one partition when the monitor reads one
    first_offset: int | None
    last_offset: int | None
    detections: int
    #: every ``detector/statistic`` that fired during the incident, sorted
    detectors: tuple[str, ...]
    reference: Stats
    current: Stats
    #: (current mean - reference mean) / reference sd; None without spread
    mean_shift_sd: float | None
    #: current sd / reference sd; None without spread
    sd_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.SCHEMA_VERSION,
            "monitor": self.monitor,
            "source": self.source,
            "field": self.field,
            "segment": self.segment,
            "incident_id": self.incident_id,
            "kind": self.kind,
            "reason": self.reason,
            "detector": self.detector,
            "statistic": self.statistic,
            "severity": self.severity,
            "event_time_ms": self.event_time_ms,
            "value_index": self.value_index,
            "opened_event_time_ms": self.opened_event_time_ms,
            "opened_value_index": self.opened_value_index,
            "change_start_index": self.change_start_index,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "detections": self.detections,
            "detectors": list(self.detectors),
            "reference": self.reference.to_dict(),
            "current": self.current.to_dict(),
            "mean_shift_sd": _finite(self.mean_shift_sd),
            "sd_ratio": _finite(self.sd_ratio),
        }

    def to_json(self) -> bytes:
        """The record published to the alerts topic (UTF-8 JSON, no NaN)."""
        return orjson.dumps(self.to_dict())


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
