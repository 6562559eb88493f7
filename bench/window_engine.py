"""Throughput of the window engine's batch step: ``build_deltas`` and its batch form.

    python bench/window_engine.py [--events 100000] [--entities 10000] [--repeat 5]

Events: ``--events`` transactions over ``--entities`` users with Zipf-like
activity (weight ``1 / rank**1.1``, as the demo producer), amounts
log-normal.  Group: ``amount`` with 6 aggregations (count, sum, mean, min,
max, std) over 3 windows (1m, 5m, 1h at 60 buckets: 3 rings).

Scenarios (best of ``--repeat``; events/s = events / seconds in ``build_deltas``):

* ``stream``   the worker's case: batches of 10,000 events (a partition's share
               of a 40,000-record poll over 4 partitions) of a live stream at
               1,000 events/s, up to 2 s out of order;
* ``backfill`` one batch of all events spread over 24 h (every entity's events
               fall into many buckets: the slow path);
* ``full``     the stream scenario with the README group (plus distinct
               ``category`` and last ``amount``, ``category``; 4 windows).

The ``6 aggs x 3 windows`` scenarios run twice more as the worker writes them:
``build_deltas`` then ``encode_ring`` of each ring (the reference path), and
``build_encoded`` (``features/batch.py``: numpy, rings written as blobs); the
``full`` group has a distinct field, which only the reference path takes.

Each scenario runs twice: with the interpreter's default garbage collector
settings, and with the pre-generated input moved out of the collector's reach
(``gc.freeze()``).  The second is closer to the worker, which holds one batch,
not 20: full collections here otherwise rescan the bench's own 100,000 events.

Also shown, for scale: ``apply_delta`` (the Python reference of the Lua merge)
and ``read_features`` per call.  Machines are shared and noisy; compare
figures from the same run.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftline.features import FeatureGroup, apply_delta, build_deltas, encode_ring, read_features
from driftline.features.batch import build_encoded
from driftline.features.state import EntityState
from driftline.schemas.parser import ParsedEvent

CATEGORIES = ("grocery", "restaurant", "travel", "electronics", "fuel", "entertainment")

SIX_BY_THREE = {
    "name": "bench_amount",
    "version": 1,
    "source": "transactions",
    "entity_key": "user_id",
    "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
    "windows": ["1m", "5m", "1h"],
}
FULL = {
    "name": "user_spend",
    "version": 1,
    "source": "transactions",
    "entity_key": "user_id",
    "values": {"amount": ["count", "sum", "mean", "min", "max", "std"]},
    "distinct": ["category"],
    "last": ["amount", "category"],
    "windows": ["1m", "5m", "1h", {"window": "24h", "resolution": "1h"}],
}


def make_events(n: int, entities: int, *, span_ms: int, disorder_ms: int) -> list[ParsedEvent]:
    rng = random.Random(1)
    users = [f"user-{i:05d}" for i in range(entities)]
    cum: list[float] = []
    total = 0.0
    for rank in range(entities):
        total += 1.0 / (rank + 1) ** 1.1
        cum.append(total)
    picks = rng.choices(users, cum_weights=cum, k=n)
    t0 = 1_700_000_000_000
    out = []
    for i, user in enumerate(picks):
        t = t0 + i * span_ms // n - (int(rng.random() * disorder_ms) if disorder_ms else 0)
        data = {
            "user_id": user,
            "amount": round(rng.lognormvariate(3.3, 0.8), 2),
            "category": CATEGORIES[i % len(CATEGORIES)],
            "event_time": t,
        }
        out.append(ParsedEvent(user, t, data))
    return out


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_batches(group: FeatureGroup, batches: list[list[ParsedEvent]]) -> None:
    for batch in batches:
        build_deltas(group, batch)


def encode_reference(group: FeatureGroup, batches: list[list[ParsedEvent]]) -> None:
    """What the worker wrote before the batch form: deltas, then each ring's blob."""
    for batch in batches:
        for delta in build_deltas(group, batch).values():
            for ring in delta.rings.values():
                if ring:
                    encode_ring(group, ring)


def encode_batch(group: FeatureGroup, batches: list[list[ParsedEvent]]) -> None:
    for batch in batches:
        assert build_encoded(group, batch) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.events

    six = FeatureGroup.from_config(SIX_BY_THREE)
    full = FeatureGroup.from_config(FULL)
    stream = make_events(n, args.entities, span_ms=n, disorder_ms=2_000)  # 1,000 events/s
    backfill = make_events(n, args.entities, span_ms=86_400_000, disorder_ms=0)
    batches = [stream[i : i + args.batch] for i in range(0, n, args.batch)]

    print(f"{n:,} events, {args.entities:,} Zipf entities, best of {args.repeat}")
    scenarios = [
        ("stream   6 aggs x 3 windows", lambda: run_batches(six, batches)),
        ("backfill 6 aggs x 3 windows", lambda: build_deltas(six, backfill)),
        ("full     + distinct + last, 4 windows", lambda: run_batches(full, batches)),
        ("stream   6x3, build_deltas + encode_ring", lambda: encode_reference(six, batches)),
        ("stream   6x3, build_encoded (batch form)", lambda: encode_batch(six, batches)),
        ("backfill 6x3, build_deltas + encode_ring", lambda: encode_reference(six, [backfill])),
        ("backfill 6x3, build_encoded (batch form)", lambda: encode_batch(six, [backfill])),
    ]
    print(f"  {'build_deltas':<50} {'default gc':>14} {'input frozen':>14}  events/s")
    results = {}
    for label, fn in scenarios:
        results[label] = n / best_of(args.repeat, fn)
    gc.freeze()
    for label, fn in scenarios:
        print(f"  {label:<50} {results[label]:>14,.0f} {n / best_of(args.repeat, fn):>14,.0f}")

    # apply_delta / read_features for scale: one batch's deltas into existing states
    states: dict[str, EntityState] = {}
    for batch in batches[:-1]:
        for entity, delta in build_deltas(full, batch).items():
            states[entity] = apply_delta(full, states.get(entity), delta)
    deltas = build_deltas(full, batches[-1])
    seconds = best_of(
        args.repeat,
        lambda: [apply_delta(full, states.get(e), d) for e, d in deltas.items()],
    )
    per_delta = seconds / len(deltas) * 1e6
    print(f"  apply_delta   (full group, {len(deltas):,} deltas)  {per_delta:>9.1f} us/delta")
    now = stream[-1].event_time_ms
    seconds = best_of(args.repeat, lambda: [read_features(full, s, now) for s in states.values()])
    per_read = seconds / len(states) * 1e6
    print(f"  read_features (full group, 30 features)      {per_read:>9.1f} us/read")


if __name__ == "__main__":
    main()
