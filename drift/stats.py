"""Summary statistics carried by alerts and exposed by monitors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stats:
    """Mean, sample standard deviation and count of some values (raw units)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """Two-pass mean and sd (``n - 1`` denominator; 0 for fewer than two values)."""
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = math.fsum(values) / n
        if n == 1:
            return cls(mean, 0.0, 1)
        var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
        return cls(mean, math.sqrt(var), n)

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN (no values) becomes ``None``."""
        return {
            "mean": self.mean if math.isfinite(self.mean) else None,
            "std": self.std if math.isfinite(self.std) else None,
            "n": self.n,
        }
