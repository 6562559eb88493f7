"""A drift monitor: one numeric stream in, incident alerts out.

Life of a monitor
-----------------
::

    warmup ──(warmup values)──► monitoring ──detection──► incident ──► "closed", back to monitoring:
                                    ▲          "opened"    │  scored against the baseline
                                    │                      │  (the reference from before it);
                                    │                      │  "updated" only when it escalates
                                    │                      │
                                    ├─── "recovered": stable_after quiet values fit the baseline
                                    │
                                    └─── relearning ◄── "accepted": by an operator (accept()),
                                         (warmup values,   or after accept_after of event time;
                                          if the incident   the newest values become the new
                                          held fewer)       reference

* **warmup**: the first ``warmup`` values become the reference (see
  :mod:`driftline.drift.reference`); nothing is detected, no alert is possible.
* **monitoring**: every value is scored against the reference and fed to each
  detector (see :mod:`driftline.drift.detectors`).  The first detection opens an
  incident and returns an ``opened`` alert.
* **incident**: the reference from before the incident stays in force as the
  **baseline**: values are scored against it and the detectors keep running
  on those scores (they are never muted), so a lasting change keeps firing
  them; those detections are folded into the incident, and one returns an
  ``updated`` alert only if it escalates the severity (warning -> critical).
  The incident closes in one of two ways:

  - ``recovered``: ``stable_after`` values in a row without a detection whose
    mean location and scale scores fit the baseline (within 4 standard
    errors, the baseline's own sampling error included): the stream is back;
  - ``accepted``: the new distribution is the new normal, said by an operator
    (:meth:`Monitor.accept`, ``driftline monitors accept``) or by the clock,
    ``accept_after`` of event time after the incident opened (default 1 h, so
    the alert rules fire and stay firing while people look) and once the
    stream has stopped moving (the newest ``warmup`` values agree with the
    ``warmup`` before them: a ramp is accepted when it ends).  The newest
    ``warmup`` values become the reference; an incident shorter than that
    relearns first (**relearning**, no detection, like the warm-up).

Why the baseline, and not a reference learned after the change (the rule
until December 2026): an incident then closed as soon as a fresh reference of
the *new* values fitted them, 15 s after a lasting +80 % shift in the demo,
before any alert rule fired, and left no trace that the stream had changed.
Kept against the baseline, a lasting change stays one open incident until it
is gone or accepted; a gradual drift stays one incident for its whole ramp
(it does not fit the baseline at any point of it); a blip closes as soon as
the stream is back.

Checkpoints
-----------
:meth:`Monitor.to_state` returns a JSON document (format
``driftline.monitor/2``, see :mod:`driftline.drift.state`) that :meth:`Monitor.from_state`
restores exactly, so a restart neither loses an open incident nor raises it
again.  It holds data only (numbers, strings, base64 floats), never objects:
restoring a document written by someone else can make a monitor wrong, never
run code, and a malformed one is refused with :class:`DriftStateError`.

One module, on purpose (about 560 lines): the monitor is one state machine,
and its checkpoint must restore every private field of it exactly, so the
machine, its incident record and their checkpoint form stay together; the
parts with no state of the monitor's live beside it (:mod:`driftline.drift.reference`,
:mod:`driftline.drift.detectors`, :mod:`driftline.drift.state`, :mod:`driftline.drift.alerts`).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Literal, cast

from driftline.drift.alerts import Alert, AlertKind, AlertReason, Severity
from driftline.drift.config import DETECTORS, STATISTICS, MonitorConfig
from driftline.drift.detector_state import model_state, restore_model
from driftline.drift.detectors import Channel, build_channels
from driftline.drift.reference import Reference
from driftline.drift.season import SeasonProfile
from driftline.drift.state import (
    MONITOR_FORMAT,
    Fields,
    check_config,
    dump_document,
    encode_number,
    load_document,
    pack_floats,
)
from driftline.drift.stats import Stats

#: The segment of a monitor that is not segmented.
ALL_SEGMENT = "__all__"

Phase = Literal["warmup", "monitoring", "incident", "relearning"]
_PHASES: tuple[Phase, ...] = ("warmup", "monitoring", "incident", "relearning")
# The change-point estimate looks at no fewer trailing values than this.
_MIN_CHANGE_LENGTH = 10
# A quiet window fits the baseline when its mean scores are within this many
# standard errors of 0.
_STABLE_Z = 4.0


@dataclass(slots=True)
class _Incident:
    seq: int
    incident_id: str
    opened_event_time_ms: int
    opened_value_index: int
    change_start_index: int
    first_offset: int | None
    last_offset: int | None
    severity: Severity
    reference: Stats
    last_detector: str
    last_statistic: str
    detections: int = 0
    labels: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "incident_id": self.incident_id,
            "opened_event_time_ms": self.opened_event_time_ms,
            "opened_value_index": self.opened_value_index,
            "change_start_index": self.change_start_index,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "severity": self.severity,
            "reference": [
                encode_number(self.reference.mean),
                encode_number(self.reference.std),
                self.reference.n,
            ],
            "last_detector": self.last_detector,
            "last_statistic": self.last_statistic,
            "detections": self.detections,
            "labels": sorted(self.labels),
        }

    @classmethod
    def from_dict(cls, data: object) -> _Incident:
        f = Fields(data, "drift monitor checkpoint: incident")
        reference = f.items("reference")
        if len(reference) != 3:
            raise f.fail("reference", "[mean, std, n]")
        ref = Fields(dict(zip(("mean", "std", "n"), reference, strict=True)), f.what)
        labels = f.items("labels")
        if not all(isinstance(label, str) for label in labels):
            raise f.fail("labels", "a list of strings")
        severity = cast(Severity, f.text("severity", ("warning", "critical")))
        return cls(
            seq=f.integer("seq"),
            incident_id=f.text("incident_id"),
            opened_event_time_ms=f.integer("opened_event_time_ms", low=None),
            opened_value_index=f.integer("opened_value_index"),
            change_start_index=f.integer("change_start_index", low=None),
            first_offset=f.integer("first_offset", low=None, nullable=True),
            last_offset=f.integer("last_offset", low=None, nullable=True),
            severity=severity,
            reference=Stats(ref.number("mean"), ref.number("std"), ref.integer("n")),
            last_detector=f.text("last_detector", DETECTORS),
            last_statistic=f.text("last_statistic", STATISTICS),
            detections=f.integer("detections"),
            labels=set(labels),
        )


class Monitor:
    """Drift monitor of one stream of floats (one field, one segment)."""

    def __init__(self, config: MonitorConfig, *, segment: str = ALL_SEGMENT) -> None:
        self.config = config
        self.segment = segment
        self._n = 0
        self._skipped = 0
        self._phase: Phase = "warmup"
        self._sample: list[float] = []
        self._reference: Reference | None = None
        self._channels: list[Channel] = []
        self._recent: deque[float] = deque(maxlen=config.recent_window)
        self._incident: _Incident | None = None
        self._incidents = 0
        # during an incident: quiet values in a row, their score sums against the
        # baseline, and the newest values (the reference if the change is accepted)
        self._stable = 0
        self._settle_sums = [0.0, 0.0]  # location, scale
        # (twice the warm-up: the newest half becomes the reference if the change is
        # accepted, the older half tells whether the stream has stopped moving)
        self._candidate: deque[float] = deque(maxlen=2 * config.warmup)
        # skip_first: the event time of the segment's first value, and values skipped since
        self._first_event_ms: int | None = None
        self._filling = 0
        season_ms = config.season_ms
        self._season = SeasonProfile(season_ms, config.season_bins) if season_ms else None
        # parsed once: update() reads them per value
        self._skip_ms = config.skip_first_ms
        self._accept_after_ms = config.accept_after_ms

    # -- reading -------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """``warmup``, ``monitoring``, ``incident`` or ``relearning`` (see module doc)."""
        return self._phase

    @property
    def warming_up(self) -> bool:
        """True until the first reference is learned; no alert is possible."""
        return self._phase == "warmup"

    @property
    def incident_open(self) -> bool:
        return self._incident is not None

    @property
    def incident_id(self) -> str | None:
        """The open incident's id, or None."""
        return self._incident.incident_id if self._incident else None

    @property
    def n_values(self) -> int:
        """Finite values seen (the ``value_index`` of the last one)."""
        return self._n

    @property
    def n_filling(self) -> int:
        """Values skipped within ``skip_first`` of the first one (windows still filling)."""
        return self._filling

    @property
    def n_skipped(self) -> int:
        """Non-finite values skipped (NaN, infinities)."""
        return self._skipped

    @property
    def reference_stats(self) -> Stats | None:
        """Raw stats of the reference in force (the baseline during an incident);
        None while warming up or relearning."""
        return self._reference.stats if self._reference else None

    @property
    def reference_sample(self) -> Sequence[float]:
        """The reference in force, sorted (the baseline during an incident); empty if none."""
        return self._reference.sample if self._reference else ()

    @property
    def recent_values(self) -> Sequence[float]:
        """The last ``recent_window`` values, oldest first."""
        return tuple(self._recent)

    @property
    def n_incidents(self) -> int:
        """Incidents opened so far."""
        return self._incidents

    @property
    def incident_change_start(self) -> int | None:
        """The open incident's estimated first changed value (a value index), or None."""
        return self._incident.change_start_index if self._incident is not None else None

    @property
    def incident_summary(self) -> dict[str, Any] | None:
        """The open incident: id, opened at (event time ms), severity, detections; or None."""
        incident = self._incident
        if incident is None:
            return None
        return {
            "incident_id": incident.incident_id,
            "opened_event_time_ms": incident.opened_event_time_ms,
            "severity": incident.severity,
            "detections": incident.detections,
            "detectors": sorted(incident.labels),
        }

    @property
    def recent_stats(self) -> Stats:
        """Raw stats of the last ``recent_window`` values."""
        return Stats.of(list(self._recent))

    # -- feeding -------------------------------------------------------------

    def update(self, value: float, *, event_time_ms: int, offset: int | None = None) -> list[Alert]:
        """Feed one value; return the alerts it caused (usually none).

        Non-finite values are skipped and counted in :attr:`n_skipped`.
        ``offset`` (the Kafka offset, if the caller has one) only feeds the
        ``first_offset``/``last_offset`` of an open incident.
        """
        if not math.isfinite(value):
            self._skipped += 1
            return []
        if self._skip_ms and self._filling_at(event_time_ms):
            return []
        season = self._season
        if season is not None:
            if season.learning(event_time_ms):
                season.learn(value, event_time_ms)
                self._filling += 1
                return []
            residual = season.residual(value, event_time_ms)
            if residual is None:  # a phase the first cycle did not see enough of
                self._skipped += 1
                return []
            value = residual
        self._n += 1
        self._recent.append(value)
        reference = self._reference
        if reference is None:  # warming up, or relearning after an accepted change
            self._sample.append(value)
            if len(self._sample) >= self.config.warmup:
                self._adopt_reference()
            return []

        scores = reference.scores(value)
        fired: list[Channel] = []
        for channel in self._channels:
            model = channel.model
            model.update(scores[channel.index])
            if model.drift_detected:
                fired.append(channel)

        incident = self._incident
        if incident is None:
            return [self._open_at(fired, value, event_time_ms, offset)] if fired else []

        alerts: list[Alert] = []
        self._candidate.append(value)
        if offset is not None:
            incident.last_offset = offset
            if incident.first_offset is None:
                incident.first_offset = offset
        if fired:
            alert = self._fold(incident, fired, event_time_ms)
            if alert is not None:
                alerts.append(alert)
            self._stable = 0
            self._settle_sums = [0.0, 0.0]
        else:
            self._stable += 1
            sums = self._settle_sums
            sums[0] += scores[0]
            sums[1] += scores[1]
            if self._stable >= self.config.stable_after:
                if self._fits():
                    alerts.append(self._recovered(incident, event_time_ms))
                    return alerts
                self._stable = 0  # not back yet: judge the next window
                self._settle_sums = [0.0, 0.0]
        after = self._accept_after_ms
        if (
            after is not None
            and event_time_ms - incident.opened_event_time_ms >= after
            and self._settled()
        ):
            alerts.append(self._accept(incident, event_time_ms))
        return alerts

    def update_many(self, samples: Sequence[tuple[int, int, float, Any]]) -> list[Alert]:
        """Feed ``(offset, event_time_ms, value, segment)`` samples in order, as :meth:`update`
        one by one would (``tests/unit/drift/test_monitor.py`` checks alerts and state).

        The worker's path.  While a reference is set, no incident is open and
        the field is not seasonal (nearly always), a run of values takes a
        tight loop: their scores are computed at once
        (:meth:`~driftline.drift.reference.Reference.scores_many`, bit for bit
        :meth:`~driftline.drift.reference.Reference.scores`) and only the
        detectors are fed value by value.  The value that opens an incident
        ends the run; everything else goes through :meth:`update`.
        """
        alerts: list[Alert] = []
        i = 0
        n = len(samples)
        while i < n:
            if self._reference is None or self._incident is not None or self._season is not None:
                offset, event_time_ms, value, _ = samples[i]
                out = self.update(value, event_time_ms=event_time_ms, offset=offset)
                if out:
                    alerts += out
                i += 1
            else:
                i = self._run(samples, i, alerts)
        return alerts

    def _run(
        self, samples: Sequence[tuple[int, int, float, Any]], start: int, alerts: list[Alert]
    ) -> int:
        """:meth:`update_many` from ``start`` while nothing is open; the next index to feed."""
        reference = self._reference
        assert reference is not None and self._incident is None and self._season is None
        run = samples[start:]
        values = [s[2] for s in run]
        location, scale = reference.scores_many(values)
        feeds = [
            (c.model.update, c.model, location if c.index == 0 else scale, c)
            for c in self._channels
        ]
        skip_ms = self._skip_ms
        recent = self._recent.append
        isfinite = math.isfinite
        for k, value in enumerate(values):
            if not isfinite(value):
                self._skipped += 1
                continue
            if skip_ms and self._filling_at(run[k][1]):
                continue
            self._n += 1
            recent(value)
            fired: list[Channel] | None = None
            for update, model, scores, channel in feeds:
                update(scores[k])
                if model.drift_detected:
                    if fired is None:
                        fired = []
                    fired.append(channel)
            if fired:
                offset, event_time_ms, _, _ = run[k]
                alerts.append(self._open_at(fired, value, event_time_ms, offset))
                return start + k + 1
        return start + len(run)

    def _filling_at(self, event_time_ms: int) -> bool:
        """``skip_first``: is a value at this time within it (counted as filling)?"""
        if self._first_event_ms is None:
            self._first_event_ms = event_time_ms
        if event_time_ms < self._first_event_ms + self._skip_ms:
            self._filling += 1
            return True
        return False

    def _open_at(
        self, fired: list[Channel], value: float, event_time_ms: int, offset: int | None
    ) -> Alert:
        """The value that ``fired`` opens an incident: the alert; it is the first candidate."""
        opened = self._open(fired, event_time_ms, offset)
        self._candidate.append(value)
        return opened

    def _settled(self) -> bool:
        """Has the stream stopped moving?  The newest ``warmup`` values against those before.

        The clock accepts a change once it is over: a ramp still rising when
        ``accept_after`` has passed would otherwise be accepted part way and
        opened again.  The two blocks' means must be within 4 standard errors;
        blocks of ``warmup`` values keep a ramp far outside that (a ramp of
        3 sd over 5,000 values moves 0.6 sd between them: 13 standard errors),
        so checking every value does not let it through by chance.  An
        incident too short to hold two blocks is accepted as it is.
        """
        warmup = self.config.warmup
        values = self._candidate
        if len(values) < 2 * warmup:
            return True
        older = Stats.of(list(itertools.islice(values, 0, warmup)))
        newer = Stats.of(list(itertools.islice(values, warmup, None)))
        spread = math.sqrt((older.std**2 + newer.std**2) / warmup)
        return spread == 0 or abs(newer.mean - older.mean) <= _STABLE_Z * spread

    def accept(self, *, event_time_ms: int) -> Alert | None:
        """Accept the open incident's distribution as the new normal (an operator's call).

        Returns the ``closed`` alert (reason ``accepted``), or None when no
        incident is open.  The newest ``warmup`` values become the reference.
        """
        if self._incident is None:
            return None
        return self._accept(self._incident, event_time_ms)

    # -- incident life -------------------------------------------------------

    def _adopt_reference(self) -> None:
        self._reference = Reference(self._sample)
        self._sample = []
        self._channels = build_channels(self.config)
        self._phase = "monitoring"

    def _quiet(self) -> None:
        self._stable = 0
        self._settle_sums = [0.0, 0.0]
        self._candidate.clear()

    def _fits(self) -> bool:
        """Do the quiet window's mean scores fit the baseline?

        Each score is ~N(0, 1) under the baseline, and the baseline itself is
        a sample of ``warmup`` values, hence the standard error.
        """
        n = self._stable
        tolerance = _STABLE_Z * math.sqrt(1 / n + 1 / self.config.warmup)
        return all(
            abs(self._settle_sums[0 if statistic == "location" else 1] / n) <= tolerance
            for statistic in self.config.statistics
        )

    def _open(self, fired: list[Channel], event_time_ms: int, offset: int | None) -> Alert:
        assert self._reference is not None
        self._incidents += 1
        first = fired[0]
        length = self._change_length(first.index)
        current = Stats.of(self._tail(length))
        reference = self._reference.stats
        severity, shift, ratio = self._assess(reference, current)
        incident = _Incident(
            seq=self._incidents,
            incident_id=f"{self.config.name}/{self.segment}/{self._incidents}-{event_time_ms}",
            opened_event_time_ms=event_time_ms,
            opened_value_index=self._n,
            change_start_index=self._n - length + 1,
            first_offset=offset,
            last_offset=offset,
            severity=severity,
            reference=reference,
            last_detector=first.detector,
            last_statistic=first.statistic,
        )
        self._record(incident, fired)
        self._incident = incident
        self._quiet()
        self._phase = "incident"
        return self._alert(incident, "opened", "detected", event_time_ms, current, shift, ratio)

    def _fold(self, incident: _Incident, fired: list[Channel], event_time_ms: int) -> Alert | None:
        """A detection during an open incident: record it; alert only if it escalates.

        A lasting change keeps firing the detectors against the baseline, so
        most detections say nothing new.  A detection on the other statistic
        is recorded but not alerted either: a large mean shift also moves the
        scale score (values land far from the baseline median).
        """
        self._record(incident, fired)
        current = self._since_change(incident)
        severity, shift, ratio = self._assess(incident.reference, current)
        if severity == "critical" and incident.severity == "warning":
            incident.severity = severity
            return self._alert(
                incident, "updated", "escalated", event_time_ms, current, shift, ratio
            )
        return None

    def _recovered(self, incident: _Incident, event_time_ms: int) -> Alert:
        """Back at the baseline: close; the baseline stays, with fresh detectors."""
        current = self.recent_stats
        _, shift, ratio = self._assess(incident.reference, current)
        alert = self._alert(incident, "closed", "recovered", event_time_ms, current, shift, ratio)
        self._incident = None
        self._quiet()
        self._channels = build_channels(self.config)
        self._phase = "monitoring"
        return alert

    def _accept(self, incident: _Incident, event_time_ms: int) -> Alert:
        """The change is the new normal: close; the newest values become the reference."""
        current = self._since_change(incident)
        _, shift, ratio = self._assess(incident.reference, current)
        alert = self._alert(incident, "closed", "accepted", event_time_ms, current, shift, ratio)
        newest = list(self._candidate)[-self.config.warmup :]
        self._incident = None
        self._quiet()
        self._reference = None
        self._channels = []
        self._sample = newest
        self._phase = "relearning"
        if len(newest) >= self.config.warmup:
            self._adopt_reference()
        return alert

    def _since_change(self, incident: _Incident) -> Stats:
        return Stats.of(self._tail(self._n - incident.change_start_index + 1))

    @staticmethod
    def _record(incident: _Incident, fired: list[Channel]) -> None:
        incident.detections += len(fired)
        incident.last_detector = fired[0].detector
        incident.last_statistic = fired[0].statistic
        for channel in fired:
            incident.labels.add(channel.label)

    def _alert(
        self,
        incident: _Incident,
        kind: AlertKind,
        reason: AlertReason,
        event_time_ms: int,
        current: Stats,
        shift: float | None,
        ratio: float | None,
    ) -> Alert:
        config = self.config
        return Alert(
            monitor=config.name,
            source=config.source,
            field=config.watched,
            segment=self.segment,
            incident_id=incident.incident_id,
            kind=kind,
            reason=reason,
            detector=incident.last_detector,
            statistic=incident.last_statistic,
            severity=incident.severity,
            event_time_ms=event_time_ms,
            value_index=self._n,
            opened_event_time_ms=incident.opened_event_time_ms,
            opened_value_index=incident.opened_value_index,
            change_start_index=incident.change_start_index,
            first_offset=incident.first_offset,
            last_offset=incident.last_offset,
            detections=incident.detections,
            detectors=tuple(sorted(incident.labels)),
            reference=incident.reference,
            current=current,
            mean_shift_sd=shift,
            sd_ratio=ratio,
        )

    def _assess(
        self, reference: Stats, current: Stats
    ) -> tuple[Severity, float | None, float | None]:
        """Severity, mean shift in reference sd and sd ratio of ``current``."""
        if reference.std <= 0 or current.n == 0:
            changed = current.n > 0 and (current.std > 0 or current.mean != reference.mean)
            return ("critical" if changed else "warning"), None, None
        shift = (current.mean - reference.mean) / reference.std
        ratio = current.std / reference.std if current.n >= 2 else None
        critical_ratio = self.config.critical_sd_ratio
        critical = abs(shift) >= self.config.critical_shift_sd or (
            ratio is not None and (ratio >= critical_ratio or ratio * critical_ratio <= 1)
        )
        return ("critical" if critical else "warning"), shift, ratio

    def _change_length(self, index: int) -> int:
        """How many trailing values the change covers (maximum-likelihood split).

        Scores are N(0, 1) before the change, so the most likely start of a
        shifted tail of length m maximises (sum of its scores)^2 / m.
        """
        assert self._reference is not None
        scores = self._reference.scores
        best_length = min(len(self._recent), _MIN_CHANGE_LENGTH)
        best = -1.0
        total = 0.0
        for length, value in enumerate(reversed(self._recent), start=1):
            total += scores(value)[index]
            if length >= _MIN_CHANGE_LENGTH and total * total / length > best:
                best = total * total / length
                best_length = length
        return best_length

    def _tail(self, length: int) -> list[float]:
        recent = self._recent
        length = max(1, min(length, len(recent)))
        return list(itertools.islice(recent, len(recent) - length, None))

    # -- checkpoints ---------------------------------------------------------

    def to_state(self) -> bytes:
        """Everything needed to continue exactly where this monitor is (JSON bytes)."""
        return dump_document(self.to_document())

    def to_document(self) -> dict[str, Any]:
        return {
            "format": MONITOR_FORMAT,
            "river": version("river"),  # informational: detector states are plain numbers
            "config": self.config.model_dump(mode="json"),
            "segment": self.segment,
            "n": self._n,
            "skipped": self._skipped,
            "phase": self._phase,
            "sample": pack_floats(self._sample),
            "reference": pack_floats(self._reference.sample) if self._reference else None,
            "channels": [
                {
                    "detector": c.detector,
                    "statistic": c.statistic,
                    "state": model_state(c.detector, c.model),
                }
                for c in self._channels
            ],
            "recent": pack_floats(self._recent),
            "incident": self._incident.to_dict() if self._incident else None,
            "incidents": self._incidents,
            "stable": self._stable,
            "settle_sums": [encode_number(s) for s in self._settle_sums],
            "candidate": pack_floats(self._candidate),
            "first_event_ms": self._first_event_ms,
            "filling": self._filling,
            "season": self._season.to_dict() if self._season is not None else None,
        }

    @classmethod
    def from_state(cls, data: bytes, *, config: MonitorConfig | None = None) -> Monitor:
        """Restore a checkpoint of :meth:`to_state`.

        With ``config`` (the configuration the worker runs now), a checkpoint
        written under any other configuration is refused with
        :class:`DriftStateError` naming the keys that differ; so is anything
        that is not a well-formed document of this format.
        """
        return cls.from_document(load_document(data, MONITOR_FORMAT, "monitor"), config=config)

    @classmethod
    def from_document(
        cls, document: Mapping[str, Any], *, config: MonitorConfig | None = None
    ) -> Monitor:
        f = Fields(document, "drift monitor checkpoint")
        if f.get("format") != MONITOR_FORMAT:
            raise f.fail("format", MONITOR_FORMAT)
        stored = check_config(Fields(f.get("config"), f.what).document, config)
        monitor = cls(stored, segment=f.text("segment"))
        monitor._restore(f)
        return monitor

    def _restore(self, f: Fields) -> None:
        config = self.config
        phase = f.text("phase", _PHASES)
        reference = f.get("reference")
        incident = f.get("incident")
        if (reference is None) != (phase in ("warmup", "relearning")):
            raise f.fail("reference", "a reference exactly when not warming up or relearning")
        if (incident is None) != (phase != "incident"):
            raise f.fail("incident", "an incident exactly in the incident phase")
        channels = f.items("channels")
        expected = [
            (c.detector, c.statistic) for c in build_channels(config) if reference is not None
        ]
        found = [
            (c.get("detector"), c.get("statistic")) if isinstance(c, dict) else None
            for c in channels
        ]
        if found != expected:
            raise f.fail("channels", f"the detectors of the configuration {expected}")
        settle_sums = f.items("settle_sums")
        if len(settle_sums) != 2:
            raise f.fail("settle_sums", "two numbers")
        sums = Fields(dict(zip(("location", "scale"), settle_sums, strict=True)), f.what)

        self._n = f.integer("n")
        self._skipped = f.integer("skipped")
        self._phase = cast(Phase, phase)
        self._sample = f.floats("sample", limit=config.warmup - 1)
        if reference is not None:
            values = f.floats("reference", limit=config.warmup)
            if len(values) != config.warmup:
                raise f.fail("reference", f"{config.warmup} values")
            self._reference = Reference(values)
        self._channels = []
        for (detector, statistic), c in zip(expected, channels, strict=True):
            what = f"{f.what}: {detector}/{statistic}"
            state = Fields(c, what).get("state")
            model = restore_model(detector, config, state, what)
            self._channels.append(Channel(detector, statistic, model))
        self._recent.extend(f.floats("recent", limit=config.recent_window))
        self._incident = _Incident.from_dict(incident) if incident is not None else None
        self._incidents = f.integer("incidents")
        self._stable = f.integer("stable")
        self._settle_sums = [sums.number("location"), sums.number("scale")]
        self._candidate.extend(f.floats("candidate", limit=2 * config.warmup))
        self._first_event_ms = f.integer("first_event_ms", low=None, nullable=True)
        self._filling = f.integer("filling")
        season = f.get("season")
        if (season is None) != (self._season is None):
            raise f.fail("season", "a season profile exactly when the monitor has a season")
        if self._season is not None:
            if not isinstance(season, dict):
                raise f.fail("season", "a season profile")
            try:
                self._season = SeasonProfile.from_dict(
                    season, self._season.season_ms, self._season.bins
                )
            except ValueError as exc:
                raise f.fail("season", str(exc)) from None
