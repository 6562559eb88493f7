"""Synthetic transaction events for ``driftline dev`` and the benchmarks.

Realistic enough to look at: a few thousand users with Zipf-like activity,
per-category log-normal amounts, events slightly out of order, and a small
share of deliberately broken records, one of each kind the contract layer
rejects, so the dead-letter topic has something to show.  ``driftline dev``
also leaves out ``country`` now and then and repeats an event as a producer
retry would, for the data-quality checks to find.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import orjson

CATEGORIES = (
    "grocery",
    "restaurant",
    "travel",
    "electronics",
    "fuel",
    "entertainment",
    "health",
    "other",
)
_CATEGORY_WEIGHTS = (30, 20, 5, 4, 15, 10, 6, 10)
#: (mu, sigma) of log(amount) per category.
_AMOUNT = {
    "grocery": (3.3, 0.6),
    "restaurant": (3.2, 0.5),
    "travel": (5.5, 0.8),
    "electronics": (5.0, 1.0),
    "fuel": (3.8, 0.3),
    "entertainment": (3.0, 0.7),
    "health": (3.6, 0.8),
    "other": (3.0, 1.0),
}
_COUNTRIES = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE")

#: Broken payloads, by the reason code the worker must give them.
INVALID_KINDS = (
    "invalid_utf8",
    "malformed_json",
    "non_finite_number",
    "wrong_type",
    "missing_field",
    "oversize",
)


class DemoEvents:
    """Deterministic for a given seed; ``now_ms`` is injectable for tests."""

    def __init__(self, *, users: int = 2000, seed: int = 7, max_event_bytes: int = 1 << 20) -> None:
        self.rng = random.Random(seed)
        self.users = [f"user-{i:05d}" for i in range(users)]
        # Zipf-like weights: a few users are very active, most rarely.
        self.weights = [1.0 / (rank + 1) ** 1.1 for rank in range(users)]
        self.max_event_bytes = max_event_bytes
        self.seq = 0
        #: multiplies every amount; ``driftline dev --drift-after`` raises it to
        #: show a drift incident opening
        self.amount_factor = 1.0
        #: share of valid events without the optional ``country`` field
        self.missing_country_ratio = 0.0

    def valid(self, now_ms: int | None = None) -> tuple[bytes, bytes]:
        """One valid event as (key, value)."""
        rng = self.rng
        self.seq += 1
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        user = rng.choices(self.users, self.weights)[0]
        category = rng.choices(CATEGORIES, _CATEGORY_WEIGHTS)[0]
        mu, sigma = _AMOUNT[category]
        event = {
            "event_id": f"evt-{self.seq:09d}",
            "user_id": user,
            "amount": round(rng.lognormvariate(mu, sigma) * self.amount_factor, 2),
            "currency": "EUR",
            "category": category,
            "country": rng.choice(_COUNTRIES),
            # up to 2 s out of order, as mobile clients and retries make it
            "event_time": now_ms - int(rng.expovariate(1 / 300.0)) % 2000,
        }
        if self.missing_country_ratio and rng.random() < self.missing_country_ratio:
            del event["country"]
        return user.encode(), orjson.dumps(event)

    def invalid(
        self, kind: str | None = None, now_ms: int | None = None
    ) -> tuple[str, bytes, bytes]:
        """One broken event as (expected reason, key, value)."""
        kind = kind or self.rng.choice(INVALID_KINDS)
        key, value = self.valid(now_ms)
        event = orjson.loads(value)
        if kind == "invalid_utf8":
            bad = value.replace(b'"EUR"', b'"\xff\xfeUR"')
        elif kind == "malformed_json":
            bad = value[: len(value) // 2]
        elif kind == "non_finite_number":
            bad = value.replace(orjson.dumps(event["amount"]), b"NaN", 1)
        elif kind == "wrong_type":
            event["amount"] = str(event["amount"])
            bad = orjson.dumps(event)
        elif kind == "missing_field":
            del event["category"]
            bad = orjson.dumps(event)
        elif kind == "oversize":
            event["note"] = "x" * (self.max_event_bytes + 1)
            bad = orjson.dumps(event)
        else:
            raise ValueError(f"unknown invalid kind {kind!r}; known: {', '.join(INVALID_KINDS)}")
        return kind, key, bad

    def stream(
        self, invalid_ratio: float, duplicate_ratio: float = 0.0
    ) -> Iterator[tuple[bytes, bytes]]:
        """Events forever; ``duplicate_ratio`` of them repeat the previous valid one."""
        last: tuple[bytes, bytes] | None = None
        while True:
            draw = self.rng.random()
            if draw < invalid_ratio:
                _, key, value = self.invalid()
                yield key, value
            elif last is not None and draw < invalid_ratio + duplicate_ratio:
                yield last  # a producer retry: same key, same bytes
            else:
                last = self.valid()
                yield last
