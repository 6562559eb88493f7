"""Monitor configuration: one frozen, validated object per monitor.

A monitor watches one numeric field of one source, optionally per segment::

    monitors:
      - name: amount
        source: transactions
        field: amount              # or feature: user_spend.amount_mean_1h (a computed feature)
        segment_by: country        # optional; one monitor per value, at most max_segments
        # everything below is optional; the defaults are the benchmarked ones
        detectors: [page_hinkley, adwin]
        warmup: 1000
        stable_after: 1000
        accept_after: 1h           # event time; null: only an operator accepts

Every threshold is in **standard units of the reference**: the monitor turns
each value into a normal score against the distribution it learned during the
warm-up (see :mod:`driftline.drift.reference`), so the same numbers suit amounts in
cents, latencies in seconds and counts.  ``bench/drift_quality.py`` measures
the defaults (false alarms per 100k values, detection delays) with a warm-up
of 1,000 values and is the place to re-check any change to them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from driftline.drift.exceptions import DriftConfigError
from driftline.features.durations import parse_duration

DetectorName = Literal["page_hinkley", "adwin"]
Statistic = Literal["location", "scale"]

#: Every detector a monitor can run, in the order they are evaluated.
DETECTORS: tuple[DetectorName, ...] = ("page_hinkley", "adwin")
#: The two statistics each detector watches (see :mod:`driftline.drift.reference`).
STATISTICS: tuple[Statistic, ...] = ("location", "scale")

DEFAULT_DETECTORS: tuple[DetectorName, ...] = ("page_hinkley", "adwin")


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PageHinkleyParams(_Params):
    """River's ``PageHinkley`` on normal scores.

    Page-Hinkley is Page's CUSUM around the running mean since its last
    restart: ``delta`` is half the shift it is tuned for (0.25: shifts of
    0.5 sd and up); ``threshold`` sets the false-alarm rate (about half as
    many per +2) and the delay (about ``threshold / (shift - delta)``).
    ``alpha = 1`` (no forgetting) keeps it that CUSUM, the form the
    benchmark calibrated; the threshold is in reference sd because the input
    is a normal score, not a raw value.
    """

    delta: float = Field(0.25, gt=0, le=2)
    threshold: float = Field(30.0, gt=0)
    min_instances: int = Field(30, ge=1)
    alpha: float = Field(1.0, gt=0, le=1)


class AdwinParams(_Params):
    """River's ``ADWIN`` on normal scores.

    On scores (bounded, near normal) ADWIN's bound holds: with ``delta``
    1e-4 it raised no false alarm in 3M benchmark values and still finds a
    1-sd shift in ~45 values.  ``clock = 1`` checks every value (River's Rust
    implementation makes that cheap) instead of every 32nd, which would add
    up to 31 values of delay.
    """

    delta: float = Field(1e-4, gt=0, lt=1)
    clock: int = Field(1, ge=1)
    max_buckets: int = Field(5, ge=2)
    min_window_length: int = Field(5, ge=1)
    grace_period: int = Field(10, ge=1)


class MonitorConfig(BaseModel):
    """One drift monitor.  Build it with :meth:`from_config` from a mapping."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=128)
    source: str = Field(min_length=1)
    field: str | None = Field(None, min_length=1, description="a top-level field of the event")
    feature: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+(@[1-9][0-9]*)?\.[A-Za-z0-9_]+$",
        description="a computed feature, as group.feature (e.g. user_spend.amount_mean_1h: the "
        "newest configured version of the group) or group@N.feature (version N)",
    )
    max_entities_per_batch: int = Field(
        64,
        ge=1,
        description="feature monitors: entities sampled per partition batch (their feature "
        "value after the batch is one monitored value each)",
    )
    segment_by: str | None = Field(
        None, min_length=1, description="a field whose value selects a separate monitor"
    )
    max_segments: int = Field(
        50,
        ge=1,
        description="named segments kept; values first seen after that share '__other__'",
    )
    detectors: tuple[DetectorName, ...] = DEFAULT_DETECTORS
    statistics: tuple[Statistic, ...] = STATISTICS
    warmup: int = Field(
        1000,
        ge=100,
        description="values learned as the reference before any alert; also the size of "
        "the fresh reference learned during an incident",
    )
    stable_after: int = Field(
        1000,
        ge=1,
        description="values in a row without a detection whose scores fit the baseline "
        "(the reference from before the incident): the stream recovered, the incident closes",
    )
    season: str | None = Field(
        None,
        description="the field's cycle in event time (e.g. 1d, 7d): the monitor learns the "
        "mean and sd of each phase over the first cycle, then monitors each value's "
        "residual against its phase (see driftline.drift.season)",
    )
    season_bins: int = Field(96, ge=1, le=10_000, description="phases of the season")
    skip_first: str | None = Field(
        None,
        description="event time after a segment's first value during which values are "
        "neither learned nor scored; feature monitors default to the feature's window, so "
        "they learn from windows that have filled (a 1h mean in its first hour is a partial "
        "mean that only rises); 0s: monitor from the first value",
    )
    accept_after: str | None = Field(
        "1h",
        description="event time after which an open incident's distribution is accepted "
        "as the new normal (the incident closes, the monitor learns a fresh reference); "
        "null: only an operator accepts (driftline monitors accept)",
    )
    recent_window: int = Field(500, ge=10, description="values kept for current stats")
    critical_shift_sd: float = Field(
        1.0, gt=0, description="|mean shift| in reference sd from which an incident is critical"
    )
    critical_sd_ratio: float = Field(
        2.0, gt=1, description="sd ratio (or its inverse) from which an incident is critical"
    )
    page_hinkley: PageHinkleyParams = PageHinkleyParams()
    adwin: AdwinParams = AdwinParams()

    @field_validator("accept_after", "skip_first", "season")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)  # raises ValueError with the reason
        return value

    @property
    def season_ms(self) -> int | None:
        """:attr:`season` in ms; None: not seasonal."""
        return None if self.season is None else parse_duration(self.season)

    @property
    def skip_first_ms(self) -> int:
        """:attr:`skip_first` in ms (0: none)."""
        return 0 if self.skip_first is None else parse_duration(self.skip_first)

    @property
    def accept_after_ms(self) -> int | None:
        """:attr:`accept_after` in ms; None: never automatically."""
        return None if self.accept_after is None else parse_duration(self.accept_after)

    @model_validator(mode="after")
    def _one_target(self) -> MonitorConfig:
        if (self.field is None) == (self.feature is None):
            raise ValueError("give either field (an event field) or feature (group.feature)")
        return self

    @property
    def watched(self) -> str:
        """What the monitor watches: the event field, or ``group.feature``."""
        return self.field if self.field is not None else str(self.feature)

    @property
    def feature_group(self) -> str | None:
        return None if self.feature is None else self.feature.rsplit(".", 1)[0]

    @property
    def feature_name(self) -> str | None:
        return None if self.feature is None else self.feature.rsplit(".", 1)[1]

    @field_validator("detectors", "statistics", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("detectors", "statistics")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one")
        if len(set(value)) != len(value):
            raise ValueError(f"listed twice: {sorted({v for v in value if value.count(v) > 1})}")
        return value

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> MonitorConfig:
        """Validate ``data`` (a mapping from YAML) into a config.

        Raises :class:`DriftConfigError` naming the monitor and the first bad
        key, with a "did you mean" for a misspelt one.
        """
        name = data.get("name") if isinstance(data, Mapping) else None
        monitor = name if isinstance(name, str) and name else "<unnamed>"
        if not isinstance(data, Mapping):
            raise DriftConfigError(monitor, "(monitor)", f"expected a mapping, got {data!r}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or "(monitor)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key" + _did_you_mean(key)
            elif error["type"] == "literal_error" and key.startswith("detectors"):
                message = f"unknown detector {error['input']!r}; known: {', '.join(DETECTORS)}"
            raise DriftConfigError(monitor, key, message) from None


def _did_you_mean(key: str) -> str:
    *parents, last = key.split(".")
    model: type[BaseModel] = MonitorConfig
    for part in parents:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    known = sorted(model.model_fields)
    close = difflib.get_close_matches(last, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"
