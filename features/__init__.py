"""Sliding-window features: definitions and the window engine (pure: no Kafka, Redis or Faust).

::

    FeatureGroup.from_config(dict)          definitions.py   what to compute
            │
    split_by_time(events, watermark, …)     watermark.py     late / future / accepted
            │ accepted events
    build_deltas(group, events)             engine.py        one pass: a delta per entity
    build_encoded(group, events)            batch.py         the same with numpy, rings
            │ {entity: EntityState}                          already encoded (EncodedDelta)
    apply_delta(group, state, delta)        engine.py        merge + prune (Redis: Lua)
            │                               codec.py         ring <-> bytes for the Lua side
    read_features(group, state, as_of_ms)   engine.py        FeatureVector

The window semantics (buckets, reads as of a time, decay, pruning) are
described in :mod:`driftline.features.engine`; the mergeable intermediates in
:mod:`driftline.features.stats` and :mod:`driftline.features.sketch`.
"""

from driftline.features.codec import decode_last, decode_ring, encode_last, encode_ring
from driftline.features.definitions import AGGREGATIONS, FeatureGroup, Window
from driftline.features.durations import format_duration, parse_duration
from driftline.features.engine import apply_delta, build_deltas, read_features
from driftline.features.exceptions import CodecError, FeatureDefinitionError, FeatureError
from driftline.features.state import BucketStats, EntityState, FeatureVector
from driftline.features.stats import Summary
from driftline.features.watermark import TimeSplit, Watermark, split_by_time

__all__ = [
    "AGGREGATIONS",
    "BucketStats",
    "CodecError",
    "EntityState",
    "FeatureDefinitionError",
    "FeatureError",
    "FeatureGroup",
    "FeatureVector",
    "Summary",
    "TimeSplit",
    "Watermark",
    "Window",
    "apply_delta",
    "build_deltas",
    "decode_last",
    "decode_ring",
    "encode_last",
    "encode_ring",
    "format_duration",
    "parse_duration",
    "read_features",
    "split_by_time",
]
