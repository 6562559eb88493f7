"""One monitor per segment value, bounded.

With ``segment_by: country`` every distinct country gets its own
:class:`~driftline.drift.monitor.Monitor` (own warm-up, own reference, own incidents),
so a change in one country is not diluted by the others.  Memory and
checkpoint size grow with the number of segments, so only the first
``max_segments`` distinct values seen get a monitor of their own; every value
first seen after that shares one extra monitor, ``__other__`` (so at most
``max_segments + 1`` monitors).  Keep in mind:

* "first seen" is per worker: which values get their own monitor depends on
  the order events arrive in, and a rebalance that starts from a checkpoint
  keeps the same assignment;
* ``__other__`` watches a mixture, so a new segment value appearing in it
  can itself show up as drift there;
* an event without the segment field (or with null) goes to ``__missing__``,
  a named segment like any other;
* segment values are compared as strings (``1`` and ``"1"`` are one segment;
  booleans are ``true``/``false``); a value literally equal to a reserved name
  shares that segment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from driftline.drift.alerts import Alert
from driftline.drift.config import MonitorConfig
from driftline.drift.monitor import ALL_SEGMENT, Monitor
from driftline.drift.state import (
    SEGMENTED_FORMAT,
    Fields,
    check_config,
    dump_document,
    load_document,
)

OTHER_SEGMENT = "__other__"
MISSING_SEGMENT = "__missing__"


def segment_name(value: object) -> str:
    """The segment a raw field value belongs to (before the ``max_segments`` bound)."""
    if value is None:
        return MISSING_SEGMENT
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class SegmentedMonitor:
    """Routes values to per-segment monitors; the unit a worker keeps per config."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self._monitors: dict[str, Monitor] = {}
        self._named = 0
        self._skipped_missing = 0

    @property
    def monitors(self) -> Mapping[str, Monitor]:
        """Segment name -> monitor, in creation order (read-only view)."""
        return MappingProxyType(self._monitors)

    @property
    def n_skipped_missing(self) -> int:
        """Events whose field was absent, null or not a number."""
        return self._skipped_missing

    @property
    def n_skipped(self) -> int:
        """All values skipped: missing ones and non-finite ones."""
        return self._skipped_missing + sum(m.n_skipped for m in self._monitors.values())

    def segment_for(self, value: object) -> str:
        """The segment ``value`` is routed to now (does not create it)."""
        if self.config.segment_by is None:
            return ALL_SEGMENT
        name = segment_name(value)
        if name in self._monitors or self._named < self.config.max_segments:
            return name
        return OTHER_SEGMENT

    def monitor_for(self, value: object) -> Monitor:
        """The monitor of ``value``'s segment, created on first use."""
        name = self.segment_for(value)
        monitor = self._monitors.get(name)
        if monitor is None:
            monitor = self._monitors[name] = Monitor(self.config, segment=name)
            if name not in (ALL_SEGMENT, OTHER_SEGMENT):
                self._named += 1
        return monitor

    def update(
        self,
        value: float,
        *,
        segment: object = None,
        event_time_ms: int,
        offset: int | None = None,
    ) -> list[Alert]:
        """Feed one value of segment value ``segment`` (ignored without ``segment_by``)."""
        return self.monitor_for(segment).update(value, event_time_ms=event_time_ms, offset=offset)

    def update_samples(self, samples: Iterable[tuple[int, int, float, Any]]) -> list[Alert]:
        """Feed ``(offset, event_time_ms, value, segment)`` samples in order, as
        :meth:`update` one by one would; the worker's path (one call per batch)."""
        if self.config.segment_by is None:
            return self.monitor_for(None).update_many(list(samples))
        alerts: list[Alert] = []
        for offset, event_time_ms, value, segment in samples:
            out = self.monitor_for(segment).update(
                value, event_time_ms=event_time_ms, offset=offset
            )
            if out:
                alerts += out
        return alerts

    def accept(self, segment: str | None, *, event_time_ms: int) -> list[Alert]:
        """Accept the open incident of ``segment`` (a segment name), or of every segment.

        Returns the ``closed`` alerts (reason ``accepted``); none when nothing
        is open.  An unknown segment name accepts nothing.
        """
        if segment is None:
            chosen = list(self._monitors.values())
        else:
            one = self._monitors.get(segment)
            chosen = [one] if one is not None else []
        alerts = [m.accept(event_time_ms=event_time_ms) for m in chosen]
        return [a for a in alerts if a is not None]

    def update_event(
        self, event: Mapping[str, Any], *, event_time_ms: int, offset: int | None = None
    ) -> list[Alert]:
        """Feed one decoded event: reads ``field`` and ``segment_by`` from it.

        An absent, null or non-numeric field (booleans included) is skipped
        and counted in :attr:`n_skipped_missing`.
        """
        if self.config.field is None:
            raise ValueError(
                f"monitor {self.config.name!r} watches feature {self.config.feature}: "
                "feed its values with update()"
            )
        raw = event.get(self.config.field)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            self._skipped_missing += 1
            return []
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond float range
            value = math.inf
        key = event.get(self.config.segment_by) if self.config.segment_by else None
        return self.update(value, segment=key, event_time_ms=event_time_ms, offset=offset)

    # -- checkpoints ---------------------------------------------------------

    def to_state(self) -> bytes:
        """A JSON checkpoint (format ``driftline.segmented-monitor/2``).

        See :mod:`driftline.drift.state`.
        """
        return dump_document(
            {
                "format": SEGMENTED_FORMAT,
                "config": self.config.model_dump(mode="json"),
                "named": self._named,
                "skipped_missing": self._skipped_missing,
                "monitors": [m.to_document() for m in self._monitors.values()],
            }
        )

    @classmethod
    def from_state(cls, data: bytes, *, config: MonitorConfig | None = None) -> SegmentedMonitor:
        """Restore :meth:`to_state`; refused under another configuration or when malformed."""
        f = Fields(load_document(data, SEGMENTED_FORMAT, "segmented monitor"), "drift checkpoint")
        stored = check_config(f.document["config"], config)
        segmented = cls(stored)
        segmented._named = f.integer("named")
        segmented._skipped_missing = f.integer("skipped_missing")
        documents = f.items("monitors")
        if len(documents) > stored.max_segments + 1:  # the named ones and __other__
            raise f.fail("monitors", f"at most {stored.max_segments + 1} segments")
        for document in documents:
            monitor = Monitor.from_document(Fields(document, f.what).document, config=stored)
            if monitor.segment in segmented._monitors:
                raise f.fail("monitors", "one monitor per segment")
            segmented._monitors[monitor.segment] = monitor
        return segmented
