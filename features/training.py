"""Point-in-time features for training rows, from the same window engine the worker runs.

A training row is ``(entity, as_of_ms)``: the moment a label was observed.
Its features must be what serving could have read then: only events with an
event time at or before ``as_of_ms`` count, none after (no leakage).

:class:`PointInTimeJoin` answers every row in one pass over the events **in
event-time order** (fed in chunks, for example a day of the offline log at a
time), keeping per entity only its window state and the few events not yet
folded::

    events, by event time   e1(a) e2(b) e3(a)        e4(a)  e5(b)
    rows, by time                           t1(a)                   t2(b)
    entity a: fold [e1, e3], read at t1; then a has no row left: its state is dropped
    entity b: fold [e2, e5], read at t2

Each read is at or after the newest event folded, where the engine's reads
are exact (:mod:`driftline.features.engine`: pruning never changes such a
read), and folding in pieces gives the state folding at once gives, so a row
gets exactly the value the online store holds for those events, to float
rounding (the worker merges the same events in other batches).  Events at
the same time as a row count for it.  An entity without events before a row
gets the values of a missing entity: counts 0, sums 0.0, the rest ``None``.

Memory: the states of entities that still have rows to answer, plus at most
``fold_every`` unfolded events each; never the whole event history.

Which events count is the caller's business: the offline event log holds the
accepted ones (after the contract, the time verdicts and the quality routing),
i.e. exactly what the online features counted.  Pure: no Kafka, no Redis.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.state import EntityState, FeatureVector

if TYPE_CHECKING:
    from driftline.schemas.parser import ParsedEvent

__all__ = ["PointInTimeJoin", "point_in_time"]

_time = operator.attrgetter("event_time_ms")
#: Unfolded events an entity may hold before they are folded into its state.
FOLD_EVERY = 256


class PointInTimeJoin:
    """The features of each row, from events fed in event-time order (see the module doc)."""

    def __init__(
        self,
        group: FeatureGroup,
        rows: Sequence[tuple[str, int]],
        fold_every: int = FOLD_EVERY,
        on_row: Callable[[int, FeatureVector], None] | None = None,
    ) -> None:
        """``on_row(i, vector)``, when given, takes each row's features as it is answered
        (in time order) instead of :meth:`finish` returning them all."""
        self.group = group
        self._on_row = on_row
        self.fold_every = fold_every
        #: row indices by (time, index): answered in this order
        self._order = sorted(range(len(rows)), key=lambda i: (rows[i][1], i))
        self._rows = rows
        self._next = 0  # position in _order of the next row to answer
        self._left: dict[str, int] = {}  # rows still to answer, per entity
        for entity, _ in rows:
            self._left[entity] = self._left.get(entity, 0) + 1
        self._states: dict[str, EntityState | None] = {}
        self._pending: dict[str, list[ParsedEvent]] = {}
        self._newest: int | None = None
        self.results: list[FeatureVector | None] = [None] * (0 if on_row else len(rows))

    @property
    def entities(self) -> frozenset[str]:
        """The entities some row still asks about (the only events worth feeding)."""
        return frozenset(self._left)

    def feed(self, events: Iterable[ParsedEvent]) -> None:
        """Events in non-decreasing event time, continuing where the last call ended.

        Among events with the same entity and time, the later one wins ``last``,
        as in the worker.  Events of entities no row (still) asks about are skipped.
        """
        order, rows = self._order, self._rows
        n = len(order)
        left, pending = self._left, self._pending
        for event in events:
            t = event.event_time_ms
            if self._newest is not None and t < self._newest:
                raise ValueError(f"events must come in event-time order: {t} after {self._newest}")
            self._newest = t
            while self._next < n and rows[order[self._next]][1] < t:
                self._answer(order[self._next])
                self._next += 1
            entity = event.entity
            if entity not in left:
                continue
            mine = pending.get(entity)
            if mine is None:
                pending[entity] = [event]
            else:
                mine.append(event)
                if len(mine) >= self.fold_every:
                    self._fold(entity)

    def finish(self) -> list[FeatureVector]:
        """Answer the rows after the last event; the features of every row, in row order
        (none with ``on_row``)."""
        while self._next < len(self._order):
            self._answer(self._order[self._next])
            self._next += 1
        out = [v for v in self.results if v is not None]
        assert len(out) == len(self.results)
        return out

    def _fold(self, entity: str) -> None:
        events = self._pending.pop(entity, None)
        if events:
            delta = build_deltas(self.group, events)[entity]
            self._states[entity] = apply_delta(self.group, self._states.get(entity), delta)

    def _answer(self, i: int) -> None:
        entity, as_of_ms = self._rows[i]
        self._fold(entity)
        vector = read_features(self.group, self._states.get(entity), as_of_ms)
        if self._on_row is None:
            self.results[i] = vector
        else:
            self._on_row(i, vector)
        left = self._left[entity] - 1
        if left:
            self._left[entity] = left
        else:  # no row asks about it any more
            del self._left[entity]
            self._states.pop(entity, None)
            self._pending.pop(entity, None)


def point_in_time(
    group: FeatureGroup, events: Iterable[ParsedEvent], rows: Sequence[tuple[str, int]]
) -> list[FeatureVector]:
    """The features of each ``(entity, as_of_ms)`` row, in row order, from events in any order.

    Events are sorted by event time (stable: among events with the same entity
    and time the later one wins ``last``) and fed to a :class:`PointInTimeJoin`.
    """
    join = PointInTimeJoin(group, rows)
    join.feed(sorted(events, key=_time))
    return join.finish()
