"""Latency statistics computed the way trtexec computes them, so figures compare.

From TensorRT's ``samples/common/sampleReporting.cpp`` (v10.3.0; the same in v11.1):

- percentile p: sort ascending, ``exclude = int((1 - p/100) * N)`` in float32, take
  ``sorted[max(N - 1 - exclude, 0)]`` (nearest rank, no interpolation);
- median: the middle value, or the mean of the two middle values for even N;
- coefficient of variation: population standard deviation / mean, in percent;
- throughput: queries over the host walltime from the first kept start to the last end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from edgedb.errors import InvalidInputError

PERCENTILES = (90.0, 95.0, 99.0)


def percentile(values: Sequence[float], p: float) -> float:
    """trtexec's nearest-rank percentile of ``values`` (any order)."""
    if not 0.0 <= p <= 100.0:
        raise InvalidInputError(f"percentile must be in [0, 100], not {p}")
    ordered = sorted(values)
    if not ordered:
        return math.inf
    # In float32, as trtexec's C++ does: in float64, (1 - 90/100) * 100 is 9.999... -> 9.
    exclude = int((np.float32(1) - np.float32(p) / np.float32(100)) * np.float32(len(ordered)))
    return ordered[max(len(ordered) - 1 - exclude, 0)]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.inf
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Population std / mean x 100 (0 for no values, inf for a zero mean)."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    if mean == 0:
        return math.inf
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return math.sqrt(variance) / mean * 100.0


@dataclass(frozen=True)
class Summary:
    """min / max / mean / median / percentiles of one series, in milliseconds."""

    count: int
    min: float
    max: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    cov_percent: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> "Summary":
        values = list(values_ms)
        if not values:
            return cls(0, *([math.nan] * 7), 0.0)
        return cls(
            count=len(values), min=min(values), max=max(values), mean=sum(values) / len(values),
            median=median(values), p90=percentile(values, 90), p95=percentile(values, 95),
            p99=percentile(values, 99), cov_percent=coefficient_of_variation(values),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"min = {self.min:.3f} ms, max = {self.max:.3f} ms, mean = {self.mean:.3f} ms, "
                f"median = {self.median:.3f} ms, percentile(90%) = {self.p90:.3f} ms, "
                f"percentile(95%) = {self.p95:.3f} ms, percentile(99%) = {self.p99:.3f} ms")


def throughput(count: int, first_start: float, last_end: float) -> float:
    """Queries per second over the walltime from the first start to the last end (seconds)."""
    walltime = last_end - first_start
    return count / walltime if walltime > 0 else math.inf
