"""Duration parsing: the forms config files use, and messages for everything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.features.durations import MAX_DURATION_MS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("90s", 90_000),
        ("1m", 60_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("24h", 86_400_000),
        ("7d", 604_800_000),
        (" 30s ", 30_000),
        ("0s", 0),
    ],
)
def test_parses(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (250, "250ms"),
        (1500, "1500ms"),
        (90_000, "90s"),
        (300_000, "5m"),
        (5_400_000, "90m"),
        (86_400_000, "1d"),
        (90_000_000, "25h"),
    ],
)
def test_formats_shortest_exact(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@given(st.integers(0, MAX_DURATION_MS))
def test_format_round_trips(ms: int) -> None:
    text = format_duration(ms)
    assert parse_duration(text) == ms
    # no other spelling is shorter
    for unit, size in (("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)):
        if ms % size == 0:
            assert len(text) <= len(f"{ms // size}{unit}")


@pytest.mark.parametrize(
    ("junk", "needle"),
    [
        ("", "empty duration"),
        ("5", "has no unit"),
        ("5x", "is not a duration"),
        ("5M", "is not a duration"),
        ("-5m", "cannot be negative"),
        ("1.5h", "write '90m'"),
        ("0.5ms", "fractions are not accepted"),
        ("1h30m", "is not a duration"),
        ("five minutes", "is not a duration"),
        (30_000, "has no unit"),
        (None, "must be a string"),
        (True, "must be a string"),
        ("99999999999999999d", "too long"),
    ],
)
def test_junk_is_rejected_with_a_clear_message(junk: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        parse_duration(junk)  # type: ignore[arg-type]
    if isinstance(junk, str) and junk:
        assert repr(junk) in str(info.value)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_format_rejects_non_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)  # type: ignore[arg-type]
