"""Point-in-time features for training rows, from the same window engine the worker runs.

A training row is ``(entity, as_of_ms)``: the moment a label was observed.
Its features must be what serving could have read then: only events with an
event time at or before ``as_of_ms`` count, none after (no leakage).
:func:`point_in_time` answers every row from one pass over each entity's
events in event-time order::

    events of one entity, by event time     e1  e2  e3      e4  e5
    its rows, by time                                 t1          t2
    state: fold of build_deltas/apply_delta  [e1..e3] read at t1, + [e4, e5] read at t2

Each read is at or after the newest event folded, where the engine's reads
are exact (:mod:`driftline.features.engine`: pruning never changes such a
read), so a row gets exactly the value the online store holds for those
events, to float rounding (the worker merges the same events in other
batches).  Events at the same time as a row count for it.  An entity without
events before a row gets the values of a missing entity: counts 0, sums 0.0,
the rest ``None``.

Which events count is the caller's business: the offline event log holds the
accepted ones (after the contract, the time verdicts and the quality routing),
i.e. exactly what the online features counted.  Pure: no Kafka, no Redis.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.state import EntityState, FeatureVector

if TYPE_CHECKING:
    from driftline.schemas.parser import ParsedEvent

__all__ = ["point_in_time"]

_time = operator.attrgetter("event_time_ms")


def point_in_time(
    group: FeatureGroup, events: Iterable[ParsedEvent], rows: Sequence[tuple[str, int]]
) -> list[FeatureVector]:
    """The features of each ``(entity, as_of_ms)`` row, in row order (see the module doc).

    ``events`` may come in any order; among events with the same entity and
    event time, the later one wins ``last``, as in the worker.
    """
    by_entity: dict[str, list[ParsedEvent]] = {}
    for event in events:
        by_entity.setdefault(event.entity, []).append(event)
    wanted: dict[str, list[tuple[int, int]]] = {}
    for i, (entity, as_of_ms) in enumerate(rows):
        wanted.setdefault(entity, []).append((as_of_ms, i))
    out: dict[int, FeatureVector] = {}
    for entity, asks in wanted.items():
        mine = sorted(by_entity.get(entity, ()), key=_time)  # stable: ties keep their order
        times = [e.event_time_ms for e in mine]
        state: EntityState | None = None
        folded = 0
        for as_of_ms, i in sorted(asks):
            upto = bisect.bisect_right(times, as_of_ms)
            if upto > folded:
                delta = build_deltas(group, mine[folded:upto])[entity]
                state = apply_delta(group, state, delta)
                folded = upto
            out[i] = read_features(group, state, as_of_ms)
    return [out[i] for i in range(len(rows))]
