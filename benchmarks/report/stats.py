"""The figures every part of the report shares: percentile keys, ``stat`` and its median."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

__all__ = ["CALLERS", "MIB", "PKEYS", "PROBES", "Stat", "median", "mode_order", "per_1k_ms", "stat"]

PKEYS = ("p50", "p90", "p99", "p99.9")
MIB = 1024.0
# The one-hop probe's callers: summary key -> raw run key (benchmarks.sequential.one_hop).
PROBES = {"direct": "sequential_direct", "direct_async": "sequential_direct_async"}
CALLERS = {"direct": "sync", "direct_async": "async"}

Stat = dict[str, float]


def stat(values: Iterable[float | None]) -> Stat | None:
    """Median, min, max and count of the finite *values* (None when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return {
        "median": statistics.median(finite),
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


def per_1k_ms(seconds: float, completed: int) -> float | None:
    return seconds / completed * 1e6 if completed else None


def median(value: Stat | None) -> float | None:
    return None if value is None else value["median"]


def mode_order(mode: str) -> tuple[int, str]:
    protocol, key = mode.split("-")
    return (0 if protocol == "http" else 1, key)
