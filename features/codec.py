"""Binary encoding of one bucket ring, readable and writable by a Redis Lua script.

Only IEEE-754 binary64 **little-endian** doubles (``struct.unpack('<d', …)``
in Redis Lua, 8 bytes each).  Every integer in the layout (bucket ids,
counts, sketch sizes, hashes) is below 2**53 in magnitude, so it is exact.

Layout of a ring blob (``V`` value fields, ``D`` distinct fields of the group,
both in the group's declared order; see ``group.layout.value_fields`` and
``group.layout.distinct_fields``)::

    ring    := bucket*                      no header, no padding, no count;
                                            empty ring = 0 bytes
    bucket  := bucket_id                    1 double, integral (= event_time_ms // r)
               summary{V}                   5 doubles per value field, in order
               sketch{D}                    1 + k doubles per distinct field, in order
    summary := n mean m2 min max            n integral >= 0; m2 = sum of squared
                                            deviations; an empty summary (field
                                            absent in the bucket) is
                                            0, 0, 0, +inf, -inf
    sketch  := k h_1 … h_k                  k integral, 0 <= k <= 33 (CAPACITY);
                                            hashes integral, 0 <= h < 2**52,
                                            strictly ascending

    bucket size = 8 * (1 + 5*V + D + sum of k_j) bytes

Buckets are written in ascending ``bucket_id``; decoders accept any order
but reject a repeated id.  Which resolution a blob belongs to is not in the
blob: the store keeps one blob per resolution (under a key that names the
group's fingerprint, which covers the field order and this format through
:data:`~driftline.features.definitions.STATE_FORMAT`).

``last`` values are small and typed (strings, numbers, booleans), so they use
JSON: :func:`encode_last` writes ``{"field": [event_time_ms, value], …}`` with
sorted keys.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from driftline.features.definitions import FeatureGroup
from driftline.features.exceptions import CodecError
from driftline.features.sketch import CAPACITY, HASH_MASK, Kmv
from driftline.features.state import BucketStats, Delta, EncodedDelta, EntityState, LastValue, Ring
from driftline.features.stats import EMPTY, Summary

_MAX_EXACT = 2**53


def encode_ring(group: FeatureGroup, ring: Mapping[int, BucketStats]) -> bytes:
    """The blob of one ring of ``group`` (see the module docstring for the layout)."""
    nv = len(group.layout.value_fields)
    nd = len(group.layout.distinct_fields)
    out: list[float] = []
    add = out.append
    extend = out.extend
    for bid in sorted(ring):
        stats = ring[bid]
        if len(stats.summaries) != nv or len(stats.sketches) != nd:
            raise CodecError(
                f"bucket {bid} has {len(stats.summaries)} summaries and {len(stats.sketches)} "
                f"sketches; group {group.name!r} needs {nv} and {nd}"
            )
        if not -_MAX_EXACT < bid < _MAX_EXACT:
            raise CodecError(f"bucket id {bid} is not exact as a double")
        add(bid)
        for s in stats.summaries:
            extend(s)
        for sketch in stats.sketches:
            add(len(sketch))
            extend(sketch)
    return struct.pack(f"<{len(out)}d", *out)


def decode_ring(group: FeatureGroup, data: bytes) -> Ring:
    """The ring a blob encodes.

    Raises :class:`~driftline.features.exceptions.CodecError` if it is malformed.
    """
    if len(data) % 8:
        raise CodecError(f"a ring blob is a whole number of doubles, got {len(data)} bytes")
    nv = len(group.layout.value_fields)
    nd = len(group.layout.distinct_fields)
    vals = struct.unpack(f"<{len(data) // 8}d", data)
    total = len(vals)
    fixed = 1 + 5 * nv + nd
    ring: Ring = {}
    i = 0
    while i < total:
        if i + fixed > total:
            raise CodecError(f"truncated bucket at double {i} of {total}")
        bid = _integral(vals[i], "bucket id", i)
        if bid in ring:
            raise CodecError(f"bucket {bid} appears twice")
        i += 1
        summaries: list[Summary] = []
        for _ in range(nv):
            n = _integral(vals[i], "count", i)
            if n < 0:
                raise CodecError(f"negative count at double {i}")
            summaries.append(
                EMPTY if n == 0 else Summary(n, vals[i + 1], vals[i + 2], vals[i + 3], vals[i + 4])
            )
            i += 5
        sketches: list[Kmv] = []
        for _ in range(nd):
            if i >= total:
                raise CodecError(f"truncated sketch at double {i} of {total}")
            k = _integral(vals[i], "sketch size", i)
            if not 0 <= k <= CAPACITY or i + 1 + k > total:
                raise CodecError(f"bad sketch size {k} at double {i}")
            sketches.append(_hashes(vals[i + 1 : i + 1 + k], i))
            i += 1 + k
        ring[bid] = BucketStats(tuple(summaries), tuple(sketches))
    return ring


def _hashes(raw: tuple[float, ...], at: int) -> Kmv:
    """A sketch's hashes: integral, strictly ascending, in [0, 2**52] (checked in C loops)."""
    try:
        hashes = tuple(map(int, raw))
    except (ValueError, OverflowError):  # NaN, infinity
        hashes = ()
    ok = hashes == raw  # int == float only for integral values
    if ok and hashes:
        ascending = all(map(operator.lt, hashes, hashes[1:]))
        ok = ascending and hashes[0] >= 0 and hashes[-1] <= HASH_MASK
    if not ok:
        raise CodecError(f"sketch at double {at} is not ascending 52-bit hashes")
    return hashes


def _integral(x: float, what: str, at: int) -> int:
    if not x.is_integer():
        raise CodecError(f"{what} at double {at} is not an integer: {x!r}")
    return int(x)


def decode_delta(group: FeatureGroup, delta: Delta) -> EntityState:
    """An :class:`~driftline.features.state.EncodedDelta` as the
    :class:`~driftline.features.state.EntityState` it stands for (an EntityState as it is)."""
    if not isinstance(delta, EncodedDelta):
        return delta
    blobs = delta.blobs
    rings = {
        r: decode_ring(group, blobs[r]) if r in blobs else {} for r in group.layout.resolutions
    }
    return EntityState(rings, dict(delta.last), delta.newest_event_ms, dict(delta.skipped))


def encode_last(last: Mapping[str, tuple[int, LastValue]]) -> bytes:
    """``{"field": [event_time_ms, value], …}`` as compact JSON with sorted keys."""
    try:
        return orjson.dumps({f: [t, v] for f, (t, v) in last.items()}, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise CodecError(f"last values do not encode: {exc}") from None


def decode_last(data: bytes) -> dict[str, tuple[int, LastValue]]:
    """The inverse of :func:`encode_last`."""
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"last values are not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CodecError("last values must be a JSON object")
    out: dict[str, tuple[int, LastValue]] = {}
    for f, pair in obj.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], int)
            or isinstance(pair[0], bool)
            or not isinstance(pair[1], str | int | float)
        ):
            raise CodecError(f"last value of {f!r} must be [event_time_ms, scalar], got {pair!r}")
        out[f] = (pair[0], pair[1])
    return out
