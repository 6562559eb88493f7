"""Reads in the past that the online store cannot answer exactly, answered from the offline log.

The online store keeps, per entity, what reads *at or after its newest event*
need: buckets older than the newest event minus the longest window are
pruned, ``last`` is the newest value, and a key expires a TTL after its last
write.  So a read as of ``t`` is exact online when ``t`` is not in the past
or when the entity's newest stored event is at or before ``t``
(:func:`driftline.features.serving.exact_online`).  Any other read in the
past (``t`` before the entity's newest event, or an entity without a key,
whose events may have expired) is answered here: the entity's accepted events
with an event time at or before ``t``, read from the offline log and folded by
the window engine, exactly as ``driftline training-set`` does for a row
``(entity, t)``; ``last`` is the value of the newest event at or before ``t``.

The answer is refused (:class:`PastReadRefused`, a 409) when there is no log,
or when the log has not yet caught up with the events the worker applied
(the archiver commits every few seconds; serve waits up to
:data:`CATCH_UP_S` for it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import polars as pl

from driftline.features.codec import encode_ring
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, build_deltas, rekey
from driftline.features.reader import Reading, read_rings
from driftline.features.state import EntityState
from driftline.sinks.offline_log import LogLayout, OfflineLog, columns_for
from driftline.streams.errors import DriftlineError
from driftline.streams.settings import Settings
from driftline.streams.sources import build_parsers, declared_types

__all__ = ["CATCH_UP_S", "PastReadRefused", "PastReader", "past_reader"]

#: How long a read waits for the log to catch up with the worker before it is refused.
CATCH_UP_S = 3.0


class PastReadRefused(DriftlineError):
    """A read in the past that cannot be answered exactly now (answered 409)."""


class Offsets(Protocol):
    """What the past reader needs of the online store: the worker's applied offsets."""

    async def stored_offsets(self, source: str) -> dict[int, int]: ...


class PastReader:
    """Features as of a past time from the offline log (see the module docstring)."""

    def __init__(
        self,
        log: OfflineLog,
        *,
        topics: Mapping[str, str],
        layouts: Mapping[str, LogLayout],
        entity_keys: Mapping[str, str],
        offsets: Offsets,
    ) -> None:
        self.log = log
        self.topics = dict(topics)
        self.layouts = dict(layouts)
        self.entity_keys = dict(entity_keys)
        self.offsets = offsets

    async def read(
        self, group: FeatureGroup, entities: Sequence[str], as_of_ms: int
    ) -> list[Reading]:
        """Each entity's features as of ``as_of_ms`` from every event at or before it."""
        source = group.source
        if not await asyncio.to_thread(self.log.exists, source):
            raise PastReadRefused(
                f"no offline log of source {source} at {self.log.table_uri(source)}: run "
                "`driftline archive` (serve reads offline.path) to answer such reads"
            )
        await self._caught_up(source)
        states = await asyncio.to_thread(self._states, group, list(entities), as_of_ms)
        out = []
        for entity in entities:
            state = states.get(entity)
            if state is None:
                out.append(read_rings(group, {}, {}, None, as_of_ms))
                continue
            blobs = {r: encode_ring(group, ring) for r, ring in state.rings.items() if ring}
            out.append(read_rings(group, blobs, state.last, state.newest_event_ms, as_of_ms))
        return out

    async def _caught_up(self, source: str) -> None:
        """Wait (a little) until the log holds every record the worker has applied."""
        topic = self.topics[source]
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            applied = await self.offsets.stored_offsets(source)
            held = await asyncio.to_thread(self.log.positions, source, topic, sorted(applied))
            behind = {p: o - held.get(p, -1) for p, o in applied.items() if held.get(p, -1) < o}
            if not behind:
                return
            if time.monotonic() >= deadline:
                lag = sum(behind.values())
                raise PastReadRefused(
                    f"the offline log of source {source} is {lag} record(s) behind the worker "
                    f"(partitions {', '.join(str(p) for p in sorted(behind))}): is `driftline "
                    "archive` running? Retry shortly"
                )
            await asyncio.sleep(0.2)

    def _states(
        self, group: FeatureGroup, entities: list[str], as_of_ms: int
    ) -> dict[str, EntityState]:
        """Each entity's state from its events at or before ``as_of_ms`` (in a thread)."""
        source = group.source
        layout = self.layouts[source]
        keyed_by = group.entity_key
        rekeyed = keyed_by != self.entity_keys[source]
        lf = self.log.scan(source)
        have = set(lf.collect_schema().names())
        if rekeyed:
            if keyed_by not in have:  # no event ever had the field
                return {}
            who = pl.col(keyed_by).cast(pl.String).is_in(entities)
        else:
            who = pl.col("_entity").is_in(entities)
        until = pl.lit(as_of_ms).cast(pl.Datetime("ms", "UTC"))
        columns = columns_for([group], self.entity_keys[source], have)
        frame = (
            lf.filter(pl.col("_topic") == self.topics[source])
            .filter(pl.col("_event_time") <= until)
            .filter(who)
            .select(columns)
            .sort(["_event_time", "_partition", "_offset"])  # a tie: the later record wins
            .collect()
        )
        events = list(layout.events(frame.to_arrow()))
        if rekeyed:
            events, _ = rekey(events, keyed_by)
        states: dict[str, EntityState] = {}
        for entity, delta in build_deltas(group, events).items():
            states[entity] = apply_delta(group, None, delta)
        return states


def past_reader(settings: Settings, offsets: Offsets) -> PastReader:
    """The past reader of ``settings``: its offline log and each source's log layout."""
    parsers = build_parsers(settings)
    return PastReader(
        OfflineLog(settings.offline.path),
        topics={s.name: s.topic for s in settings.sources},
        layouts={n: LogLayout.from_declared(declared_types(p)) for n, p in parsers.items()},
        entity_keys={n: p.entity_key for n, p in parsers.items()},
        offsets=offsets,
    )
