"""The state the window engine reads and writes, as plain immutable-by-contract data.

::

    EntityState
    ├── rings: {resolution_ms: {bucket_id: BucketStats}}   one ring per resolution
    │            BucketStats.summaries[i]  Summary of value field i   (group order)
    │            BucketStats.sketches[j]   KMV sketch of distinct field j
    ├── last: {field: (event_time_ms, value)}
    ├── newest_event_ms: newest event time ever merged (drives pruning)
    └── skipped: {field: count}   deltas only: present but unusable values

    EncodedDelta   a delta whose rings are already blobs (features/batch.py)

The same type carries a *delta* (what one batch adds for one entity) and the
*state* (what is stored); :func:`~driftline.features.engine.apply_delta` merges one into
the other.  Nothing here is mutated after construction: the engine builds
new dicts and shares the immutable ``BucketStats`` tuples between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from driftline.features.sketch import Kmv, kmv_merge
from driftline.features.stats import Summary, merge

#: A value kept by ``last``: a JSON scalar.
LastValue = str | int | float | bool
#: A feature value as :func:`~driftline.features.engine.read_features` returns it.
FeatureValue = float | int | str | None


class BucketStats(NamedTuple):
    """The mergeable intermediates of one bucket, positional in the group's field order."""

    summaries: tuple[Summary, ...]
    sketches: tuple[Kmv, ...]


Ring = dict[int, BucketStats]


def merge_buckets(a: BucketStats, b: BucketStats) -> BucketStats:
    """Field by field.

    :func:`~driftline.features.stats.merge` and :func:`~driftline.features.sketch.kmv_merge`.
    """
    return BucketStats(
        tuple(map(merge, a.summaries, b.summaries)),
        tuple(map(kmv_merge, a.sketches, b.sketches)),
    )


@dataclass(slots=True)
class EntityState:
    """Window state of one entity (or one batch's delta for it)."""

    rings: dict[int, Ring] = field(default_factory=dict)
    last: dict[str, tuple[int, LastValue]] = field(default_factory=dict)
    newest_event_ms: int | None = None
    #: deltas only (never carried into state): per field, the number of
    #: values that were present but unusable (not a finite number for a
    #: value field, not a scalar for a distinct or last field)
    skipped: dict[str, int] = field(default_factory=dict)

    def bucket_count(self) -> int:
        return sum(len(ring) for ring in self.rings.values())


@dataclass(slots=True)
class EncodedDelta:
    """One batch's delta for one entity with its rings already in the store's blob form.

    What :func:`~driftline.features.batch.build_encoded` makes: ``blobs`` maps a
    resolution to its ring blob (:mod:`driftline.features.codec`); a resolution
    without buckets is absent.  :func:`~driftline.features.codec.decode_delta`
    turns it into the :class:`EntityState` that
    :func:`~driftline.features.engine.build_deltas` would have made.
    """

    blobs: dict[int, bytes]
    last: dict[str, tuple[int, LastValue]]
    newest_event_ms: int
    skipped: dict[str, int]


#: What a batch hands the store per entity: either form of a delta.
Delta = EntityState | EncodedDelta


class FeatureVector(NamedTuple):
    """The features of one entity as of ``as_of_ms``, in ``feature_names()`` order."""

    values: dict[str, FeatureValue]
    as_of_ms: int
    newest_event_ms: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of_ms": self.as_of_ms,
            "newest_event_ms": self.newest_event_ms,
            "features": dict(self.values),
        }
