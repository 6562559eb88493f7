"""Features straight from stored ring blobs: the serving read path (pure).

:func:`read_rings` gives exactly what ``decode_ring`` +
:func:`~driftline.features.engine.read_features` give (the same buckets,
merged in the same order with the same arithmetic, so the same floats:
``tests/unit/features/test_reader.py`` checks it against them on random
states), without building a ``BucketStats`` per bucket:

* a blob is unpacked once (``struct``) and walked bucket by bucket to find
  where each starts; only buckets inside the longest window of their ring
  are read;
* summaries are merged in local variables (Chan et al., newest bucket first,
  as the engine does) and a Summary is built once per window and field;
* a distinct sketch is the ``CAPACITY`` smallest hashes of the union of the
  window's bucket sketches, so the union is kept as a set and pruned to those
  smallest whenever it grows past ``2 * CAPACITY`` (a hash outside the
  smallest of a subset cannot be among the smallest of the whole).

It also says which fields have data in each window (:attr:`Reading.present`),
which serving reports as freshness.

Validation is structural (whole doubles, integral ids, counts and sketch
sizes, sizes within the blob, no repeated bucket id): the blobs come from the
worker's own Lua script, and a full check of every hash (``decode_ring``)
cost more than the read itself.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from driftline.features.definitions import FeatureGroup
from driftline.features.engine import assemble_vector
from driftline.features.exceptions import CodecError
from driftline.features.sketch import CAPACITY, EMPTY_KMV, Kmv
from driftline.features.state import FeatureVector, LastValue
from driftline.features.stats import EMPTY, Summary

_PRUNE_AT = 2 * CAPACITY


class Reading(NamedTuple):
    vector: FeatureVector
    #: window name -> (value fields with data, distinct fields with data), in layout order
    present: dict[str, tuple[tuple[bool, ...], tuple[bool, ...]]]
    #: the entity's ``last`` values with their event times
    last: Mapping[str, tuple[int, LastValue]]


def read_rings(
    group: FeatureGroup,
    blobs: Mapping[int, bytes],
    last: Mapping[str, tuple[int, LastValue]],
    newest_event_ms: int | None,
    as_of_ms: int,
) -> Reading:
    """The features of one entity whose rings are ``blobs`` (resolution -> blob)."""
    layout = group.layout
    nv = len(layout.value_fields)
    nd = len(layout.distinct_fields)
    per_window: dict[str, tuple[Sequence[Summary], Sequence[Kmv]]] = {}
    present: dict[str, tuple[tuple[bool, ...], tuple[bool, ...]]] = {}
    nothing = ((EMPTY,) * nv, (EMPTY_KMV,) * nd)
    absent = ((False,) * nv, (False,) * nd)
    for r, windows in layout.ring_windows:
        top = as_of_ms // r
        blob = blobs.get(r)
        if blob:
            vals, starts = _index(blob, nv, nd, top - windows[-1].n_buckets, top)
        else:
            vals, starts = (), []
        if not starts:  # no data in any window of this ring (often: short windows)
            for w in windows:
                per_window[w.name] = nothing
                present[w.name] = absent
            continue
        ns = [0] * nv
        means = [0.0] * nv
        m2s = [0.0] * nv
        mins = [0.0] * nv
        maxs = [0.0] * nv
        hashes: list[set[float]] = [set() for _ in range(nd)]
        k = 0
        for w in windows:
            low = top - w.n_buckets
            while k < len(starts) and starts[k][0] > low:
                p = starts[k][1] + 1
                for f in range(nv):
                    bn = int(vals[p])
                    if bn:
                        an = ns[f]
                        if an == 0:
                            ns[f] = bn
                            means[f] = vals[p + 1]
                            m2s[f] = vals[p + 2]
                            mins[f] = vals[p + 3]
                            maxs[f] = vals[p + 4]
                        else:
                            # exactly driftline.features.stats.merge(acc, bucket)
                            n = an + bn
                            a_mean = means[f]
                            delta = vals[p + 1] - a_mean
                            means[f] = a_mean + delta * bn / n
                            m2s[f] = m2s[f] + vals[p + 2] + delta * delta * an * bn / n
                            b_min = vals[p + 3]
                            if not mins[f] <= b_min:
                                mins[f] = b_min
                            b_max = vals[p + 4]
                            if not maxs[f] >= b_max:
                                maxs[f] = b_max
                            ns[f] = n
                    p += 5
                for j in range(nd):
                    size = int(vals[p])
                    if size:
                        acc = hashes[j]
                        acc.update(vals[p + 1 : p + 1 + size])
                        if len(acc) > _PRUNE_AT:
                            hashes[j] = set(heapq.nsmallest(CAPACITY, acc))
                    p += 1 + size
                k += 1
            per_window[w.name] = (
                [
                    Summary(ns[f], means[f], m2s[f], mins[f], maxs[f]) if ns[f] else EMPTY
                    for f in range(nv)
                ],
                [tuple(map(int, sorted(h)[:CAPACITY])) if h else EMPTY_KMV for h in hashes],
            )
            present[w.name] = (tuple(n > 0 for n in ns), tuple(bool(h) for h in hashes))
    vector = assemble_vector(group, per_window, last, newest_event_ms, as_of_ms)
    return Reading(vector, present, last)


def _index(
    blob: bytes, nv: int, nd: int, after: int, upto: int
) -> tuple[tuple[float, ...], list[tuple[int, int]]]:
    """The doubles of a blob, and (id, start) of its buckets in ``(after, upto]``, newest first."""
    if len(blob) % 8:
        raise CodecError(f"a ring blob is a whole number of doubles, got {len(blob)} bytes")
    vals = struct.unpack(f"<{len(blob) // 8}d", blob)
    total = len(vals)
    summaries = 5 * nv
    fixed = 1 + summaries + nd
    starts: list[tuple[int, int]] = []
    ids: list[int] = []
    ascending = True
    previous = -math.inf
    i = 0
    while i < total:
        if i + fixed > total:
            raise CodecError(f"truncated bucket at double {i} of {total}")
        raw_id = vals[i]
        if not raw_id.is_integer():
            raise CodecError(f"bucket id at double {i} is not an integer: {raw_id!r}")
        bid = int(raw_id)
        if bid <= previous:
            ascending = False  # the worker writes ascending ids; others are checked below
        previous = bid
        ids.append(bid)
        start = i
        for c in range(i + 1, i + 1 + summaries, 5):
            n = vals[c]
            if not (n >= 0 and n.is_integer()):
                raise CodecError(f"bad count at double {c}: {n!r}")
        i += 1 + summaries
        for _ in range(nd):
            size = vals[i] if i < total else -1.0
            if not (0 <= size <= CAPACITY and size.is_integer()) or i + 1 + size > total:
                if i >= total:
                    raise CodecError(f"truncated sketch at double {i} of {total}")
                raise CodecError(f"bad sketch size {size!r} at double {i}")
            i += 1 + int(size)
        if after < bid <= upto:
            starts.append((bid, start))
    if ascending:
        starts.reverse()
    else:
        if len(set(ids)) != len(ids):
            repeated = next(b for b in ids if ids.count(b) > 1)
            raise CodecError(f"bucket {repeated} appears twice")
        starts.sort(reverse=True)
    return vals, starts
