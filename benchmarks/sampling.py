"""What the load generator reads off a measurement: percentiles and CPU seconds."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Sequence

__all__ = ["CLOCK_TICKS", "PERCENTILES", "cpu_seconds", "percentiles", "self_cpu"]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentiles(
    values_ns: Sequence[int], points: Sequence[float] = PERCENTILES
) -> dict[str, float]:
    """Nearest-rank percentiles of *values_ns*, in microseconds, keyed ``p50``, ``p99.9``…"""
    ordered = sorted(values_ns)
    out: dict[str, float] = {}
    for point in points:
        key = f"p{point:g}"
        if not ordered:
            out[key] = math.nan
            continue
        rank = max(1, math.ceil(point / 100.0 * len(ordered)))
        out[key] = ordered[rank - 1] / 1000.0
    if ordered:
        out["mean"] = sum(ordered) / len(ordered) / 1000.0
        out["max"] = ordered[-1] / 1000.0
    return out


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """utime + stime of each pid still alive, in seconds (``/proc/<pid>/stat``)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        out[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
