"""Durations as people write them in config files: ``250ms``, ``90s``, ``5m``, ``24h``, ``7d``.

One whole number and one unit, nothing else: no fractions (``1.5h``), no
compound forms (``1h30m``) and no bare numbers (is ``30000`` seconds or
milliseconds?).  A strict grammar keeps the window names that end up in
feature names (``amount_sum_5m``) unambiguous, and every rejection says what
to write instead.

Units: ``ms`` (milliseconds), ``s``, ``m`` (minutes), ``h``, ``d`` (24 h; no
calendar, no daylight saving).
"""

from __future__ import annotations

import re

UNITS: dict[str, int] = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}

#: Durations are milliseconds that must stay exact in a double (Redis Lua).
MAX_DURATION_MS = 2**53 - 1

_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_DECIMAL = re.compile(r"([0-9]*\.[0-9]+|[0-9]+\.)(ms|s|m|h|d)")
_EXAMPLES = "e.g. '250ms', '90s', '5m', '24h', '7d'"


def parse_duration(text: str) -> int:
    """``"5m"`` -> ``300000``: a duration in whole milliseconds.

    Raises ``ValueError`` with a message that names the input and shows the
    accepted forms (and, for ``"1.5h"``, the exact equivalent ``"90m"``).
    """
    if not isinstance(text, str):
        if isinstance(text, int) and not isinstance(text, bool):
            raise ValueError(
                f"{text!r} has no unit: write it with one, {_EXAMPLES} ({text}ms if you meant ms)"
            )
        raise ValueError(f"a duration must be a string like '5m', got {type(text).__name__}")
    s = text.strip()
    match = _DURATION.fullmatch(s)
    if match is not None:
        ms = int(match.group(1)) * UNITS[match.group(2)]
        if ms > MAX_DURATION_MS:
            raise ValueError(f"{text!r} is too long (at most {MAX_DURATION_MS} ms)")
        return ms
    raise ValueError(_explain(text, s))


def format_duration(ms: int) -> str:
    """The shortest exact spelling of ``ms``: ``90000`` -> ``"90s"``, ``86400000`` -> ``"1d"``.

    The largest unit that divides ``ms`` always gives the shortest text (every
    step down multiplies the number by at least 10 or adds a digit), so
    ``parse_duration(format_duration(ms)) == ms`` and the result is unique.
    """
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise ValueError(f"a duration is a non-negative whole number of ms, got {ms!r}")
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = UNITS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _explain(text: str, s: str) -> str:
    if not s:
        return f"empty duration: write a whole number and a unit, {_EXAMPLES}"
    if s.startswith("-"):
        return f"{text!r}: a duration cannot be negative"
    decimal = _DECIMAL.fullmatch(s)
    if decimal is not None:
        exact = float(decimal.group(1)) * UNITS[decimal.group(2)]
        hint = f": write {format_duration(int(exact))!r}" if exact.is_integer() else ""
        return f"{text!r}: fractions are not accepted{hint}"
    if s.isdigit():
        return f"{text!r} has no unit: write e.g. '{s}s' or '{s}ms'"
    return (
        f"{text!r} is not a duration: write a whole number and one unit "
        f"(ms, s, m, h, d), {_EXAMPLES}"
    )
