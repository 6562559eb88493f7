"""Serving semantics: freshness of every selected feature against its definition."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.features.codec import encode_ring
from driftline.features.reader import read_rings
from driftline.features.serving import freshness
from driftline.features.state import EntityState
from driftline.schemas.parser import ParsedEvent
from tests.unit.features.reference import GROUP, event_streams, run, split
from tests.unit.features.test_reader import presence


def expected(state: EntityState | None, as_of_ms: int, names: list[str]) -> dict[str, str]:
    """Brute force from the module doc: windows by their buckets, last by its age."""
    specs = {s.name: s for s in GROUP.layout.features}
    held = presence(GROUP, state, as_of_ms)
    out = {}
    for name in names:
        spec = specs[name]
        if spec.window is None:
            last = state.last.get(spec.field) if state is not None else None
            if last is None:
                out[name] = "empty"
            else:
                old = as_of_ms - last[0] >= GROUP.longest_window_ms
                out[name] = "stale" if old else "fresh"
        else:
            values, distinct = held[spec.window.name]
            has = (values if spec.kind == "value" else distinct)[spec.position]
            out[name] = "fresh" if has else "empty"
    return out


@settings(max_examples=150, deadline=None)
@given(
    event_streams(),
    st.lists(st.integers(0, 60), max_size=3),
    st.integers(-3_000, 300_000),
    st.lists(st.sampled_from(GROUP.feature_names()), unique=True),
)
def test_freshness_of_any_selection_follows_the_definition(
    events: list[ParsedEvent], cuts: list[int], after_ms: int, chosen: list[str]
) -> None:
    names = chosen or list(GROUP.feature_names())
    states: list[EntityState | None] = [*run(GROUP, split(events, cuts)).values(), None]
    for state in states:
        newest = state.newest_event_ms if state is not None else None
        as_of = (newest or 0) + after_ms
        blobs = {r: encode_ring(GROUP, ring) for r, ring in state.rings.items()} if state else {}
        reading = read_rings(GROUP, blobs, state.last if state else {}, newest, as_of)
        got = freshness(GROUP, reading, as_of, names)
        assert list(got) == names  # in the order asked
        assert got == expected(state, as_of, names)


def test_a_last_value_turns_stale_exactly_at_the_longest_window() -> None:
    t = 1_000_000
    event = ParsedEvent("u", t, {"user_id": "u", "amount": 2.0, "category": "a"})
    state = run(GROUP, [[event]])["u"]
    blobs = {r: encode_ring(GROUP, ring) for r, ring in state.rings.items()}
    for age, want in ((0, "fresh"), (GROUP.longest_window_ms - 1, "fresh")):
        reading = read_rings(GROUP, blobs, state.last, t, t + age)
        assert freshness(GROUP, reading, t + age, ["category_last"]) == {"category_last": want}
    at = t + GROUP.longest_window_ms
    reading = read_rings(GROUP, blobs, state.last, t, at)
    assert freshness(GROUP, reading, at, ["category_last"]) == {"category_last": "stale"}
    assert expected(state, at, ["category_last"]) == {"category_last": "stale"}
