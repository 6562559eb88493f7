"""Drift monitor quality: false alarms and detection delays of the defaults, seeded.

    python bench/drift_quality.py            # full run (see RESULTS for its runtime)
    python bench/drift_quality.py --quick    # a coarse pass in well under a minute

One process, one core.  For every configuration below it measures:

* **false alarms** on stationary, independent streams of three shapes:
  N(0, 1), Student-t with 3 degrees of freedom, lognormal(0, 1).  Each stream
  is ``warmup`` values (1,000) followed by 100,000 monitored values; the full
  run uses 10 streams per shape (1M values, so zero alarms bound the rate
  below 0.30 per 100k at 95 %).  A false alarm is an *incident opened*; River's
  raw detectors have no incidents, so for them every detection counts.
* **detection delay**: values after the change until the first alarm, median
  and 90th percentile over 200 trials per case (``--trials``).  Each trial is
  the warm-up, then 500-2,000 stationary values (uniform, so no detector can
  profit from a fixed phase), then the changed stream:

      mean +1 sd     x + sd              mean +0.5 sd   x + 0.5 sd
      sd x2          mean + 2 (x - mean) (same mean, doubled spread)

  "sd" and "mean" are the distribution's own (t3: sd = sqrt(3)).  A trial
  without an alarm within 3,000 values counts as 3,000 and as a miss; a trial
  whose monitor opened an incident *before* the change is dropped and counted
  (River's raw detectors restart after each detection: for them the first
  detection at or after the change counts).

Configurations: the default monitor (``DEFAULT_DETECTORS``), each detector on
its own (with its default parameters), and, for reference, River's raw
``ADWIN()`` and ``PageHinkley()`` on the raw values (no warm-up needed, no
scores: their alarms are counted from the same index as ours).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
from river import drift as river_drift

from drift import DEFAULT_DETECTORS, DETECTORS, Monitor, MonitorConfig

WARMUP = 1000
HORIZON = 3000


@dataclass(frozen=True)
class Shape:
    name: str
    mean: float
    sd: float
    draw: Callable[[np.random.Generator, int], np.ndarray]


SHAPES = [
    Shape("normal", 0.0, 1.0, lambda rng, n: rng.standard_normal(n)),
    Shape("t(3)", 0.0, math.sqrt(3.0), lambda rng, n: rng.standard_t(3, n)),
    Shape(
        "lognormal",
        math.exp(0.5),
        math.sqrt((math.e - 1) * math.e),
        lambda rng, n: rng.lognormal(0.0, 1.0, n),
    ),
]

CHANGES: dict[str, Callable[[np.ndarray, Shape], np.ndarray]] = {
    "mean +1 sd": lambda x, s: x + s.sd,
    "mean +0.5 sd": lambda x, s: x + 0.5 * s.sd,
    "sd x2": lambda x, s: s.mean + 2.0 * (x - s.mean),
}
TARGETS = {"mean +1 sd": 100, "mean +0.5 sd": 300, "sd x2": 300}


# -- the systems under test: alarm indices of one stream --------------------------


def ours(detectors: tuple[str, ...]) -> Callable[[list[float], int], list[int]]:
    config = MonitorConfig.from_config(
        {"name": "bench", "source": "bench", "field": "x", "detectors": list(detectors)}
    )

    def alarms(values: list[float], stop_after: int) -> list[int]:
        """Indices of ``opened`` alerts; stops at the first one at or after ``stop_after``."""
        monitor = Monitor(config)
        update = monitor.update
        out = []
        for i, value in enumerate(values):
            alerts = update(value, event_time_ms=i)
            if alerts and alerts[0].kind == "opened":
                out.append(i)
                if i >= stop_after:
                    break
        return out

    alarms.incidents = True  # type: ignore[attr-defined]
    return alarms


def river_raw(factory: Callable[[], object]) -> Callable[[list[float], int], list[int]]:
    def alarms(values: list[float], stop_after: int) -> list[int]:
        detector = factory()
        update = detector.update  # type: ignore[attr-defined]
        out = []
        for i, value in enumerate(values):
            update(value)
            if detector.drift_detected and i >= WARMUP:  # type: ignore[attr-defined]
                out.append(i)
                if i >= stop_after:
                    break
        return out

    return alarms


def systems() -> dict[str, Callable[[list[float], int], list[int]]]:
    out = {f"default ({' + '.join(DEFAULT_DETECTORS)})": ours(DEFAULT_DETECTORS)}
    for name in DETECTORS:
        out[name] = ours((name,))
    out["River ADWIN() raw"] = river_raw(river_drift.ADWIN)
    out["River PageHinkley() raw"] = river_raw(river_drift.PageHinkley)
    return out


# -- measurements ---------------------------------------------------------------------


def false_alarms(system: Callable[[list[float], int], list[int]], shape: Shape, streams: int, seed: int) -> int:
    count = 0
    for k in range(streams):
        rng = np.random.default_rng([seed, 1, SHAPES.index(shape), k])
        values = shape.draw(rng, WARMUP + 100_000).tolist()
        count += len(system(values, len(values)))
    return count


def delays(
    system: Callable[[list[float], int], list[int]],
    shape: Shape,
    change: str,
    trials: int,
    seed: int,
) -> tuple[list[int], int, int]:
    """Delays of the trials kept, misses among them, trials dropped (alarm before the change)."""
    out: list[int] = []
    misses = dropped = 0
    for k in range(trials):
        rng = np.random.default_rng([seed, 2, SHAPES.index(shape), list(CHANGES).index(change), k])
        at = WARMUP + int(rng.integers(500, 2001))
        values = shape.draw(rng, at + HORIZON)
        values[at:] = CHANGES[change](values[at:], shape)
        alarms = system(values.tolist(), at)
        if getattr(system, "incidents", False) and any(i < at for i in alarms):
            dropped += 1
            continue
        after = [i for i in alarms if i >= at]
        if after:
            out.append(after[0] - at + 1)
        else:
            out.append(HORIZON)
            misses += 1
    return out, misses, dropped


def poisson_upper(k: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a Poisson mean after observing k events."""
    lo, hi = float(k), float(k) + 10.0 * math.sqrt(k + 1) + 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        cdf = math.fsum(math.exp(-mid + i * math.log(mid) - math.lgamma(i + 1)) for i in range(k + 1))
        lo, hi = (mid, hi) if cdf > 1 - confidence else (lo, mid)
    return hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 streams per shape, 50 trials")
    parser.add_argument("--streams", type=int, default=10, help="100k-value streams per shape")
    parser.add_argument("--trials", type=int, default=200, help="trials per change and shape")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--only", help="substring of the configurations to run")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.trials = 2, 50

    started = time.perf_counter()
    runs = {k: v for k, v in systems().items() if not args.only or args.only in k}
    fa_rows = []
    delay_rows = []
    for name, system in runs.items():
        t0 = time.perf_counter()
        counts = [false_alarms(system, shape, args.streams, args.seed) for shape in SHAPES]
        n = args.streams * 100_000
        total = sum(counts)
        cells = [f"{c / n * 1e5:.2f} ({c})" for c in counts]
        bound = poisson_upper(total) / (n * len(SHAPES)) * 1e5
        fa_rows.append(f"| {name} | " + " | ".join(cells) + f" | {total / (n * 3) * 1e5:.2f} | {bound:.2f} |")
        for shape in SHAPES:
            cells = []
            for change in CHANGES:
                d, misses, dropped = delays(system, shape, change, args.trials, args.seed)
                med, p90 = np.percentile(d, 50), np.percentile(d, 90)
                flag = "" if med <= TARGETS[change] else " ✗"
                extra = "".join(
                    [f", {misses} missed" if misses else "", f", {dropped} dropped" if dropped else ""]
                )
                cells.append(f"{med:.0f} / {p90:.0f}{flag}{extra}")
            delay_rows.append(f"| {name} | {shape.name} | " + " | ".join(cells) + " |")
        print(f"  {name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)

    n = args.streams * 100_000
    print(f"\nFalse alarms per 100k values ({args.streams} x 100k values per shape after a "
          f"{WARMUP}-value warm-up; count in brackets; bound: one-sided 95 % upper bound over all shapes)\n")
    print("| configuration | normal | t(3) | lognormal | all | 95 % bound |")
    print("|---|---|---|---|---|---|")
    print("\n".join(fa_rows))
    print(f"\nDetection delay, values after the change: median / p90 ({args.trials} trials per cell; "
          f"✗: median above target {TARGETS})\n")
    print("| configuration | shape | " + " | ".join(CHANGES) + " |")
    print("|---|---|" + "---|" * len(CHANGES))
    print("\n".join(delay_rows))
    print(f"\n{n * 3 * len(runs):,} stationary values and {args.trials * 9 * len(runs):,} change trials "
          f"in {time.perf_counter() - started:.0f}s (seed {args.seed})")


if __name__ == "__main__":
    main()
