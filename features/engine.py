"""The window engine: per-entity, event-time sliding windows over buckets.

Three pure functions, called by the worker once per batch and by readers::

    events ──► build_deltas ──► {entity: delta} ──► apply_delta(state, delta) ──► state
                                                        (in Redis: the Lua script)
    state ──► read_features(as_of) ──► FeatureVector

**Buckets.**  A window of length ``W`` is kept at resolution ``r`` (``W / 60``
by default) as buckets ``bucket(x) = x // r`` of event time ``x`` (epoch ms,
floor division).  A read *as of* ``t`` covers the ``n = W // r`` buckets
``(bucket(t) - n, bucket(t)]``::

                    t - W                                    t
                      ┆                                      ┆
      ─┬──────┬──────┬┆─────┬──────┬──────┬──────┬──────┬───┆──┬──────┬─
       │ b-7  │ b-6  │┆b-5  │ b-4  │ b-3  │ b-2  │ b-1  │  b┆  │ b+1  │
      ─┴──────┴──────┴┆─────┴──────┴──────┴──────┴──────┴───┆──┴──────┴─
         pruned        └ not read ┘◄──── read: n = 5 buckets ────►
                                          (n = W // r = 5 here)

That is "(t - W, t] exact at resolution r": the window covers event times in
``[(bucket(t) - n + 1) * r, (bucket(t) + 1) * r)``, so it starts up to ``r`` ms
after ``t - W`` and, when reading as of a time *before* the newest event,
includes later events of ``t``'s own bucket.  Reads are exact at
``t >= newest_event_ms``, the case that matters: serving reads "now".  An
entity without events decays: a 5m count read 6 minutes after its last event
covers only empty buckets, so it is 0, never a stale value.

Windows with the same ``r`` share one *ring* of buckets; the ring keeps the
``n`` of its longest window (``group.layout.ring_buckets[r]``).

**Intermediates.**  Per bucket and value field a mergeable
:class:`~driftline.features.stats.Summary` (count, mean, m2, min, max: every value
aggregation derives from it); per distinct field a KMV sketch
(:mod:`driftline.features.sketch`).  A window's value is the merge of its buckets.

**Pruning.**  After a merge, a ring of resolution ``r`` keeping ``n`` buckets
drops every bucket with ``id <= newest_event_ms // r - n``: no read at
``t >= newest_event_ms`` can cover it.  Delta buckets already that old are
dropped on arrival.  So a ring never holds more than ``n`` buckets, and
because the cut-off only moves forward, merging batch by batch gives the same
state as merging everything at once (up to float rounding in the merge).

**Values the engine skips.**  A missing field (absent or ``null``) is simply
not there.  A present but unusable value is skipped for that field and
counted in ``delta.skipped[field]`` so the worker can report it: for value
fields anything but a finite int/float with ``|x| <= 1e100`` (booleans and
numeric strings included); for distinct fields anything but a string, number
or boolean; for last fields lists, objects and non-finite floats.  ``count``
is the number of *usable values of the field*, not of events.

**last.**  Per field, ``(event_time_ms, value)`` of the newest event by event
time; on a tie the later one in the batch (and in a later batch) wins.  It is
not windowed and does not decay: the store's TTL expires it.

**One module, on purpose** (about 470 lines): the window engine is one thing,
the bucket arithmetic above shared by the three functions and by the plan each
group's layout compiles to (``_plan``); the mergeable pieces it builds on live
beside it (:mod:`driftline.features.stats`, :mod:`driftline.features.sketch`,
:mod:`driftline.features.state`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from driftline.features import stats
from driftline.features.definitions import FeatureGroup
from driftline.features.sketch import (
    CAPACITY,
    EMPTY_KMV,
    Kmv,
    canonical_text,
    hash_text,
    kmv_estimate,
    kmv_merge,
)
from driftline.features.state import (
    BucketStats,
    EntityState,
    FeatureValue,
    FeatureVector,
    LastValue,
    Ring,
    merge_buckets,
)
from driftline.features.stats import EMPTY, MAX_ABS_VALUE, Summary, merge, summary_of_values

if TYPE_CHECKING:  # typing only: importing schemas pulls in the contract libraries
    from driftline.schemas.parser import ParsedEvent

__all__ = [
    "BucketStats",
    "EntityState",
    "FeatureVector",
    "apply_delta",
    "build_deltas",
    "collect_last",
    "read_features",
    "rekey",
]

_UNSET: Any = object()
#: ``tuple.__new__(Summary, (...))`` builds a NamedTuple without its Python-level
#: ``__new__``: about 3x cheaper, and this runs per bucket of every batch.
_new = tuple.__new__
_FLOAT_MAX = sys.float_info.max
_INT64 = 2**63  # ints a JSON encoder (orjson) can write
_AGGREGATE: dict[str, Callable[[Summary], float | int | None]] = {
    "count": stats.count,
    "sum": stats.sum,
    "mean": stats.mean,
    "min": stats.minimum,
    "max": stats.maximum,
    "var": stats.var,
    "std": stats.std,
}


def build_deltas(group: FeatureGroup, events: Sequence[ParsedEvent]) -> dict[str, EntityState]:
    """One pass over a batch of :class:`~driftline.schemas.parser.ParsedEvent`: a delta per entity.

    Every delta has a ring for every resolution of the group (possibly
    empty), its ``last`` values, its newest event time and its skipped
    counts.  Deltas are not pruned: :func:`apply_delta` does that against the
    entity's newest event time.

    The worker uses it for groups with distinct fields; for the others it
    uses the batch form, :func:`driftline.features.batch.build_encoded`, whose
    reference this is.  Per event it only appends to
    one flat list per entity: ``[t, x_1 .. x_V, h_1 .. h_D, t, …]`` (the
    usable float of each value field or ``None``, the hash of each distinct
    field or ``None``).  Bucketing happens once per entity at the end, where
    the usual case (one event, or all events in one bucket) costs the same
    for every ring.  Few objects per entity also means few garbage-collector
    passes, which otherwise cost as much as the work itself.
    """
    layout = group.layout
    vfields = layout.value_fields
    dfields = layout.distinct_fields
    lfields = layout.last_fields
    nv = len(vfields)
    stride = 1 + nv + len(dfields)
    lim = MAX_ABS_VALUE
    rows: dict[str, list[Any]] = {}
    lasts: dict[str, dict[str, tuple[int, LastValue]]] = {}
    skipped: dict[str, dict[str, int]] = {}
    text_hashes: dict[str, int] = {}
    for entity, t, data in events:
        row = rows.get(entity)
        if row is None:
            row = rows[entity] = []
        row.append(t)
        for f in vfields:
            x = data.get(f)
            if x is not None:
                tx = type(x)
                if tx is float:
                    if not -lim <= x <= lim:  # also false for NaN
                        _skip(skipped, entity, f)
                        x = None
                elif tx is int and -lim <= x <= lim:
                    x = float(x)
                else:
                    _skip(skipped, entity, f)
                    x = None
            row.append(x)
        for f in dfields:
            v = data.get(f)
            if v is not None:
                if type(v) is str:
                    h = text_hashes.get(v)
                    if h is None:
                        h = text_hashes[v] = hash_text(v)
                    v = h
                else:
                    text = canonical_text(v)
                    if text is None:
                        _skip(skipped, entity, f)
                        v = None
                    else:
                        v = hash_text(text)
            row.append(v)
    if lfields:
        lasts = collect_last(lfields, events, skipped)

    resolutions = layout.resolutions
    out: dict[str, EntityState] = {}
    for entity, row in rows.items():
        state = _finish(row, stride, nv, resolutions)
        last = lasts.get(entity)
        if last:
            state.last = last
        counts = skipped.get(entity)
        if counts:
            state.skipped = counts
        out[entity] = state
    return out


def collect_last(
    fields: Sequence[str],
    events: Sequence[ParsedEvent],
    skipped: dict[str, dict[str, int]],
) -> dict[str, dict[str, tuple[int, LastValue]]]:
    """Per entity, the ``last`` values of a batch; unusable values counted in ``skipped``.

    Per field the newest event by event time wins, on a tie the later one in
    the batch.  Usable: a string, a boolean, an int64 or a finite float.
    """
    lasts: dict[str, dict[str, tuple[int, LastValue]]] = {}
    for entity, t, data in events:
        last = lasts.get(entity)
        if last is None:
            last = lasts[entity] = {}
        for f in fields:
            v = data.get(f)
            if v is None:
                continue
            tv = type(v)
            if tv is float:
                ok = -_FLOAT_MAX <= v <= _FLOAT_MAX  # NaN and inf are not JSON
            else:
                ok = tv is str or tv is bool or _is_last_value(v)
            if not ok:
                _skip(skipped, entity, f)
                continue
            cur = last.get(f)
            if cur is None or t >= cur[0]:
                last[f] = (t, v)
    return lasts


def rekey(events: Sequence[ParsedEvent], field: str) -> tuple[list[ParsedEvent], list[int]]:
    """The events keyed by ``field`` instead of the source's entity key, and their positions.

    For a group whose ``entity_key`` is another field of the source (say,
    ``merchant_id`` of transactions keyed by user).  The key follows the
    source's rules: a non-empty string or an integer, as a string.  Events
    without one are left out (the caller counts them).
    """
    out: list[ParsedEvent] = []
    kept: list[int] = []
    for i, event in enumerate(events):
        key = event.data.get(field)
        if key is None or key == "" or isinstance(key, bool) or not isinstance(key, str | int):
            continue
        out.append(event._replace(entity=str(key)))
        kept.append(i)
    return out, kept


def _skip(skipped: dict[str, dict[str, int]], entity: str, field: str) -> None:
    counts = skipped.get(entity)
    if counts is None:
        counts = skipped[entity] = {}
    counts[field] = counts.get(field, 0) + 1


def _is_last_value(v: object) -> bool:
    """A scalar that JSON (orjson) carries exactly: str, bool, int64, finite float."""
    if isinstance(v, str | bool):
        return True
    if isinstance(v, int):
        return -_INT64 <= v < _INT64
    if isinstance(v, float):
        return -_FLOAT_MAX <= v <= _FLOAT_MAX
    return False


def _finish(row: list[Any], stride: int, nv: int, resolutions: tuple[int, ...]) -> EntityState:
    """The delta of one entity from its flat row (see :func:`build_deltas`)."""
    rings: dict[int, Ring] = {}
    if len(row) == stride:  # the common case: one event of this entity in the batch
        t = row[0]
        one = _stats_one(row[1:], nv)
        for r in resolutions:
            rings[r] = {t // r: one} if one is not None else {}
        return EntityState(rings, {}, t)
    times: list[int] = row[0::stride]
    cols = [row[i::stride] for i in range(1, stride)]
    tmin = min(times)
    tmax = max(times)
    whole: BucketStats | None = _UNSET
    singles: dict[int, BucketStats | None] = {}
    finer_r = 0
    finer: Ring = {}
    for r in resolutions:  # ascending
        b = tmin // r
        if b == tmax // r:  # all events in one bucket: the same stats for every such ring
            if whole is _UNSET:
                whole = _stats(cols, nv, None)
            rings[r] = {b: whole} if whole is not None else {}
            continue
        ring: Ring = {}
        if finer_r and r % finer_r == 0:
            # each bucket of r is a union of buckets of the finer ring: merge them
            k = r // finer_r
            for fb, fstats in finer.items():
                bid = fb // k
                cur = ring.get(bid)
                ring[bid] = fstats if cur is None else merge_buckets(cur, fstats)
        else:
            groups: dict[int, list[int]] = {}
            for pos, t in enumerate(times):
                bid = t // r
                g = groups.get(bid)
                if g is None:
                    groups[bid] = [pos]
                else:
                    g.append(pos)
            for bid, positions in groups.items():
                if len(positions) == 1:
                    p = positions[0]
                    st = singles.get(p, _UNSET)
                    if st is _UNSET:
                        st = singles[p] = _stats_one([col[p] for col in cols], nv)
                else:
                    st = _stats(cols, nv, positions)
                if st is not None:
                    ring[bid] = st
        rings[r] = ring
        finer_r = r
        finer = ring
    return EntityState(rings, {}, tmax)


def _stats_one(values: list[Any], nv: int) -> BucketStats | None:
    """The bucket of a single event (its column values); ``None`` if it is empty."""
    empty = True
    summaries: list[Summary] = []
    sketches: list[Kmv] = []
    for i, v in enumerate(values):
        if i < nv:
            if v is None:
                summaries.append(EMPTY)
            else:
                empty = False
                summaries.append(_new(Summary, (1, v, 0.0, v, v)))
        elif v is None:
            sketches.append(EMPTY_KMV)
        else:
            empty = False
            sketches.append((v,))
    if empty:
        return None
    return _new(BucketStats, (tuple(summaries), tuple(sketches)))


def _stats(cols: list[list[Any]], nv: int, positions: list[int] | None) -> BucketStats | None:
    """The bucket of the events at ``positions`` (all if ``None``); ``None`` if it is empty."""
    empty = True
    summaries: list[Summary] = []
    for col in cols[:nv]:
        xs = col if positions is None else [col[p] for p in positions]
        if None in xs:
            xs = [x for x in xs if x is not None]
        if xs:
            empty = False
            summaries.append(summary_of_values(xs))
        else:
            summaries.append(EMPTY)
    sketches: list[Kmv] = []
    for col in cols[nv:]:
        hs = set(col) if positions is None else {col[p] for p in positions}
        hs.discard(None)
        if hs:
            empty = False
            sketches.append(tuple(sorted(hs)[:CAPACITY]))
        else:
            sketches.append(EMPTY_KMV)
    if empty:
        return None
    return _new(BucketStats, (tuple(summaries), tuple(sketches)))


def apply_delta(group: FeatureGroup, state: EntityState | None, delta: EntityState) -> EntityState:
    """Merge a delta into a state and prune: the reference the Redis Lua script must match.

    Pure: neither argument is modified.  Per ring of resolution ``r`` keeping
    ``n`` buckets, with ``newest = max(state.newest_event_ms,
    delta.newest_event_ms)`` and ``cutoff = newest // r - n``:

    1. state buckets with ``id <= cutoff`` are dropped;
    2. delta buckets with ``id <= cutoff`` are dropped;
    3. a delta bucket whose id is in the state is merged as
       ``merge_buckets(state_bucket, delta_bucket)`` (state first: the float
       results depend on the order), else it is added.

    ``last[f]`` becomes the delta's when ``delta_time >= state_time``.  The
    state's ``skipped`` is always empty.
    """
    newest = delta.newest_event_ms
    old_newest = state.newest_event_ms if state is not None else None
    if old_newest is not None and (newest is None or old_newest > newest):
        newest = old_newest
    rings: dict[int, Ring] = {}
    if newest is not None:
        old_rings = state.rings if state is not None else {}
        new_rings = delta.rings
        for r, n in group.layout.ring_buckets.items():
            cutoff = newest // r - n
            old = old_rings.get(r)
            ring: Ring = {b: s for b, s in old.items() if b > cutoff} if old else {}
            new = new_rings.get(r)
            if new:
                for b, s in new.items():
                    if b > cutoff:
                        cur = ring.get(b)
                        ring[b] = s if cur is None else merge_buckets(cur, s)
            rings[r] = ring
    last = dict(state.last) if state is not None else {}
    for f, tv in delta.last.items():
        held = last.get(f)
        if held is None or tv[0] >= held[0]:
            last[f] = tv
    return EntityState(rings, last, newest)


def read_features(group: FeatureGroup, state: EntityState | None, as_of_ms: int) -> FeatureVector:
    """The features of one entity as of ``as_of_ms``, named by ``group.feature_names()``.

    A missing entity (``state is None``) or a window without data gives
    counts and distinct counts of 0, sums of 0.0, and ``None`` for mean,
    min, max, std, var and last.  Buckets are merged from the newest to the
    oldest, ring by ring, extending the merge window by window.
    """
    layout = group.layout
    nv = len(layout.value_fields)
    nd = len(layout.distinct_fields)
    per_window: dict[str, tuple[list[Summary], list[Kmv]]] = {}
    for r, windows in layout.ring_windows:
        ring = state.rings.get(r) if state is not None else None
        bt = as_of_ms // r
        ids = sorted((b for b in ring if b <= bt), reverse=True) if ring else []
        sums: list[Summary] = [EMPTY] * nv
        sketches: list[Kmv] = [EMPTY_KMV] * nd
        k = 0
        for w in windows:
            lo = bt - w.n_buckets
            while k < len(ids) and ids[k] > lo:
                assert ring is not None
                bucket = ring[ids[k]]
                sums = [merge(a, b) for a, b in zip(sums, bucket.summaries, strict=True)]
                sketches = [kmv_merge(a, b) for a, b in zip(sketches, bucket.sketches, strict=True)]
                k += 1
            per_window[w.name] = (sums, sketches)
    last = state.last if state is not None else {}
    newest = state.newest_event_ms if state is not None else None
    return assemble_vector(group, per_window, last, newest, as_of_ms)


def assemble_vector(
    group: FeatureGroup,
    per_window: Mapping[str, tuple[Sequence[Summary], Sequence[Kmv]]],
    last: Mapping[str, tuple[int, LastValue]],
    newest_event_ms: int | None,
    as_of_ms: int,
) -> FeatureVector:
    """The named feature values from each window's merged summaries and sketches."""
    values: dict[str, FeatureValue] = {}
    for name, kind, key, position, aggregate in _plan(group):
        if kind == 0:  # value
            values[name] = aggregate(per_window[key][0][position])
        elif kind == 1:  # distinct
            values[name] = round(kmv_estimate(per_window[key][1][position]))
        else:  # last
            tv = last.get(key)
            values[name] = tv[1] if tv is not None else None
    return FeatureVector(values, as_of_ms, newest_event_ms)


_Aggregate = Callable[[Summary], float | int | None]
_Plan = tuple[tuple[str, int, str, int, _Aggregate], ...]


@functools.lru_cache(maxsize=256)
def _plan(group: FeatureGroup) -> _Plan:
    """Per feature: (name, kind 0/1/2, window name or last field, position, aggregate).

    ``aggregate`` is only used for kind 0 (value); the others carry ``count``.
    """
    plan: list[tuple[str, int, str, int, _Aggregate]] = []
    count = _AGGREGATE["count"]
    for spec in group.layout.features:
        if spec.kind == "last":
            plan.append((spec.name, 2, spec.field, -1, count))
        else:
            assert spec.window is not None
            kind = 1 if spec.kind == "distinct" else 0
            aggregate = _AGGREGATE[spec.aggregation] if kind == 0 else count
            plan.append((spec.name, kind, spec.window.name, spec.position, aggregate))
    return tuple(plan)
