"""The issue's targets (:data:`TARGETS`), and the headline figures of a run beside them.

:func:`measure_targets` collects the figures of mode (c) against the baselines that the
projection and the JSON summary carry; :mod:`benchmarks.report.checks` judges every target
row by row, for each library mode and caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.report.stats import median

__all__ = ["ISSUE", "TARGET", "TARGETS", "Target", "measure_targets", "pair_factor"]

ISSUE = 12


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's performance targets: a limit on one kind of figure of a run.

    Attributes:
        key: names the figure (see :mod:`benchmarks.report.checks`).
        limit: the bound, in *unit*.
        unit: ``µs``, ``x`` (a factor), ``MiB`` or ``""`` (a fraction).
        at_most: met when the figure is ≤ *limit* (else when it is ≥ *limit*).
        text: the row's wording.
    """

    key: str
    limit: float
    unit: str
    at_most: bool
    text: str


# Issue 12, "Performance it must reach": the one definition every row and verdict reads.
TARGETS: tuple[Target, ...] = (
    Target(
        "added_p50_us", 50, "µs", True,
        "library adds ≤ 50 µs p50 over direct mTLS of the same flavour",
    ),
    Target(
        "added_p99_us", 100, "µs", True,
        "library adds ≤ 100 µs p99 over direct mTLS of the same flavour",
    ),
    Target(
        "pair_factor_p50", 8, "x", False,
        "the Envoy pair adds ≥ 8x what the library adds, p50 (same run, same caller)",
    ),
    Target(
        "pair_factor_p99", 8, "x", False,
        "the Envoy pair adds ≥ 8x what the library adds, p99 (same run, same caller)",
    ),
    Target(
        "cpu_fraction", 0.25, "", True,
        "library's extra CPU/1k over direct mTLS ≤ ¼ of the two sidecars' (agents + Envoys)",
    ),
    Target(
        "extra_rss_mib", 12, "MiB", True,
        "RSS of a meshed instance over the bare app ≤ 12 MiB",
    ),
    Target(
        "open_loop_p99_us", 150, "µs", True,
        "open loop at a fixed rate: library p99 within 150 µs of direct mTLS",
    ),
)  # fmt: skip
TARGET = {target.key: target for target in TARGETS}


def pair_factor(lib_v: float | None, pair_v: float | None) -> float | None:
    """How many times the library's added latency the pair's is (None within the noise)."""
    # A difference at or below zero is within the noise: no meaningful ratio.
    if lib_v is None or pair_v is None or pair_v <= 0:
        return None
    return math.inf if lib_v <= 0 else pair_v / lib_v


def _one_hop_async(
    added: dict[str, dict[str, Any]], lib: str, pair: str, over: str
) -> dict[str, Any]:
    """The async one-hop caller's added latencies over the baseline's async caller."""
    lib_added = {k: median(added[lib][over]["direct_async_us"][k]) for k in ("p50", "p99")}
    out: dict[str, Any] = {"library_added_us": lib_added}
    if pair in added and over in added[pair]:
        pair_added = {k: median(added[pair][over]["direct_async_us"][k]) for k in ("p50", "p99")}
        out["pair_added_us"] = pair_added
        out["pair_over_library_added_factor"] = {
            k: pair_factor(lib_added[k], pair_added[k]) for k in ("p50", "p99")
        }
    return out


def measure_targets(summary: dict[str, Any], protocol: str) -> dict[str, Any]:
    """Mode (c)'s headline figures for *protocol* over its baselines, and the pair's."""
    modes, added = summary["modes"], summary["added"]
    lib, pair, base_b = f"{protocol}-c", f"{protocol}-d", f"{protocol}-b"
    rate = summary["headline_rate"].get(protocol)
    out: dict[str, Any] = {"headline_rate": rate}
    if lib not in modes:
        return out
    over = "over_b" if base_b in modes else "over_a"
    out["latency_baseline"] = base_b if over == "over_b" else f"{protocol}-a"
    # The issue's method: one sequential caller straight through the hop (two-hop
    # topology differences when the one-hop probe is missing, as for gRPC).
    source = (
        "direct_us"
        if median(added[lib][over]["direct_us"]["p50"]) is not None
        else ("sequential_us")
    )
    out["latency_source"] = "one hop" if source == "direct_us" else "frontend + hop"
    lib_added = added[lib][over][source]
    out["library_added_sequential_us"] = {k: median(lib_added[k]) for k in ("p50", "p99")}
    if median(added[lib][over].get("direct_async_us", {}).get("p50")) is not None:
        out["one_hop_async"] = _one_hop_async(added, lib, pair, over)
    if rate is not None:
        lib_rate = added[lib][over]["rates_us"][f"{rate:g}"]
        out["library_added_at_rate_us"] = {k: median(lib_rate[k]) for k in ("p50", "p99")}
    if pair in modes:
        pair_added = added[pair][over][source]
        out["pair_added_sequential_us"] = {k: median(pair_added[k]) for k in ("p50", "p99")}
        out["pair_added_over_plain_sequential_us"] = {
            k: median(added[pair]["over_a"][source][k]) for k in ("p50", "p99")
        } if "over_a" in added[pair] else None  # fmt: skip
        out["pair_over_library_added_factor"] = {
            k: pair_factor(
                out["library_added_sequential_us"][k], out["pair_added_sequential_us"][k]
            )
            for k in ("p50", "p99")
        }
        if rate is not None:
            pair_rate = added[pair][over]["rates_us"][f"{rate:g}"]
            out["pair_added_at_rate_us"] = {k: median(pair_rate[k]) for k in ("p50", "p99")}
    a_mode = f"{protocol}-a"
    if rate is not None and a_mode in modes:
        lib_cpu = median(added[lib]["over_a"]["cpu_ms_per_1k"][f"{rate:g}"])
        out["library_extra_cpu_ms_per_1k"] = lib_cpu
        if pair in modes:
            pair_cpu = median(modes[pair]["rates"][f"{rate:g}"]["sidecar_cpu_ms_per_1k"])
            out["pair_sidecar_cpu_ms_per_1k"] = pair_cpu
            out["pair_envoy_cpu_ms_per_1k"] = median(
                modes[pair]["rates"][f"{rate:g}"]["envoy_cpu_ms_per_1k"]
            )
            out["pair_extra_cpu_ms_per_1k"] = median(
                added[pair]["over_a"]["cpu_ms_per_1k"][f"{rate:g}"]
            )
            out["library_cpu_fraction_of_pair"] = (
                None if lib_cpu is None or not pair_cpu else lib_cpu / pair_cpu
            )
    if a_mode in modes:
        out["library_extra_rss_mib"] = {
            n: median(added[lib]["over_a"]["rss_mib"][n]) for n in ("frontend", "backend")
        }
        if pair in modes:
            out["sidecar_rss_mib"] = {
                n: median(modes[pair]["memory"][n]["sidecar_rss_mib"])
                for n in ("frontend", "backend")
            }
            out["envoy_rss_mib"] = {
                n: median(modes[pair]["memory"][n]["envoy_rss_mib"])
                for n in ("frontend", "backend")
            }
    return out
