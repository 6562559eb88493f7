"""The window engine's batch form: a whole batch's deltas with numpy, already encoded.

:func:`~driftline.features.engine.build_deltas` is the reference: one Python
pass per event, then per entity Python objects for every bucket
(:class:`~driftline.features.state.BucketStats` of
:class:`~driftline.features.stats.Summary` tuples) that the store then
flattens again into ring blobs (:mod:`driftline.features.codec`).  On the
worker's hot path that was a fifth of its time.  :func:`build_encoded`
computes the same deltas for the whole batch at once and writes their rings
straight in the blob layout, so no per-bucket object is ever made::

    events ──► columns: entity code, event time, one float column and one
               "usable" mask per value field (type checks are C loops)
           ──► rows sorted by (entity, event time)                 np.lexsort
           ──► per resolution r: groups of equal (entity, time // r)
               count, sum, min, max per group                      ufunc.reduceat
               mean = sum / count; m2 = sum of (x - mean)**2       (two passes)
           ──► one float64 array per ring: [id, n, mean, m2, min, max, ...] per
               bucket, in (entity, id) order; each entity's blob is a slice of
               its bytes

Same buckets, same counts, minima, maxima, newest event time, ``last`` values
and skipped counts as :func:`~driftline.features.engine.build_deltas`; means
and m2 agree to float rounding relative to the bucket's magnitude (the
reference sums with ``math.fsum``, this in order, so ``1e100 - 1e100 + 0.01``
cancels differently), which
``tests/unit/features/test_batch.py`` checks with hypothesis against the
reference, and the stored result stays the one the engine's own property tests
describe.

**When it applies.**  A group with value fields and no distinct fields (the
sketches are variable-length per bucket: those groups take the reference
path), and event times that are integers within ±2**53 (always, for events of
the parser).  Otherwise :func:`build_encoded` returns None and the caller uses
:func:`~driftline.features.engine.build_deltas`.  Value columns holding
something else than floats, integers and nulls (booleans, strings, ...) are
judged value by value with the reference's rule.
"""

from __future__ import annotations

import itertools
import operator
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import build_deltas, collect_last
from driftline.features.state import Delta, EncodedDelta
from driftline.features.stats import MAX_ABS_VALUE

if TYPE_CHECKING:
    from driftline.schemas.parser import ParsedEvent

__all__ = ["build_batch", "build_encoded"]

_EXACT = 2**53
_FLOATS = {float}
_NUMBERS = {float, int}
_NONE = type(None)
_F8 = np.dtype("<f8")  # the codec's doubles: little-endian on every machine
_entity = operator.itemgetter(0)
_time = operator.itemgetter(1)
_data = operator.itemgetter(2)

Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


def build_batch(group: FeatureGroup, events: Sequence[ParsedEvent]) -> Mapping[str, Delta]:
    """A batch's deltas: with numpy and already encoded where the group allows it
    (:func:`build_encoded`), else :func:`~driftline.features.engine.build_deltas`."""
    encoded = build_encoded(group, events)
    return encoded if encoded is not None else build_deltas(group, events)


def build_encoded(
    group: FeatureGroup, events: Sequence[ParsedEvent]
) -> dict[str, EncodedDelta] | None:
    """The deltas of ``events`` with their rings already encoded; None: use build_deltas."""
    layout = group.layout
    vfields = layout.value_fields
    if layout.distinct_fields or not vfields:
        return None
    n = len(events)
    if n == 0:
        return {}
    times = list(map(_time, events))
    if not set(map(type, times)) <= {int} or not -_EXACT < min(times) <= max(times) < _EXACT:
        return None
    entities = list(map(_entity, events))
    names = list(dict.fromkeys(entities))  # first appearance, as build_deltas orders them
    index = dict(zip(names, range(len(names)), strict=True))
    codes: Ints = np.fromiter(map(index.__getitem__, entities), np.int64, n)
    t: Ints = np.array(times, dtype=np.int64)
    datas = list(map(_data, events))

    columns: list[tuple[Floats, Mask]] = []
    skipped: dict[str, dict[str, int]] = {}
    for field in vfields:
        x, usable, bad = _column([d.get(field) for d in datas])
        columns.append((x, usable))
        if bad is not None:
            for code, count in zip(*np.unique(codes[bad], return_counts=True), strict=True):
                skipped.setdefault(names[code], {})[field] = int(count)

    order = np.lexsort((t, codes))  # stable: equal (entity, time) keep the batch order
    sorted_codes = codes[order]
    sorted_t = t[order]
    entity_ids = np.arange(len(names))
    ends = np.searchsorted(sorted_codes, entity_ids, side="right")
    newest = sorted_t[ends - 1].tolist()

    any_usable = columns[0][1].copy()
    for _, usable in columns[1:]:
        any_usable |= usable
    rows = order[any_usable[order]]  # the events that fill buckets, in (entity, time) order
    blobs: list[dict[int, bytes]] = [{} for _ in names]
    if len(rows):
        row_codes = codes[rows]
        row_t = t[rows]
        xs = [(x[rows], usable[rows]) for x, usable in columns]
        for r in layout.resolutions:
            _ring(r, row_codes, row_t, xs, entity_ids, blobs)

    lasts: dict[str, dict[str, Any]] = {}
    if layout.last_fields:
        lasts = collect_last(layout.last_fields, events, skipped)
    out: dict[str, EncodedDelta] = {}
    for i, entity in enumerate(names):
        out[entity] = EncodedDelta(
            blobs[i], lasts.get(entity, {}), newest[i], skipped.get(entity, {})
        )
    return out


def _ring(
    r: int,
    codes: Ints,
    t: Ints,
    xs: list[tuple[Floats, Mask]],
    entity_ids: Ints,
    blobs: list[dict[int, bytes]],
) -> None:
    """Every entity's blob of the ring of resolution ``r`` (rows sorted by entity, time)."""
    bids = t // r  # floor division, as the engine's
    m = len(bids)
    new = np.empty(m, dtype=np.bool_)
    new[0] = True
    np.not_equal(codes[1:], codes[:-1], out=new[1:])
    new[1:] |= bids[1:] != bids[:-1]
    starts = np.flatnonzero(new)
    group_of = np.cumsum(new) - 1
    width = 1 + 5 * len(xs)
    out = np.empty((len(starts), width), dtype=_F8)
    out[:, 0] = bids[starts]
    for j, (x, usable) in enumerate(xs):
        count = np.add.reduceat(usable.astype(np.int64), starts)
        total = np.add.reduceat(np.where(usable, x, 0.0), starts)
        mean = np.divide(total, count, out=np.zeros(len(starts)), where=count > 0)
        dev = np.where(usable, x - mean[group_of], 0.0)
        col = 1 + 5 * j
        out[:, col] = count
        out[:, col + 1] = mean
        out[:, col + 2] = np.add.reduceat(dev * dev, starts)
        out[:, col + 3] = np.minimum.reduceat(np.where(usable, x, np.inf), starts)
        out[:, col + 4] = np.maximum.reduceat(np.where(usable, x, -np.inf), starts)
    group_codes = codes[starts]
    row_bytes = 8 * width
    lo = (np.searchsorted(group_codes, entity_ids, side="left") * row_bytes).tolist()
    hi = (np.searchsorted(group_codes, entity_ids, side="right") * row_bytes).tolist()
    data = out.tobytes()
    for i, a, b in zip(itertools.count(), lo, hi, strict=False):
        if b > a:
            blobs[i][r] = data[a:b]


def _column(values: list[Any]) -> tuple[Floats, Mask, Mask | None]:
    """(floats, usable, present-but-unusable or None) of one value field's raw values.

    Usable, as :func:`~driftline.features.engine.build_deltas` has it: a float
    or an int (not a bool) with ``|x| <= MAX_ABS_VALUE``; None is missing, not
    skipped; anything else is skipped.
    """
    kinds = set(map(type, values))
    present: Mask | None = None
    if _NONE in kinds:
        kinds.discard(_NONE)
        present = np.fromiter(map(operator.is_not, values, itertools.repeat(None)), np.bool_)
        values = [0.0 if v is None else v for v in values]
    if kinds <= _NUMBERS:
        try:
            x = np.array(values if kinds <= _FLOATS else list(map(float, values)), dtype=np.float64)
        except OverflowError:  # an int beyond a double: judged one by one
            return _judged(values, present)
        with np.errstate(invalid="ignore"):
            size = np.abs(x)
        if not kinds <= _FLOATS and (size == MAX_ABS_VALUE).any():
            return _judged(values, present)  # an int may round onto the bound: compare exactly
        usable = size <= MAX_ABS_VALUE  # NaN compares False
        if present is not None:
            usable &= present
            bad = present & ~usable
        else:
            bad = ~usable
        return x, usable, bad if bad.any() else None
    return _judged(values, present)


def _judged(values: list[Any], present: Mask | None) -> tuple[Floats, Mask, Mask | None]:
    """:func:`_column` value by value (columns with booleans, strings, huge ints ...)."""
    lim = MAX_ABS_VALUE
    n = len(values)
    x = np.zeros(n, dtype=np.float64)
    usable = np.zeros(n, dtype=np.bool_)
    bad = np.zeros(n, dtype=np.bool_)
    for i, v in enumerate(values):
        if present is not None and not present[i]:
            continue
        kind = type(v)
        if (kind is float or kind is int) and -lim <= v <= lim:
            x[i] = float(v)
            usable[i] = True
        else:
            bad[i] = True
    return x, usable, bad if bad.any() else None


assert sys.float_info.mant_dig == 53  # the blob layout's doubles
