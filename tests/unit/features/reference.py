"""Shared by the feature tests: a brute-force reference of the window engine,
the event strategies, and small helpers.

The reference keeps every event and computes each feature at ``as_of`` by
filtering the events whose bucket is in ``(bucket(t) - n, bucket(t)]`` and
aggregating them with plain Python (``statistics.pvariance`` is exact: it
uses rational arithmetic).  It shares no code with the engine except the
hash function, which has its own tests.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable
from typing import Any, TypeVar

from hypothesis import strategies as st

from driftline.features.definitions import AGGREGATIONS, FeatureGroup
from driftline.features.engine import apply_delta, build_deltas
from driftline.features.sketch import canonical_text, hash_text, kmv_estimate
from driftline.features.state import EntityState
from driftline.schemas.parser import ParsedEvent

GROUP_CONFIG: dict[str, Any] = {
    "name": "engine_test",
    "version": 1,
    "source": "events",
    "entity_key": "user_id",
    "values": {"amount": list(AGGREGATIONS), "qty": ["count", "sum", "max"]},
    "distinct": ["category"],
    "last": ["amount", "category"],
    # rings: 100 ms (1s), 1 s (10s and 30s share it), 1.5 s (not a multiple
    # of 1 s), 6 s (1m), 30 s (2m): both ways _finish derives coarse rings
    "windows": [
        "1s",
        "10s",
        "1m",
        {"window": "30s", "resolution": "1s"},
        {"window": "45s", "resolution": "1500ms"},
        {"window": "2m", "resolution": "30s"},
    ],
    "buckets_per_window": 10,
}
GROUP = FeatureGroup.from_config(GROUP_CONFIG)
T = TypeVar("T")
T0 = 1_700_000_000_000
ABSENT: Any = object()

# ------------------------------------------------------------------ reference


def usable_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) and math.isfinite(v) and abs(v) <= 1e100


def usable_last(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, bool | str):
        return True
    return isinstance(v, int) and -(2**63) <= v < 2**63


def reference(
    group: FeatureGroup, events: list[ParsedEvent], entity: str, t: int
) -> dict[str, Any]:
    """Every feature of ``entity`` as of ``t``, from the raw events (in arrival order)."""
    mine = [e for e in events if e.entity == entity]
    out: dict[str, Any] = {}
    for spec in group.layout.features:
        if spec.kind == "last":
            best: tuple[int, Any] | None = None
            for e in mine:
                v = e.data.get(spec.field)
                if (
                    v is not None
                    and usable_last(v)
                    and (best is None or e.event_time_ms >= best[0])
                ):
                    best = (e.event_time_ms, v)
            out[spec.name] = None if best is None else best[1]
            continue
        assert spec.window is not None
        r, n = spec.window.resolution_ms, spec.window.n_buckets
        bt = t // r
        inside = [e for e in mine if bt - n < e.event_time_ms // r <= bt]
        vals = [e.data.get(spec.field) for e in inside]
        if spec.kind == "distinct":
            texts = {canonical_text(v) for v in vals if v is not None} - {None}
            hashes = sorted({hash_text(x) for x in texts if x is not None})
            out[spec.name] = (
                len(texts) if len(texts) <= 32 else round(kmv_estimate(tuple(hashes[:33])))
            )
            continue
        xs = [float(v) for v in vals if v is not None and usable_number(v)]
        agg = spec.aggregation
        if agg == "count":
            out[spec.name] = len(xs)
        elif agg == "sum":
            out[spec.name] = math.fsum(xs)
        elif not xs:
            out[spec.name] = None
        elif agg == "mean":
            out[spec.name] = math.fsum(xs) / len(xs)
        elif agg == "min":
            out[spec.name] = min(xs)
        elif agg == "max":
            out[spec.name] = max(xs)
        elif agg == "var":
            out[spec.name] = statistics.pvariance(xs)
        elif agg == "std":
            out[spec.name] = math.sqrt(statistics.pvariance(xs))
        out[f"__scale__{spec.name}"] = max((abs(x) for x in xs), default=0.0)
    return out


def assert_matches(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in got.items():
        expected = want[name]
        if isinstance(expected, float) and not name.endswith("_last"):
            scale = want.get(f"__scale__{name}", 0.0)
            if "_std_" in name or "_var_" in name:
                ok = math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)
            else:  # sums and means can cancel: tolerance relative to the data's magnitude
                ok = math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))
            assert ok, f"{name}: engine {value!r} != reference {expected!r}"
        else:
            assert value == expected and type(value) is type(expected), (
                f"{name}: {value!r} != {expected!r}"
            )


# --------------------------------------------------------------------- engine


def run(
    group: FeatureGroup,
    batches: Iterable[list[ParsedEvent]],
    states: dict[str, EntityState] | None = None,
) -> dict[str, EntityState]:
    states = {} if states is None else states
    for batch in batches:
        for entity, delta in build_deltas(group, batch).items():
            states[entity] = apply_delta(group, states.get(entity), delta)
    return states


def check_bounded(group: FeatureGroup, state: EntityState) -> None:
    assert state.newest_event_ms is not None
    assert state.skipped == {}
    for r, n in group.layout.ring_buckets.items():
        ring = state.rings[r]
        newest_bucket = state.newest_event_ms // r
        assert len(ring) <= n
        assert all(newest_bucket - n < b <= newest_bucket for b in ring)


# ----------------------------------------------------------------- strategies

AMOUNT = st.one_of(
    st.integers(-100_000, 100_000).map(lambda c: c / 100),
    st.integers(-1000, 1000),
    st.sampled_from([ABSENT, None, "12.5", float("nan"), float("inf"), True, 1e200]),
)
CATEGORY = st.one_of(
    st.sampled_from(["grocery", "fuel", "travel", "health"]),
    st.integers(0, 80),  # many distinct values: pushes windows past 32
    st.sampled_from([ABSENT, None, 2.0, False, ["x"]]),
)


MANY_CATEGORIES = st.integers(0, 400).map(lambda i: f"m{i}")


@st.composite
def event_streams(
    draw: st.DrawFn,
    categories: st.SearchStrategy[Any] = CATEGORY,
    entities: tuple[str, ...] = ("a", "b", "c"),
    max_size: int = 60,
) -> list[ParsedEvent]:
    base = draw(st.sampled_from([T0, -7_777]))  # negative times: floor division
    span = draw(st.sampled_from([300, 5_000, 60_000, 200_000]))
    size = draw(st.integers(0, max_size))
    events = []
    for _ in range(size):
        data: dict[str, Any] = {}
        for field, strategy in (
            ("amount", AMOUNT),
            ("category", categories),
            ("qty", st.integers(0, 5)),
        ):
            value = draw(strategy)
            if value is not ABSENT:
                data[field] = value
        entity = draw(st.sampled_from(entities))
        events.append(ParsedEvent(entity, base + draw(st.integers(0, span)), data))
    return events


def split(events: list[T], cuts: list[int]) -> list[list[T]]:
    """``events`` cut at the given positions (batches of random sizes, some empty)."""
    points = sorted({min(c, len(events)) for c in cuts})
    bounds = [0, *points, len(events)]
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


READ_DELAYS = st.one_of(
    st.sampled_from(
        [0, 1, 99, 100, 999, 1_000, 1_499, 5_999, 6_000, 29_999, 30_000, 60_000, 120_000, 10**9]
    ),
    st.integers(0, 200_000),
)
