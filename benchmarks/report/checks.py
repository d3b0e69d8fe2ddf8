"""Each of the issue's targets judged on one run: a row per library mode, caller and figure.

A check reads one figure of the summary (the median over the repeats of a paired
difference), compares it with its :class:`~benchmarks.report.targets.Target`'s limit and
says whether it is met and by how much: ``margin`` is how far the figure is on the right
side of the limit (negative: how far it is on the wrong side), in the target's unit.
Library modes: (c), metrics on and tracing off, and (e), with an SDK tracer.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.report.stats import median
from benchmarks.report.targets import TARGET, pair_factor

__all__ = ["LIBRARY_MODES", "check_targets"]

LIBRARY_MODES = ("c", "e")
# Summary key of each caller's added latency -> how a row names it.
CALLERS = {
    "direct_us": "sync caller, one hop",
    "direct_async_us": "async caller, one hop",
    "sequential_us": "sequential caller, frontend + hop",
}

Check = dict[str, Any]


def _check(key: str, mode: str, where: str, measured: float | None, detail: str = "") -> Check:
    target = TARGET[key]
    met = margin = None
    if measured is not None:
        margin = target.limit - measured if target.at_most else measured - target.limit
        met = margin >= 0
        if math.isinf(margin):
            margin = None
    return {
        "target": key,
        "mode": mode,
        "where": where,
        "measured": measured,
        "limit": target.limit,
        "met": met,
        "margin": margin,
        "detail": detail,
    }


def _sources(entry: dict[str, Any]) -> list[str]:
    """The callers with a measured added latency: the one-hop probe's, else via frontend."""
    one_hop = [k for k in ("direct_us", "direct_async_us") if median(entry[k]["p50"]) is not None]
    return one_hop or ["sequential_us"]


def _latency(added: dict[str, Any], lib: str, pair: str, over: str) -> list[Check]:
    checks = []
    for source in _sources(added[lib][over]):
        where = CALLERS[source]
        lib_added = {k: median(added[lib][over][source][k]) for k in ("p50", "p99")}
        for k in ("p50", "p99"):
            checks.append(_check(f"added_{k}_us", lib, where, lib_added[k]))
        if pair not in added or over not in added[pair]:
            continue
        for k in ("p50", "p99"):
            pair_added = median(added[pair][over][source][k])
            factor = pair_factor(lib_added[k], pair_added)
            limit = TARGET[f"pair_factor_{k}"].limit
            budget = None if pair_added is None else pair_added / limit
            detail = (
                "pair adds ≤ 0 (within the noise)"
                if factor is None
                else f"pair adds {pair_added:,.0f} µs; needs library ≤ {budget:,.0f} µs"
            )
            checks.append(_check(f"pair_factor_{k}", lib, where, factor, detail))
    return checks


def _cpu(summary: dict[str, Any], lib: str, pair: str, over: str, rate: float) -> list[Check]:
    modes, added = summary["modes"], summary["added"]
    extra = median(added[lib][over]["cpu_ms_per_1k"][f"{rate:g}"])
    sidecars = (
        median(modes[pair]["rates"][f"{rate:g}"]["sidecar_cpu_ms_per_1k"])
        if pair in modes
        else None
    )
    if extra is None or not sidecars:
        return [_check("cpu_fraction", lib, f"at {rate:g}/s", None)]
    limit = TARGET["cpu_fraction"].limit
    spent = f"library {extra:,.0f}" if extra > 0 else "library ≤ 0 over direct mTLS"
    detail = f"{spent}, sidecars {sidecars:,.0f} ms/1k; needs library ≤ {sidecars * limit:,.0f}"
    return [_check("cpu_fraction", lib, f"at {rate:g}/s", extra / sidecars, detail)]


def _rss(added: dict[str, Any], lib: str) -> list[Check]:
    if "over_a" not in added[lib]:
        return []
    rows = []
    for instance, role in (("frontend", "caller"), ("backend", "server")):
        extra = median(added[lib]["over_a"]["rss_mib"][instance])
        rows.append(_check("extra_rss_mib", lib, f"{instance} ({role})", extra))
    return rows


def _open_loop(summary: dict[str, Any], lib: str, over: str) -> list[Check]:
    rows = []
    for rate, entry in summary["added"][lib][over]["rates_us"].items():
        sustained = summary["modes"][lib]["rates"][rate]["sustained"]
        detail = "" if sustained else "the library mode did not sustain this rate"
        rows.append(_check("open_loop_p99_us", lib, f"{rate}/s", median(entry["p99"]), detail))
    return rows


def check_targets(summary: dict[str, Any], protocol: str) -> list[Check]:
    """Every target row for *protocol*'s library modes in *summary* (empty without them).

    Latency and the open loop are over direct mTLS (b), or plain (a) when (b) did not
    run; CPU at the headline rate over (b) against mode (d)'s sidecars; RSS over (a).
    """
    modes, added = summary["modes"], summary["added"]
    pair, base_b = f"{protocol}-d", f"{protocol}-b"
    rate = summary["headline_rate"].get(protocol)
    checks: list[Check] = []
    for key in LIBRARY_MODES:
        lib = f"{protocol}-{key}"
        if lib not in modes or lib not in added:
            continue
        over = "over_b" if base_b in modes else "over_a"
        checks += _latency(added, lib, pair, over)
        if rate is not None:
            checks += _cpu(summary, lib, pair, over, rate)
        checks += _rss(added, lib)
        checks += _open_loop(summary, lib, over)
    return checks
