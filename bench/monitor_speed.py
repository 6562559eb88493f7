"""CPU per value of one drift monitor, by statistics watched, batch-fed and one by one.

    python bench/monitor_speed.py [--values 300000] [--repeat 3]

A stationary normal stream (no incident opens after the warm-up, the usual
case) fed to a fresh :class:`~driftline.drift.Monitor` with both default
detectors (Page-Hinkley and ADWIN):

* ``update_many``, the worker's path, watching location and scale (the
  default: four detector updates per value), then location only (two);
* ``update`` one value at a time, location and scale, for comparison.

Best of ``--repeat``, microseconds per value.  Pure: no broker, no Redis.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftline.drift import Monitor, MonitorConfig


def config(statistics: list[str]) -> MonitorConfig:
    return MonitorConfig.from_config(
        {
            "name": "amount",
            "source": "tx",
            "field": "amount",
            "statistics": statistics,
            "accept_after": None,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--values", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.values < 2_000 or args.repeat < 1:
        ap.error("--values must be at least 2,000 and --repeat at least 1")
    rng = random.Random(3)
    samples = [(i, 1000 * i, rng.gauss(100.0, 10.0), None) for i in range(args.values)]
    gc.freeze()  # the input is not the monitor's garbage

    def best(statistics: list[str], batched: bool) -> float:
        seconds = float("inf")
        for _ in range(args.repeat):
            monitor = Monitor(config(statistics))
            t0 = time.perf_counter()
            if batched:
                monitor.update_many(samples)
            else:
                for offset, t, x, _ in samples:
                    monitor.update(x, event_time_ms=t, offset=offset)
            seconds = min(seconds, time.perf_counter() - t0)
        return seconds / len(samples) * 1e6

    print(f"{args.values:,} values, best of {args.repeat}, us per value")
    print(f"  update_many, location + scale (default)  {best(['location', 'scale'], True):6.2f}")
    print(f"  update_many, location only               {best(['location'], True):6.2f}")
    print(f"  update one by one, location + scale      {best(['location', 'scale'], False):6.2f}")


if __name__ == "__main__":
    main()
