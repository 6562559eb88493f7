"""Approximate distinct counts that merge: a K-minimum-values (KMV) sketch.

Every categorical value is hashed to 52 bits (uniform on ``[0, 2**52)``); a
sketch keeps the smallest distinct hashes seen.  If ``D`` distinct values were
hashed, the ``K``-th smallest hash sits near ``K / D`` of the hash space, so
``D ≈ (K - 1) / (h_K / 2**52)`` (the unbiased KMV estimator, relative standard
error about ``1 / sqrt(K - 2)``, i.e. ~18 % for ``K = 32``).

::

    hash space 0 ────────────────────────────────────────────── 2**52
                x  x x   x  x  x   x  …  x│ x      x     x   x
                └──── the 32 smallest ────┘│└─ not kept ──────┘
                                           h_K

Sketches merge by union: keep the smallest of both, so the sketch of a
window is the merge of the sketches of its buckets, in any order and
grouping (the result is exactly the sketch of the union of the values).

**Exact up to K.**  A sketch stores up to ``CAPACITY = K + 1 = 33`` hashes.
The 33rd is only a marker: with at most 32 hashes the sketch saw exactly that
many distinct values and :func:`kmv_estimate` returns the exact count; with 33
it saw more than 32 and the estimate uses ``h_K``, the 32nd smallest.
(Keeping only 32 could not tell "exactly 32" from "more".)  Hash collisions
among 52-bit hashes are negligible at these sizes.

**Hash.**  ``value_hash(v)`` = the first 8 bytes of BLAKE2b (default 64-byte
digest) of the UTF-8 :func:`canonical_text` of ``v``, read big-endian, keeping
the low 52 bits.  52 bits fit a double exactly, so the Redis Lua script can
store and compare hashes as plain numbers; Lua never hashes, Python does.

A sketch is a plain ``tuple[int, ...]``, sorted ascending, without duplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

K = 32
CAPACITY = K + 1
HASH_BITS = 52
HASH_MASK = (1 << HASH_BITS) - 1
HASH_SPACE = float(1 << HASH_BITS)

Kmv = tuple[int, ...]
EMPTY_KMV: Kmv = ()


def canonical_text(value: object) -> str | None:
    """The text that is hashed for ``value``, or ``None`` if it is not categorical.

    Strings are themselves; ``True``/``False`` are ``"true"``/``"false"``;
    numbers use their decimal form, and a float with an integral value is
    written as the integer (``1.0`` and ``1`` are the same JSON number).  So
    the string ``"1"`` and the number ``1`` are the same category.  ``NaN``,
    infinities, ``None``, lists and objects are not categories (``None``).
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(float(value))
    return None


def hash_text(text: str) -> int:
    """52-bit hash of an already canonical text (see the module docstring)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") & HASH_MASK


def value_hash(value: object) -> int:
    """52-bit hash of a categorical value; ``ValueError`` if it is not one."""
    text = canonical_text(value)
    if text is None:
        raise ValueError(f"{value!r} is not a categorical value (string, number or boolean)")
    return hash_text(text)


def kmv_of(hashes: Iterable[int]) -> Kmv:
    """The sketch of a collection of hashes (duplicates allowed)."""
    return tuple(sorted(set(hashes))[:CAPACITY])


def kmv_add(sketch: Kmv, h: int) -> Kmv:
    """``sketch`` with one more hash."""
    if len(sketch) >= CAPACITY and h >= sketch[-1]:
        return sketch
    if h in sketch:
        return sketch
    return tuple(sorted((*sketch, h))[:CAPACITY])


def kmv_merge(a: Kmv, b: Kmv) -> Kmv:
    """The sketch of the union of the two sketched sets."""
    if not b:
        return a
    if not a:
        return b
    return tuple(sorted(set(a).union(b))[:CAPACITY])


def kmv_estimate(sketch: Kmv) -> float:
    """Distinct values seen: exact up to ``K``, ``(K - 1) / (h_K / 2**52)`` beyond."""
    if len(sketch) <= K:
        return float(len(sketch))
    return (K - 1) / (sketch[K - 1] / HASH_SPACE)
