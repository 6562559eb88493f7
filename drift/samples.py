"""The monitor-values samples: what the source side sends a drift monitor, and its wire form.

Detection needs a monitor's whole stream, so the worker that reads a source
partition sends its monitored values over the values topic to the one worker
that owns the monitor (:mod:`driftline.streams.worker.monitors`).  A sample is
``(source offset, event time ms, value, segment)``; a values-topic record is
one JSON document per monitor and partition batch::

    {"m": monitor name, "s": source, "p": partition, "v": [[offset, time, value, segment], ...]}

An operator's acceptance of an incident travels the same topic, keyed by the
monitor too, so it reaches the monitor's owner in order with its values
(:func:`accept_doc`, :func:`decode_accept`)::

    {"m": monitor name, "accept": {"segment": name or null, "at_ms": wall time, "by": who}}

:func:`sample_docs` encodes (split so no record nears the broker's size limit),
:func:`decode_samples` decodes and refuses anything else.  Field monitors sample
the events (:func:`sample_records`); feature monitors sample a few entities per
batch (:func:`sampled_entities`) and read their feature value once the batch is
applied (:func:`feature_samples`).  Pure: no Kafka, no Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from driftline.drift.config import MonitorConfig
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, read_features
from driftline.features.state import EntityState
from driftline.schemas import ParsedEvent

#: ``(source offset, event time ms, value, segment)``
Sample = tuple[int, int, float, Any]

#: A values-topic record carries at most this many bytes of samples; a batch
#: with more (long segment names) is split, so no record nears the broker's limit.
MAX_SAMPLE_RECORD_BYTES = 256 * 1024


#: A segment value is a label, not data: longer strings are cut (a 1 MB string
#: in a segment field must not make a values record the broker refuses).
MAX_SEGMENT_CHARS = 200


class _Positioned(Protocol):
    """A source record as far as sampling cares: its offset in the partition."""

    @property
    def offset(self) -> int: ...


def sample_records(
    monitors: Sequence[MonitorConfig],
    source: str,
    partition: int,
    events: Sequence[ParsedEvent],
    records: Sequence[_Positioned],
) -> list[tuple[bytes, bytes]]:
    """The values-topic records (key, value) for one partition batch of accepted events."""
    out: list[tuple[bytes, bytes]] = []
    for monitor in monitors:
        field = monitor.field
        if field is None:
            continue  # a feature monitor: see feature_samples
        segment_by = monitor.segment_by
        samples: list[tuple[int, int, float, Any]] = []
        for event, record in zip(events, records, strict=True):
            raw = event.data.get(field)
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                continue
            segment = segment_of(event, segment_by)
            samples.append((record.offset, event.event_time_ms, float(raw), segment))
        out += sample_docs(monitor.name, source, partition, samples)
    return out


def segment_of(event: ParsedEvent, segment_by: str | None) -> Any:
    """The event's segment for a monitor: a scalar, strings cut to MAX_SEGMENT_CHARS."""
    if not segment_by:
        return None
    segment = event.data.get(segment_by)
    if isinstance(segment, str):
        return segment[:MAX_SEGMENT_CHARS]
    if segment is not None and not isinstance(segment, int | float | bool):
        return None
    return segment


def sample_docs(
    monitor: str, source: str, partition: int, samples: list[tuple[int, int, float, Any]]
) -> list[tuple[bytes, bytes]]:
    """Values-topic records for ``samples``, split so none exceeds MAX_SAMPLE_RECORD_BYTES."""
    if not samples:
        return []
    value = orjson.dumps({"m": monitor, "s": source, "p": partition, "v": samples})
    if len(value) <= MAX_SAMPLE_RECORD_BYTES or len(samples) == 1:
        return [(monitor.encode(), value)]
    half = len(samples) // 2
    return sample_docs(monitor, source, partition, samples[:half]) + sample_docs(
        monitor, source, partition, samples[half:]
    )


def decode_samples(value: bytes | None) -> tuple[str, str, int, list[Sample]] | None:
    """A values-topic record as (monitor, source, partition, samples); None if it is not one.

    The topic is driftline's own, but anyone with write access can put a
    record there: a foreign one is skipped (logged), never a crash.
    """
    try:
        doc = orjson.loads(value or b"")
        name, source, partition, raw = doc["m"], doc["s"], doc["p"], doc["v"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not (isinstance(name, str) and isinstance(source, str) and isinstance(partition, int)):
        return None
    if not isinstance(raw, list):
        return None
    samples: list[Sample] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 4:
            return None
        offset, event_time_ms, number, segment = item
        if not (
            isinstance(offset, int)
            and isinstance(event_time_ms, int)
            and isinstance(number, int | float)
            and not isinstance(number, bool)
            and (segment is None or isinstance(segment, str | int | float | bool))
        ):
            return None
        samples.append((offset, event_time_ms, float(number), segment))
    return name, source, partition, samples


class AcceptRequest(NamedTuple):
    """An operator's acceptance of a monitor's open incident(s) as the new normal."""

    monitor: str
    #: a segment name, or None: every segment with an open incident
    segment: str | None
    at_ms: int
    by: str


#: ``by`` is a label for the log and the alert trail, not an identity: cut like segments
MAX_BY_CHARS = 200


def accept_doc(request: AcceptRequest) -> tuple[bytes, bytes]:
    """The values-topic record (key, value) of an acceptance."""
    body = {"segment": request.segment, "at_ms": request.at_ms, "by": request.by[:MAX_BY_CHARS]}
    return request.monitor.encode(), orjson.dumps({"m": request.monitor, "accept": body})


def decode_accept(value: bytes | None) -> AcceptRequest | None:
    """An acceptance record, or None if the record is not one."""
    try:
        doc = orjson.loads(value or b"")
        name, body = doc["m"], doc["accept"]
        segment, at_ms, by = body["segment"], body["at_ms"], body["by"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not (
        isinstance(name, str)
        and (segment is None or isinstance(segment, str))
        and isinstance(at_ms, int)
        and not isinstance(at_ms, bool)
        and isinstance(by, str)
    ):
        return None
    return AcceptRequest(name, segment, at_ms, by[:MAX_BY_CHARS])


def sampled_entities(
    events: Sequence[ParsedEvent], records: Sequence[_Positioned], limit: int
) -> list[tuple[str, int, ParsedEvent]]:
    """Entities of a batch as (entity, offset of its last event, that event), by offset.

    At most ``limit``, spread evenly over the batch when there are more: the
    choice depends only on the batch, so a replay samples the same entities.
    """
    last: dict[str, tuple[int, ParsedEvent]] = {}
    for event, record in zip(events, records, strict=True):
        last[event.entity] = (record.offset, event)
    ordered = sorted(((o, e, ev) for e, (o, ev) in last.items()), key=lambda t: t[0])
    if len(ordered) > limit:
        step = len(ordered) / limit
        ordered = [ordered[int(i * step)] for i in range(limit)]
    return [(entity, offset, event) for offset, entity, event in ordered]


def feature_samples(
    monitor: MonitorConfig,
    group: FeatureGroup,
    chosen: Sequence[tuple[str, int, ParsedEvent]],
    stored: Sequence[EntityState | None],
    deltas: Mapping[str, EntityState],
) -> list[tuple[int, int, float, Any]]:
    """One sample per chosen entity: its feature value once this batch is applied.

    The value is read as of the entity's newest event time, from the stored
    state merged with the batch's delta exactly as the store will merge it,
    so it is known before the write and rides in the same flush as the
    dead letters.  Entities whose feature has no value (a mean over an empty
    window) give no sample.
    """
    name = str(monitor.feature_name)
    segment_by = monitor.segment_by
    out: list[tuple[int, int, float, Any]] = []
    for (entity, offset, event), state in zip(chosen, stored, strict=True):
        delta = deltas.get(entity)
        merged = apply_delta(group, state, delta) if delta is not None else state
        if merged is None or merged.newest_event_ms is None:
            continue
        value = read_features(group, merged, merged.newest_event_ms).values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        segment = segment_of(event, segment_by)
        out.append((offset, merged.newest_event_ms, float(value), segment))
    return out
