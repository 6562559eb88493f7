"""Seeded test streams built on ``random.random()`` only, and a feeding helper.

Python guarantees that ``random.Random(seed).random()`` gives the same
sequence in every version, but not ``gauss``; normals are therefore drawn
by inverting the normal CDF, so the exact detection indices asserted in the
tests stay valid across Python versions.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist

from driftline.drift import Alert, Monitor, MonitorConfig

_PPF = NormalDist().inv_cdf


def normal(seed: int, n: int, mean: float = 0.0, sd: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [mean + sd * _PPF(1.0 - rng.random()) for _ in range(n)]  # 1 - u is in (0, 1]


def lognormal(seed: int, n: int) -> list[float]:
    return [math.exp(z) for z in normal(seed, n)]


def student_t3(seed: int, n: int) -> list[float]:
    z = normal(seed, 4 * n)
    return [
        z[4 * i] / math.sqrt((z[4 * i + 1] ** 2 + z[4 * i + 2] ** 2 + z[4 * i + 3] ** 2) / 3)
        for i in range(n)
    ]


def shifted(values: list[float], at: int, shift: float = 0.0, scale: float = 1.0) -> list[float]:
    """``values`` with ``x -> shift + scale * x`` applied from index ``at`` on."""
    return values[:at] + [shift + scale * x for x in values[at:]]


def make_config(**overrides: object) -> MonitorConfig:
    return MonitorConfig.from_config(
        {"name": "amount", "source": "tx", "field": "amount", **overrides}
    )


def feed(monitor: Monitor, values: list[float], start: int = 0) -> list[tuple[int, Alert]]:
    """Feed ``values`` (value ``i`` has event time ``1000 * i`` and offset ``i``)."""
    out: list[tuple[int, Alert]] = []
    for i, value in enumerate(values[start:], start=start):
        out.extend((i, alert) for alert in monitor.update(value, event_time_ms=1000 * i, offset=i))
    return out
