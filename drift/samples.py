"""The monitor-values samples: what the source side sends a drift monitor, and its wire form.

Detection needs a monitor's whole stream, so the worker that reads a source
partition sends its monitored values over the values topic to the one worker
that owns the monitor (:mod:`driftline.streams.worker.monitors`).  A sample is
``(source offset, event time ms, value, segment)``; a values-topic record is
one JSON document per monitor and partition batch, by columns (a list per
part of the samples, so encoding and checking them are a few C loops, not
Python code per value; ``g`` is left out when no sample has a segment)::

    {"m": monitor name, "s": source, "p": partition,
     "o": [offset, ...], "t": [time, ...], "x": [value, ...], "g": [segment, ...]}

Offsets ascend strictly within a record.  A value that is NaN or infinite
(possible in Avro) is written as ``null`` and read back as NaN, which the
monitor counts as skipped.  The row form of earlier versions,
``"v": [[offset, time, value, segment], ...]``, is still read (records of a
worker not yet upgraded).

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

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from driftline.drift.config import MonitorConfig
from driftline.features.codec import decode_delta
from driftline.features.definitions import FeatureGroup
from driftline.features.engine import apply_delta, read_features
from driftline.features.state import Delta, EntityState
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
        offsets: list[int] = []
        times: list[int] = []
        values: list[float] = []
        segments: list[Any] = []
        for event, record in zip(events, records, strict=True):
            raw: Any = event.data.get(field)
            kind = type(raw)
            if kind is float:
                values.append(raw)
            elif kind is int or (kind is not bool and isinstance(raw, int | float)):
                values.append(float(raw))
            else:
                continue
            offsets.append(record.offset)
            times.append(event.event_time_ms)
            if segment_by:
                segments.append(segment_of(event, segment_by))
        columns = _Columns(offsets, times, values, segments if _any_segment(segments) else None)
        out += _docs(monitor.name, source, partition, columns)
    return out


def _any_segment(segments: Sequence[Any]) -> bool:
    """Does any sample have a segment (not None)?"""
    return segments.count(None) != len(segments)


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


class _Columns(NamedTuple):
    offsets: list[int]
    times: list[int]
    values: list[float]
    segments: list[Any] | None  # None: no sample has one

    def cut(self, lo: int, hi: int) -> _Columns:
        seg = self.segments
        return _Columns(
            self.offsets[lo:hi],
            self.times[lo:hi],
            self.values[lo:hi],
            seg[lo:hi] if seg is not None else None,
        )


def sample_docs(
    monitor: str, source: str, partition: int, samples: list[tuple[int, int, float, Any]]
) -> list[tuple[bytes, bytes]]:
    """Values-topic records for ``samples``, split so none exceeds MAX_SAMPLE_RECORD_BYTES."""
    if not samples:
        return []
    offsets, times, values, segments = (list(c) for c in zip(*samples, strict=True))
    columns = _Columns(offsets, times, values, segments if _any_segment(segments) else None)
    return _docs(monitor, source, partition, columns)


def _docs(
    monitor: str, source: str, partition: int, columns: _Columns
) -> list[tuple[bytes, bytes]]:
    n = len(columns.offsets)
    if not n:
        return []
    doc: dict[str, Any] = {
        "m": monitor,
        "s": source,
        "p": partition,
        "o": columns.offsets,
        "t": columns.times,
        "x": columns.values,
    }
    if columns.segments is not None:
        doc["g"] = columns.segments
    value = orjson.dumps(doc)
    if len(value) <= MAX_SAMPLE_RECORD_BYTES or n == 1:
        return [(monitor.encode(), value)]
    # pieces of about 3/4 of the limit each (a piece still too large is cut again)
    pieces = min(n, -(-4 * len(value) // (3 * MAX_SAMPLE_RECORD_BYTES)))
    step = -(-n // pieces)
    out: list[tuple[bytes, bytes]] = []
    for lo in range(0, n, step):
        out += _docs(monitor, source, partition, columns.cut(lo, lo + step))
    return out


_INT = {int}
_NUMBER = {int, float, type(None)}
_SEGMENT = {type(None), str, int, float, bool}


def decode_samples(value: bytes | None) -> tuple[str, str, int, list[Sample]] | None:
    """A values-topic record as (monitor, source, partition, samples); None if it is not one.

    The topic is driftline's own, but anyone with write access can put a
    record there: a foreign one is skipped (logged), never a crash.
    """
    try:
        doc = orjson.loads(value or b"")
        name, source, partition = doc["m"], doc["s"], doc["p"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not (isinstance(name, str) and isinstance(source, str) and type(partition) is int):
        return None
    if "v" in doc:
        samples = _rows(doc["v"])
    else:
        samples = _columns(doc.get("o"), doc.get("t"), doc.get("x"), doc.get("g", _NO_SEGMENTS))
    if samples is None:
        return None
    return name, source, partition, samples


_NO_SEGMENTS: Any = object()


def _columns(offsets: Any, times: Any, values: Any, segments: Any) -> list[Sample] | None:
    """The samples of the column form, or None if it is not one (type checks are C loops)."""
    if not (type(offsets) is list and type(times) is list and type(values) is list):
        return None
    n = len(offsets)
    if len(times) != n or len(values) != n:
        return None
    if not set(map(type, offsets)) <= _INT or not set(map(type, times)) <= _INT:
        return None
    if not _ascending(offsets):
        return None
    kinds = set(map(type, values))
    if not kinds <= _NUMBER:
        return None
    if type(None) in kinds:  # NaN or an infinity (from Avro), which JSON writes as null
        values = [math.nan if v is None else float(v) for v in values]
    elif int in kinds:
        values = list(map(float, values))
    if segments is _NO_SEGMENTS:
        return list(zip(offsets, times, values, itertools.repeat(None, n), strict=False))
    if type(segments) is not list or len(segments) != n:
        return None
    if not set(map(type, segments)) <= _SEGMENT:
        return None
    return list(zip(offsets, times, values, segments, strict=True))


def _rows(raw: Any) -> list[Sample] | None:
    """The samples of the row form of earlier versions, or None if it is not one."""
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
    return samples if _ascending([s[0] for s in samples]) else None


def _ascending(offsets: list[int]) -> bool:
    """Strictly ascending: a record of driftline's always is (so a lane stays in order)."""
    return all(map(operator.lt, offsets, offsets[1:]))


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
    deltas: Mapping[str, Delta],
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
        merged = (
            apply_delta(group, state, decode_delta(group, delta)) if delta is not None else state
        )
        if merged is None or merged.newest_event_ms is None:
            continue
        value = read_features(group, merged, merged.newest_event_ms).values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        segment = segment_of(event, segment_by)
        out.append((offset, merged.newest_event_ms, float(value), segment))
    return out
