"""Small, pure statistics for the harness: percentiles and repeat summaries."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """A measurement repeated: the median, with min and max to show the noise."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, unit: str = "", digits: int = 2) -> str:
        return (f"{self.median:.{digits}f}{unit} "
                f"({self.low:.{digits}f}-{self.high:.{digits}f}, n={self.runs})")


def ratios(measured: Sequence[float], baseline: Sequence[float]) -> Summary:
    """Per-repetition ratios measured/baseline (each pair from the same round,
    so slow moments of a shared machine hit both sides alike)."""
    return Summary.of([m / b for m, b in zip(measured, baseline, strict=True) if b > 0])
