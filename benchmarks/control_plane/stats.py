"""Small statistics of the control-plane benchmark: percentiles, ms, median timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max (nearest rank) of *values*, in the unit they came in."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, round(p / 100.0 * len(ordered) + 0.5) - 1))
        return ordered[index]

    return {
        "count": len(ordered),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times: list[float] = []
    out: object = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out
