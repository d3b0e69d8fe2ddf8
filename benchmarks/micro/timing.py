"""Timing loops of the micro-benchmark: ns per call (sync, async) and latency summaries."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks.micro.settings import Profile


def _summary(samples_ns: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    quart = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "median_ns": round(statistics.median(ordered), 1),
        "min_ns": round(ordered[0], 1),
        "max_ns": round(ordered[-1], 1),
        "iqr_ns": round(quart[2] - quart[0], 1),
        "repeats": len(ordered),
    }


def time_sync(
    fn: Callable[[], object], profile: Profile, *, overhead: float = 0.0
) -> dict[str, Any]:
    """ns per call of *fn*: median (and spread) over repeats of a fixed number of calls."""
    n = profile.iterations
    for _ in range(min(n, 200)):
        fn()
    per_call: list[float] = []
    cap = time.perf_counter() + profile.item_time_cap
    for _ in range(profile.repeats):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter_ns() - start) / n - overhead)
        if time.perf_counter() > cap:
            break
    return {**_summary(per_call), "iterations": n}


def time_async(
    fn: Callable[[], Awaitable[object]], profile: Profile, *, overhead: float = 0.0
) -> dict[str, Any]:
    """As :func:`time_sync` for a coroutine function, awaited in one event loop."""

    async def body() -> list[float]:
        n = profile.iterations
        for _ in range(min(n, 200)):
            await fn()
        out: list[float] = []
        cap = time.perf_counter() + profile.item_time_cap
        for _ in range(profile.repeats):
            start = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            out.append((time.perf_counter_ns() - start) / n - overhead)
            if time.perf_counter() > cap:
                break
        return out

    return {**_summary(asyncio.run(body())), "iterations": profile.iterations}


def lat_us(samples_ns: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {
        "count": n,
        "p50_us": round(ordered[n // 2] / 1000, 1),
        "p99_us": round(ordered[min(n - 1, int(n * 0.99))] / 1000, 1),
        "mean_us": round(statistics.fmean(ordered) / 1000, 1),
    }
