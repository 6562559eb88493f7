"""Streaming data-quality checks of one source (pure: no Kafka, Redis or Faust).

The contract (:mod:`schemas`) decides whether an event is *valid*; these checks
measure how *good* the valid events are, per partition batch, and say which
events the configuration wants routed to the dead-letter topic::

    sources:
      - name: transactions
        ...
        quality:
          completeness:                      # default: every top-level field of the contract
            country: 0.01                    # alert when more than 1 % are absent or null
            currency: 1.0                    # counted, never alerted on
          unique:                            # duplicate event ids
            field: event_id
            horizon: 1h                      # of event time
            max_ids: 100000                  # per partition: the memory bound
            action: count                    # or dead_letter
          fields:                            # range and domain checks
            amount: {min: 0, max: 50000}
            category: {allowed: [grocery, fuel, travel]}
          on_violation: count                # or dead_letter

**Completeness.**  Per field, events where the field is absent or ``null``.
``completeness`` is a list of fields (each alerted on above 5 % missing) or a
mapping field -> highest acceptable missing ratio; the ratio is exported as a
gauge so one Prometheus rule serves every field.  Left out, every top-level
field of the contract is counted and none is alerted on: a field that is
optional by contract has no known normal rate.

**Range and domain.**  ``min``/``max`` are inclusive; a value that is not a
number (a string, a boolean, NaN) under a range check is a ``type`` violation.
``allowed`` compares JSON scalars by type and value (``true`` is not ``1``).
An absent or ``null`` value is not checked: completeness counts it.

**Uniqueness.**  An id is a *duplicate* when the same id was seen before in
the same partition, at another offset, with event times at most ``horizon``
apart, and the earlier sighting is still inside the horizon (its event time
is not older than the partition's newest event time minus ``horizon``).
Events of one entity share a partition when producers key by entity, so a
producer's retry lands in the partition of its original.  A redelivery of the
*same* record (same offset) is never a duplicate: reprocessing after a crash
or a rebalance gives the same verdicts.

Memory is bounded by ``max_ids`` per partition: sightings older than the
horizon are dropped first, then, if still too many, the oldest ones, which
are counted as *evicted* (a duplicate of an evicted id is missed).  The ids
live in the worker's memory: after a restart or a rebalance the new owner's
horizon starts empty.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from driftline.drift.recent_ids import DUPLICATE, RecentIds
from driftline.features.durations import parse_duration

Action = Literal["count", "dead_letter"]
#: Labels of ``driftline_quality_violations_total``'s ``check``.
Check = Literal["min", "max", "type", "allowed"]
#: Dead-letter reasons of the quality stage (see :data:`driftline.schemas.REASONS`).
REASON_OUT_OF_RANGE = "out_of_range"
REASON_NOT_ALLOWED = "not_allowed"
REASON_DUPLICATE = "duplicate"

Scalar = str | int | float | bool
#: The alert threshold of a field listed in ``completeness`` without a ratio.
DEFAULT_MISSING_RATIO = 0.05


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldCheck(_Model):
    """Range (``min``/``max``, inclusive) and/or domain (``allowed``) of one field."""

    min: float | None = None
    max: float | None = None
    allowed: tuple[Scalar, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _something(self) -> FieldCheck:
        if self.min is None and self.max is None and self.allowed is None:
            raise ValueError("give min, max or allowed")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("min and max must be finite numbers")
        return self


class UniqueCheck(_Model):
    """Duplicate ids of one field within ``horizon`` of event time."""

    field: str = Field(min_length=1)
    horizon: str = "1h"
    max_ids: int = Field(100_000, ge=1, description="ids remembered per partition")
    action: Action = "count"

    @field_validator("horizon")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # raises ValueError with the reason
        return value

    @property
    def horizon_ms(self) -> int:
        return parse_duration(self.horizon)


class QualityConfig(_Model):
    """The ``quality`` section of a source; every part is optional."""

    completeness: tuple[str, ...] | dict[str, float] | None = Field(
        None,
        description="fields whose absent/null rate is counted (a mapping gives each its "
        "highest acceptable ratio); default: the contract's fields, not alerted on",
    )
    unique: UniqueCheck | None = None
    fields: dict[str, FieldCheck] = Field(default_factory=dict)
    on_violation: Action = "count"

    @field_validator("completeness")
    @classmethod
    def _ratios(
        cls, value: tuple[str, ...] | dict[str, float] | None
    ) -> tuple[str, ...] | dict[str, float] | None:
        if isinstance(value, dict):
            for name, ratio in value.items():
                if not 0 <= ratio <= 1:
                    raise ValueError(f"{name}: a missing ratio between 0 and 1 (got {ratio})")
        return value

    def missing_limits(self) -> dict[str, float]:
        """Field -> highest acceptable missing ratio, for the fields alerted on."""
        c = self.completeness
        if c is None:
            return {}
        if isinstance(c, dict):
            return {name: ratio for name, ratio in c.items() if ratio < 1}
        return dict.fromkeys(c, DEFAULT_MISSING_RATIO)


class _Event(Protocol):
    @property
    def data(self) -> Mapping[str, Any]: ...

    @property
    def event_time_ms(self) -> int: ...


@dataclass
class QualityReport:
    """What the checks found in one batch; ``refused`` indexes into the batch."""

    events: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    violations: Counter[tuple[str, Check]] = field(default_factory=Counter)
    duplicates: int = 0
    evicted: int = 0
    #: (index in the batch, dead-letter reason, message) of events to route away
    refused: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, other: QualityReport) -> None:
        """Fold another batch's counts in (``refused`` indexes are not merged)."""
        self.events += other.events
        self.missing.update(other.missing)
        self.violations.update(other.violations)
        self.duplicates += other.duplicates
        self.evicted += other.evicted


def _domain_key(value: Any) -> tuple[str, Any] | None:
    """``allowed`` compares by JSON type and value: ``true`` is not ``1``."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class QualityChecker:
    """Runs one source's checks on partition batches of valid events."""

    def __init__(self, config: QualityConfig, contract_fields: Iterable[str] = ()) -> None:
        self.config = config
        if config.completeness is None:
            self.completeness = tuple(sorted(contract_fields))
        else:
            self.completeness = tuple(dict.fromkeys(config.completeness))
        self.missing_limits = config.missing_limits()
        self.route_violations = config.on_violation == "dead_letter"
        self._ranges = tuple(
            (name, check.min, check.max)
            for name, check in config.fields.items()
            if check.min is not None or check.max is not None
        )
        self._domains = tuple(
            (name, frozenset(k for k in map(_domain_key, check.allowed) if k is not None))
            for name, check in config.fields.items()
            if check.allowed is not None
        )
        self._unique = config.unique
        self._recent: dict[int, RecentIds] = {}

    def checks(self) -> tuple[tuple[str, Check], ...]:
        """Every (field, check) this checker can count (for pre-created metric series)."""
        out: list[tuple[str, Check]] = []
        for name, lo, hi in self._ranges:
            if lo is not None:
                out.append((name, "min"))
            if hi is not None:
                out.append((name, "max"))
            out.append((name, "type"))
        out.extend((name, "allowed") for name, _ in self._domains)
        return tuple(out)

    def release(self, partition: int) -> None:
        """Drop a partition's remembered ids (it moved to another worker)."""
        self._recent.pop(partition, None)

    def tracked_ids(self) -> int:
        """Ids remembered over all partitions (the uniqueness check's memory)."""
        return sum(len(r) for r in self._recent.values())

    def check(
        self, partition: int, events: Sequence[_Event], offsets: Sequence[int]
    ) -> QualityReport:
        """Counts of one partition batch, and the events to refuse, in batch order."""
        report = QualityReport(events=len(events))
        if not events:
            return report
        datas = [e.data for e in events]
        missing = report.missing
        for name in self.completeness:
            n = [d.get(name) for d in datas].count(None)
            if n:
                missing[name] = n
        refused: dict[int, tuple[str, str]] = {}
        if self._ranges or self._domains:
            self._check_fields(datas, report, refused)
        if self._unique is not None:
            self._check_unique(partition, events, offsets, report, refused)
        report.refused = [(i, reason, message) for i, (reason, message) in sorted(refused.items())]
        return report

    def _check_fields(
        self,
        datas: list[Mapping[str, Any]],
        report: QualityReport,
        refused: dict[int, tuple[str, str]],
    ) -> None:
        violations = report.violations
        route = self.route_violations
        for name, lo, hi in self._ranges:
            for i, d in enumerate(datas):
                v = d.get(name)
                if v is None:
                    continue
                check: Check | None = None
                if not _is_number(v) or math.isnan(v):
                    check = "type"
                elif lo is not None and v < lo:
                    check = "min"
                elif hi is not None and v > hi:
                    check = "max"
                if check is None:
                    continue
                violations[(name, check)] += 1
                if route and i not in refused:
                    refused[i] = (REASON_OUT_OF_RANGE, _range_message(name, v, lo, hi))
        for name, allowed in self._domains:
            for i, d in enumerate(datas):
                v = d.get(name)
                if v is None or _domain_key(v) in allowed:
                    continue
                violations[(name, "allowed")] += 1
                if route and i not in refused:
                    refused[i] = (
                        REASON_NOT_ALLOWED,
                        f"field {name!r} is not one of the allowed values",
                    )

    def _check_unique(
        self,
        partition: int,
        events: Sequence[_Event],
        offsets: Sequence[int],
        report: QualityReport,
        refused: dict[int, tuple[str, str]],
    ) -> None:
        unique = self._unique
        assert unique is not None
        recent = self._recent.get(partition)
        if recent is None:
            recent = self._recent[partition] = RecentIds(unique.horizon_ms, unique.max_ids)
        name = unique.field
        route = unique.action == "dead_letter"
        see = recent.see
        for i, (event, offset) in enumerate(zip(events, offsets, strict=True)):
            key = event.data.get(name)
            if key is None or isinstance(key, bool) or not isinstance(key, str | int | float):
                continue  # absent/null is completeness's business; lists cannot be ids
            verdict, evicted = see(key, offset, event.event_time_ms)
            report.evicted += evicted
            if verdict is DUPLICATE:
                report.duplicates += 1
                if route and i not in refused:
                    refused[i] = (
                        REASON_DUPLICATE,
                        f"this {name} was already seen in partition {partition} "
                        f"within {unique.horizon}",
                    )


def _range_message(name: str, value: Any, lo: float | None, hi: float | None) -> str:
    low = "-inf" if lo is None else f"{lo:g}"
    high = "inf" if hi is None else f"{hi:g}"
    bounds = f"[{low}, {high}]"
    # the value itself stays out: messages reach logs (the dead letter has the bytes)
    if not _is_number(value):
        return f"field {name!r} is not a number (range {bounds})"
    return f"field {name!r} is outside {bounds}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
