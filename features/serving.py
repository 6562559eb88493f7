"""Serving semantics shared by every reader (``driftline serve``, :class:`driftline.FeatureClient`).

Freshness of a served feature, as of the read time:

* ``fresh``: a window feature whose window holds data, or a ``last`` value
  younger than the group's longest window;
* ``stale``: a ``last`` value older than the longest window;
* ``empty``: nothing in the window (the aggregate is the empty one), or no
  ``last`` value yet.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal

from driftline.features.definitions import FeatureGroup, FeatureSpec
from driftline.features.reader import Reading

Freshness = Literal["fresh", "stale", "empty"]


def freshness(
    group: FeatureGroup, reading: Reading, as_of_ms: int, names: Iterable[str]
) -> dict[str, Freshness]:
    """The freshness of each named feature of one entity as of ``as_of_ms`` (see module doc).

    ``reading.present`` says which fields have data in the buckets a window
    merges, so ``empty`` coincides with the aggregate being the empty one.
    """
    by_name = feature_specs(group)
    present = reading.present
    out: dict[str, Freshness] = {}
    for spec in (by_name[n] for n in names):
        if spec.window is None:
            held = reading.last.get(spec.field)
            if held is None:
                out[spec.name] = "empty"
            else:
                old = as_of_ms - held[0] >= group.longest_window_ms
                out[spec.name] = "stale" if old else "fresh"
            continue
        values, distinct = present[spec.window.name]
        has = (values if spec.kind == "value" else distinct)[spec.position]
        out[spec.name] = "fresh" if has else "empty"
    return out


@functools.lru_cache(maxsize=256)
def feature_specs(group: FeatureGroup) -> dict[str, FeatureSpec]:
    """Feature specs by name; cached per group (hashable by fingerprint), read per entity."""
    return {s.name: s for s in group.layout.features}
