"""From raw runs to the summary, the Markdown tables and the PNG plots.

Every figure is the median over the repeats, with the spread as min-max. Differences
between modes ("added latency", "extra CPU", "extra RSS") are paired: computed within each
repeat (the modes of one repeat ran back to back), then summarised over the repeats.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "summarise", "update_docs", "write_outputs"]

PKEYS = ("p50", "p90", "p99", "p99.9")
MIB = 1024.0
# The one-hop probe's callers: summary key -> raw run key (benchmarks.sequential.one_hop).
PROBES = {"direct": "sequential_direct", "direct_async": "sequential_direct_async"}
CALLERS = {"direct": "sync", "direct_async": "async"}

TARGETS: dict[str, Any] = {
    "issue_sequential_us": {
        "plain": {"p50": 343, "p99": 781},
        "direct mTLS": {"p50": 399, "p99": 808},
        "Envoy pair": {"p50": 854, "p99": 1627},
    },
    "envoy_pair_added_at_1000_us": {"p50": 531, "p99": 956},
    "envoy_pair_cpu_ms_per_1k": 369,
    "envoy_sidecar_rss_mib": 67,
    "library_added_over_mtls_us": {"p50": 80, "p99": 200},
    "library_vs_envoy_added_latency_factor": 5,
    "library_cpu_fraction_of_pair": 0.25,
    "library_extra_rss_mib": 10,
    "propagation_p99_s_1000_watchers": 1.0,
}

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


def _per_1k_ms(seconds: float, completed: int) -> float | None:
    return seconds / completed * 1e6 if completed else None


def _sustained(phase: dict[str, Any]) -> bool:
    return bool(
        phase["incomplete"] == 0
        and phase["errors"] == 0
        and phase["completed"] >= 0.97 * phase["intended"]
        and phase["throughput"] >= 0.95 * phase["rate"]
    )


def _order(mode: str) -> tuple[int, str]:
    protocol, key = mode.split("-")
    return (0 if protocol == "http" else 1, key)


def _runs_by_mode(document: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in document["runs"]:
        out.setdefault(run["mode"], {})[run["repeat"]] = run
    return out


def _mode_summary(runs: list[dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {"runs": len(runs)}
    summary["sequential"] = {
        k: stat(r["sequential"]["latency_us"][k] for r in runs) for k in (*PKEYS, "mean")
    }
    summary["sequential_errors"] = sum(r["sequential"]["errors"] for r in runs)
    for name, field in PROBES.items():  # the one-hop probe's sync and async callers
        probes = [r[field] for r in runs if field in r]
        if probes:
            summary[name] = {k: stat(d["latency_us"][k] for d in probes) for k in (*PKEYS, "mean")}
            summary[f"{name}_errors"] = sum(d["errors"] for d in probes)
    per_rate: dict[str, Any] = {}
    for i, rate in enumerate(rates):
        phases = [r["rates"][i] for r in runs if len(r["rates"]) > i]
        per_rate[f"{rate:g}"] = {
            "latency_us": {k: stat(p["latency_us"][k] for p in phases) for k in PKEYS},
            "throughput": stat(p["throughput"] for p in phases),
            "cpu_ms_per_1k": stat(_per_1k_ms(p["cpu"]["total"], p["completed"]) for p in phases),
            "sidecar_cpu_ms_per_1k": stat(
                _per_1k_ms(p["cpu"]["sidecars"], p["completed"]) for p in phases
            ),
            "envoy_cpu_ms_per_1k": stat(
                _per_1k_ms(p["cpu"].get("envoys", 0.0), p["completed"]) for p in phases
            ),
            "frontend_cpu_ms_per_1k": stat(
                _per_1k_ms(p["cpu"]["frontend"], p["completed"]) for p in phases
            ),
            "backend_cpu_ms_per_1k": stat(
                _per_1k_ms(p["cpu"]["backend"], p["completed"]) for p in phases
            ),
            "send_lag_us": {k: stat(p["send_lag_us"][k] for p in phases) for k in ("p50", "p99")},
            "loadgen_cpu_ms_per_1k": stat(
                _per_1k_ms(p["loadgen_cpu_s"], p["completed"]) for p in phases
            ),
            "completed": sum(p["completed"] for p in phases),
            "errors": sum(p["errors"] for p in phases),
            "incomplete": sum(p["incomplete"] for p in phases),
            "sustained": all(_sustained(p) for p in phases) and bool(phases),
        }
    summary["rates"] = per_rate
    sat = [r["saturation"] for r in runs]
    summary["saturation"] = {
        "throughput": stat(s["throughput"] for s in sat),
        "cpu_ms_per_1k": stat(_per_1k_ms(s["cpu"]["total"], s["completed"]) for s in sat),
        "latency_us": {k: stat(s["latency_us"][k] for s in sat) for k in ("p50", "p99")},
        "errors": sum(s["errors"] for s in sat),
    }
    memory: dict[str, Any] = {}
    for instance in ("frontend", "backend"):
        rows = [r["memory"][instance] for r in runs]
        memory[instance] = {
            "rss_mib": stat(m["rss_kib"] / MIB for m in rows),
            "app_rss_mib": stat(m["app_rss_kib"] / MIB for m in rows),
            "sidecar_rss_mib": stat(m["sidecar_rss_kib"] / MIB for m in rows),
            "envoy_rss_mib": stat(
                sum(p["rss_kib"] for p in m["processes"] if p["comm"] == "envoy") / MIB
                for m in rows
            ),
            "pss_mib": stat(m["pss_kib"] / MIB for m in rows),
            "processes": len(rows[-1]["processes"]) if rows else 0,
        }
    summary["memory"] = memory
    spans = [
        sum(s.get("spans_exported", 0) for s in r.get("exit_stats", {}).values()) for r in runs
    ]
    summary["spans_exported"] = stat(spans)
    return summary


def _paired(
    by_mode: dict[str, dict[int, dict[str, Any]]],
    mode: str,
    base: str,
    value: Callable[[dict[str, Any]], float | None],
) -> Stat | None:
    diffs = []
    for repeat, run in by_mode.get(mode, {}).items():
        other = by_mode.get(base, {}).get(repeat)
        if other is None:
            continue
        a, b = value(run), value(other)
        if a is not None and b is not None:
            diffs.append(a - b)
    return stat(diffs)


def _sequential(run: dict[str, Any], key: str) -> float | None:
    return float(run["sequential"]["latency_us"][key])


def _rate_latency(run: dict[str, Any], i: int, key: str) -> float | None:
    return float(run["rates"][i]["latency_us"][key]) if len(run["rates"]) > i else None


def _rss_mib(run: dict[str, Any], instance: str) -> float | None:
    return float(run["memory"][instance]["rss_kib"]) / MIB


def _direct(run: dict[str, Any], key: str, field: str = "sequential_direct") -> float | None:
    direct = run.get(field)
    return None if direct is None else float(direct["latency_us"][key])


def _phase_cpu(run: dict[str, Any], i: int, part: str = "total") -> float | None:
    if len(run["rates"]) <= i:
        return None
    phase = run["rates"][i]
    return _per_1k_ms(phase["cpu"][part], phase["completed"])


def _added(
    by_mode: dict[str, dict[int, dict[str, Any]]], rates: list[float]
) -> dict[str, dict[str, Any]]:
    added: dict[str, dict[str, Any]] = {}
    for mode in sorted(by_mode, key=_order):
        protocol, key = mode.split("-")
        for base_key in ("a", "b"):
            base = f"{protocol}-{base_key}"
            if key <= base_key or base not in by_mode:
                continue
            entry: dict[str, Any] = {
                "sequential_us": {
                    k: _paired(by_mode, mode, base, partial(_sequential, key=k))
                    for k in ("p50", "p99")
                },
                **{
                    f"{name}_us": {
                        k: _paired(by_mode, mode, base, partial(_direct, key=k, field=field))
                        for k in ("p50", "p99")
                    }
                    for name, field in PROBES.items()
                },
                "rates_us": {},
                "cpu_ms_per_1k": {},
                "rss_mib": {},
            }
            for i, rate in enumerate(rates):
                entry["rates_us"][f"{rate:g}"] = {
                    k: _paired(by_mode, mode, base, partial(_rate_latency, i=i, key=k))
                    for k in ("p50", "p99")
                }
                entry["cpu_ms_per_1k"][f"{rate:g}"] = _paired(
                    by_mode, mode, base, partial(_phase_cpu, i=i)
                )
            for instance in ("frontend", "backend"):
                entry["rss_mib"][instance] = _paired(
                    by_mode, mode, base, partial(_rss_mib, instance=instance)
                )
            added.setdefault(mode, {})[f"over_{base_key}"] = entry
    return added


def _median(value: Stat | None) -> float | None:
    return None if value is None else value["median"]


def _headline_rate(modes: dict[str, Any], rates: list[float], protocol: str) -> float | None:
    """The highest rate every mode of *protocol* sustained in every repeat."""
    chosen = None
    for rate in rates:
        phases = [m["rates"][f"{rate:g}"] for k, m in modes.items() if k.startswith(protocol)]
        if phases and all(p["sustained"] for p in phases):
            chosen = rate
    return chosen


def _pair_factor(lib_v: float | None, pair_v: float | None) -> float | None:
    """How many times the library's added latency the pair's is (None within the noise)."""
    # A difference at or below zero is within the noise: no meaningful ratio.
    if lib_v is None or pair_v is None or pair_v <= 0:
        return None
    return math.inf if lib_v <= 0 else pair_v / lib_v


def _one_hop_async(
    added: dict[str, dict[str, Any]], lib: str, pair: str, over: str
) -> dict[str, Any]:
    """The async one-hop caller's added latencies over the baseline's async caller."""
    lib_added = {k: _median(added[lib][over]["direct_async_us"][k]) for k in ("p50", "p99")}
    out: dict[str, Any] = {"library_added_us": lib_added}
    if pair in added and over in added[pair]:
        pair_added = {k: _median(added[pair][over]["direct_async_us"][k]) for k in ("p50", "p99")}
        out["pair_added_us"] = pair_added
        out["pair_over_library_added_factor"] = {
            k: _pair_factor(lib_added[k], pair_added[k]) for k in ("p50", "p99")
        }
    return out


def _targets(summary: dict[str, Any], protocol: str) -> dict[str, Any]:
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
        if _median(added[lib][over]["direct_us"]["p50"]) is not None
        else ("sequential_us")
    )
    out["latency_source"] = "one hop" if source == "direct_us" else "frontend + hop"
    lib_added = added[lib][over][source]
    out["library_added_sequential_us"] = {k: _median(lib_added[k]) for k in ("p50", "p99")}
    if _median(added[lib][over].get("direct_async_us", {}).get("p50")) is not None:
        out["one_hop_async"] = _one_hop_async(added, lib, pair, over)
    if rate is not None:
        lib_rate = added[lib][over]["rates_us"][f"{rate:g}"]
        out["library_added_at_rate_us"] = {k: _median(lib_rate[k]) for k in ("p50", "p99")}
    if pair in modes:
        pair_added = added[pair][over][source]
        out["pair_added_sequential_us"] = {k: _median(pair_added[k]) for k in ("p50", "p99")}
        out["pair_added_over_plain_sequential_us"] = {
            k: _median(added[pair]["over_a"][source][k]) for k in ("p50", "p99")
        } if "over_a" in added[pair] else None  # fmt: skip
        out["pair_over_library_added_factor"] = {
            k: _pair_factor(
                out["library_added_sequential_us"][k], out["pair_added_sequential_us"][k]
            )
            for k in ("p50", "p99")
        }
        if rate is not None:
            pair_rate = added[pair][over]["rates_us"][f"{rate:g}"]
            out["pair_added_at_rate_us"] = {k: _median(pair_rate[k]) for k in ("p50", "p99")}
    a_mode = f"{protocol}-a"
    if rate is not None and a_mode in modes:
        lib_cpu = _median(added[lib]["over_a"]["cpu_ms_per_1k"][f"{rate:g}"])
        out["library_extra_cpu_ms_per_1k"] = lib_cpu
        if pair in modes:
            pair_cpu = _median(modes[pair]["rates"][f"{rate:g}"]["sidecar_cpu_ms_per_1k"])
            out["pair_sidecar_cpu_ms_per_1k"] = pair_cpu
            out["pair_envoy_cpu_ms_per_1k"] = _median(
                modes[pair]["rates"][f"{rate:g}"]["envoy_cpu_ms_per_1k"]
            )
            out["pair_extra_cpu_ms_per_1k"] = _median(
                added[pair]["over_a"]["cpu_ms_per_1k"][f"{rate:g}"]
            )
            out["library_cpu_fraction_of_pair"] = (
                None if lib_cpu is None or not pair_cpu else lib_cpu / pair_cpu
            )
    if a_mode in modes:
        out["library_extra_rss_mib"] = {
            n: _median(added[lib]["over_a"]["rss_mib"][n]) for n in ("frontend", "backend")
        }
        if pair in modes:
            out["sidecar_rss_mib"] = {
                n: _median(modes[pair]["memory"][n]["sidecar_rss_mib"])
                for n in ("frontend", "backend")
            }
            out["envoy_rss_mib"] = {
                n: _median(modes[pair]["memory"][n]["envoy_rss_mib"])
                for n in ("frontend", "backend")
            }
    return out


def summarise(document: dict[str, Any]) -> dict[str, Any]:
    """The summary of *document*'s raw runs (see the module docstring)."""
    rates = [float(r) for r in document["profile"]["rates"]]
    by_mode = _runs_by_mode(document)
    modes = {
        mode: {**document["modes"][mode], **_mode_summary(list(runs.values()), rates)}
        for mode, runs in sorted(by_mode.items(), key=lambda item: _order(item[0]))
    }
    summary: dict[str, Any] = {"modes": modes, "added": _added(by_mode, rates)}
    summary["headline_rate"] = {
        protocol: _headline_rate(modes, rates, protocol) for protocol in ("http", "grpc")
    }
    summary["targets"] = {p: _targets(summary, p) for p in ("http", "grpc")}
    checks = [r["generator_check"] for r in document["runs"] if "generator_check" in r]
    generator: dict[str, Any] = {}
    for name in ("frontend", "backend_direct"):
        rows = [c[name] for c in checks if name in c]
        if rows:
            generator[name] = {
                "loadgen_throughput": stat(r["loadgen_throughput"] for r in rows),
                "wrk_throughput": stat((r["wrk"] or {}).get("throughput") for r in rows),
                "loadgen_cpu_utilisation": stat(r["loadgen_cpu_utilisation"] for r in rows),
                "loadgen_cpu_per_request_us": stat(r["loadgen_cpu_per_request_us"] for r in rows),
            }
    summary["generator_check"] = generator
    summary["projection"] = _projection(summary)
    return summary


def _projection(summary: dict[str, Any]) -> dict[str, Any]:
    """N services, one instance each, each receiving R req/s over one mesh hop."""
    target = summary["targets"].get("http", {})
    rate = target.get("headline_rate")
    lib_rss = target.get("library_extra_rss_mib") or {}
    side_rss = target.get("sidecar_rss_mib") or {}
    lib_rss_v = [v for v in lib_rss.values() if v is not None]
    side_rss_v = [v for v in side_rss.values() if v is not None]
    lib_cpu = target.get("library_extra_cpu_ms_per_1k")
    pair_cpu = target.get("pair_sidecar_cpu_ms_per_1k")
    rows = []
    for n in (10, 100, 1000):
        row: dict[str, Any] = {"services": n, "rate_per_service": rate}
        if lib_rss_v:
            row["library_extra_rss_gib"] = n * statistics.mean(lib_rss_v) / 1024
        if side_rss_v:
            row["sidecars_rss_gib"] = n * statistics.mean(side_rss_v) / 1024
        if rate and lib_cpu is not None:
            row["library_extra_cores"] = n * rate * lib_cpu / 1e6
        if rate and pair_cpu is not None:
            row["sidecars_cores"] = n * rate * pair_cpu / 1e6
        rows.append(row)
    return {"rows": rows}


# ---------------------------------------------------------------------------- Markdown


def fmt(value: Stat | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if value["n"] == 1:
        return f"{value['median']:,.{digits}f}"
    return f"{value['median']:,.{digits}f} ({value['min']:,.{digits}f}-{value['max']:,.{digits}f})"


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}{suffix}"


def _factor(value: float | None) -> str:
    return "n/a (pair adds ≤ 0)" if value is None else _num(value, 1, "x")


def _why_not(rate: dict[str, Any]) -> str:
    achieved = _median(rate["throughput"])
    return (
        f"no (achieved {_num(achieved)}/s; {rate['errors']} errors, "
        f"{rate['incomplete']} unfinished)"
    )


def _all_at_least(values: Iterable[float | None], floor: float) -> bool | None:
    known = list(values)
    if any(v is None for v in known):
        return None
    return all(v is not None and v >= floor for v in known)


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def markdown(document: dict[str, Any], summary: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    modes = summary["modes"]
    profile = document["profile"]
    machine = document["machine"]
    lines = [
        "# Data-plane benchmark results",
        "",
        f"Generated by `python -m benchmarks.run --profile {profile['name']}` at "
        f"{document['timestamp']} in {document.get('elapsed_s', 0):.0f} s; "
        f"{machine['cpus']} x {machine['cpu_model']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}, Envoy {machine['envoy']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}; "
        + _source_line(document)
        + ".",
        "",
        f"{profile['repeats']} repeats, modes interleaved; every cell is the median over the "
        "repeats with (min-max). Latencies in µs; topology: load generator → frontend → "
        "backend, only the frontend → backend hop differs. See docs/benchmarks.md for the "
        "method.",
        "",
    ]
    if document.get("skipped"):
        lines += [f"**Skipped** (no Envoy binary): {', '.join(document['skipped'])}.", ""]
    if document["failures"]:
        lines += ["**Failed runs:**", ""]
        lines += [f"- {f['mode']} repeat {f['repeat'] + 1}: {f['error'][:300]}" for f in
                  document["failures"]]  # fmt: skip
        lines.append("")
    lines += [*targets_markdown(summary)]
    issue = TARGETS["issue_sequential_us"]
    issue_by_key = {"a": issue["plain"], "b": issue["direct mTLS"], "d": issue["Envoy pair"]}
    if any("direct" in m for m in modes.values()):
        lines += [
            "",
            "## One hop, sequential keep-alive httpx callers, sync and async (the issue's method)",
            "",
            "The callers talk straight through the hop under test: to the backend (a, b), as "
            "a meshed workload with `mesh.client()` / `mesh.async_client()` (c: metrics on, "
            "tracing off; e: with an SDK tracer), or through both sidecars (d). Two callers "
            "in interleaved rounds, each on one kept-alive connection: `httpx.Client` (sync) "
            "and `httpx.AsyncClient` (async). *Over direct mTLS* is the paired difference "
            "from mode (b)'s caller of the same flavour.",
            "",
            "| mode | caller | p50 | p90 | p99 | p99.9 | errors | over direct mTLS p50 / p99 "
            "| issue's figure p50 / p99 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        added = summary["added"]
        for mode, m in modes.items():
            for name, caller in CALLERS.items():
                if name not in m:
                    continue
                ref = issue_by_key.get(m["key"]) if caller == "sync" else None
                over_b = added.get(mode, {}).get("over_b", {}).get(f"{name}_us")
                lines.append(
                    f"| {mode} {m['label']} | {caller} | "
                    + " | ".join(fmt(m[name][k]) for k in PKEYS)
                    + f" | {m[f'{name}_errors']} | "
                    + (f"{fmt(over_b['p50'])} / {fmt(over_b['p99'])}" if over_b else "-")
                    + " | "
                    + (f"{ref['p50']} / {ref['p99']}" if ref else "-")
                    + " |"
                )
    lines += [
        "",
        "## Via the frontend, sequential keep-alive httpx caller (both hops)",
        "",
        "| mode | p50 | p90 | p99 | p99.9 | errors |",
        "|---|---|---|---|---|---|",
    ]
    for mode, m in modes.items():
        seq = m["sequential"]
        lines.append(
            f"| {mode} {m['label']} | "
            + " | ".join(fmt(seq[k]) for k in PKEYS)
            + f" | {m['sequential_errors']} |"
        )
    lines += [
        "",
        "## Open loop at fixed rates (latency from the intended send time)",
        "",
        "CPU: seconds of CPU per 1,000 requests, in ms, summed over every process of both "
        "instances (apps, sidecar agents, Envoys); *sidecars* is the sidecars' share.",
        "",
        "| mode | rate/s | p50 | p90 | p99 | p99.9 | achieved/s | CPU ms/1k | sidecars ms/1k "
        "(Envoys) | sustained |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in modes.items():
        for rate, r in m["rates"].items():
            sidecar = (
                f"{fmt(r['sidecar_cpu_ms_per_1k'])} ({fmt(r['envoy_cpu_ms_per_1k'])})"
                if m["key"] == "d"
                else "-"
            )
            lines.append(
                f"| {mode} {m['label']} | {rate} | "
                + " | ".join(fmt(r["latency_us"][k]) for k in PKEYS)
                + f" | {fmt(r['throughput'])} | {fmt(r['cpu_ms_per_1k'])} | {sidecar} | "
                + ("yes" if r["sustained"] else _why_not(r))
                + " |"
            )
    lines += [
        "",
        f"## Saturation (closed loop, {profile['saturation_connections']} connections) and memory",
        "",
        "RSS: VmRSS summed over the instance's processes (app + sidecar agent + Envoy), MiB, "
        "sampled after the fixed-rate phases.",
        "",
        "| mode | max req/s | CPU ms/1k at max | frontend RSS | backend RSS | of which sidecar "
        "(agent + Envoy), backend | of which Envoy | PSS frontend + backend |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in modes.items():
        mem = m["memory"]
        side = fmt(mem["backend"]["sidecar_rss_mib"], 1) if m["key"] == "d" else "-"
        envoy = fmt(mem["backend"]["envoy_rss_mib"], 1) if m["key"] == "d" else "-"
        pss = [_median(mem[n]["pss_mib"]) for n in ("frontend", "backend")]
        lines.append(
            f"| {mode} {m['label']} | {fmt(m['saturation']['throughput'])} | "
            f"{fmt(m['saturation']['cpu_ms_per_1k'])} | {fmt(mem['frontend']['rss_mib'], 1)} | "
            f"{fmt(mem['backend']['rss_mib'], 1)} | {side} | {envoy} | "
            f"{_num(sum(p for p in pss if p is not None), 1)} |"
        )
    lines += [
        "",
        "## Latency added by the hop (paired within each repeat)",
        "",
        "| mode | over | one hop p50 | one hop p99 | one hop async p50 | one hop async p99 | "
        "sequential p50 | sequential p99 | "
        + " | ".join(f"{r:g}/s p50 | {r:g}/s p99" for r in profile["rates"])
        + " |",
        "|---|---|---|---|---|---|---|---|" + "---|---|" * len(profile["rates"]),
    ]
    for mode, entry in summary["added"].items():
        for over, e in entry.items():
            cells = [fmt(e["direct_us"][k]) for k in ("p50", "p99")]
            cells += [fmt(e.get("direct_async_us", {}).get(k)) for k in ("p50", "p99")]
            cells += [fmt(e["sequential_us"][k]) for k in ("p50", "p99")]
            for r in profile["rates"]:
                cells += [fmt(e["rates_us"][f"{r:g}"][k]) for k in ("p50", "p99")]
            lines.append(
                f"| {mode} {modes[mode]['label']} | {over[-1]} | " + " | ".join(cells) + " |"
            )
    lines += ["", *generator_markdown(summary)]
    lines += ["", *projection_markdown(summary)]
    return "\n".join(lines) + "\n"


def _source_line(document: dict[str, Any]) -> str:
    start, end = document.get("source_at_start"), document.get("source_at_end")
    if not start:
        return "commit not recorded"
    line = f"commit {start['commit'][:10]}"
    if start["library_changes"]:
        line += " with uncommitted library changes"
    if end is None:
        return line
    # Other commits may land meanwhile; only the library's own files matter here.
    same_tree = (
        end.get("library_tree") == start.get("library_tree")
        if "library_tree" in start
        else end["commit"] == start["commit"]
    )
    if not same_tree or end["library_changes"] != start["library_changes"]:
        line += f" (**the library changed during the run**: {end['commit'][:10]} at the end)"
    return line


def targets_markdown(summary: dict[str, Any]) -> list[str]:
    """The issue's targets as ratios measured in this run."""
    lines = ["## The issue's targets, measured in this run", ""]
    for protocol, t in summary["targets"].items():
        if "library_added_sequential_us" not in t:
            continue
        base = t.get("latency_baseline", "?")
        rate = t.get("headline_rate")
        lines += [
            f"### {protocol.upper()} (latency baseline {base}; CPU at "
            f"{_num(rate)} req/s, the highest rate every {protocol} mode sustained)",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
        ]
        lib = t["library_added_sequential_us"]
        how = f"sequential caller, {t['latency_source']}"
        lines.append(
            f"| library adds ≤ 80 µs p50 over {base} ({how}) | {_num(lib['p50'])} µs | "
            f"{_verdict(None if lib['p50'] is None else lib['p50'] <= 80)} |"
        )
        lines.append(
            f"| library adds ≤ 200 µs p99 over {base} ({how}) | {_num(lib['p99'])} µs "
            f"| {_verdict(None if lib['p99'] is None else lib['p99'] <= 200)} |"
        )
        if "library_added_at_rate_us" in t:
            at = t["library_added_at_rate_us"]
            lines.append(
                f"| (same, open loop at {_num(rate)}/s: p50 / p99) | {_num(at['p50'])} / "
                f"{_num(at['p99'])} µs | - |"
            )
        if "pair_over_library_added_factor" in t:
            f = t["pair_over_library_added_factor"]
            pair = t["pair_added_sequential_us"]
            lines.append(
                f"| Envoy pair adds ≥ 5x what the library adds (p50; p99) | pair adds "
                f"{_num(pair['p50'])} / {_num(pair['p99'])} µs: {_factor(f['p50'])} / "
                f"{_factor(f['p99'])} | "
                f"{_verdict(_all_at_least(f.values(), 5))} |"
            )
        if "one_hop_async" in t:
            lines += _async_target_rows(t["one_hop_async"], base)
        if "library_cpu_fraction_of_pair" in t:
            frac = t["library_cpu_fraction_of_pair"]
            lines.append(
                f"| library's extra CPU/1k ≤ ¼ of the pair's | library "
                f"{_num(t['library_extra_cpu_ms_per_1k'], 0)} ms vs sidecars "
                f"{_num(t['pair_sidecar_cpu_ms_per_1k'], 0)} ms per 1k (of which the two "
                f"Envoys {_num(t.get('pair_envoy_cpu_ms_per_1k'), 0)} ms; the pair's total "
                f"extra over (a) {_num(t.get('pair_extra_cpu_ms_per_1k'), 0)} ms): "
                f"{_num(frac, 2)} | {_verdict(None if frac is None else frac <= 0.25)} |"
            )
        if "library_extra_rss_mib" in t:
            rss = t["library_extra_rss_mib"]
            worst = max((v for v in rss.values() if v is not None), default=None)
            side = t.get("sidecar_rss_mib") or {}
            envoy = t.get("envoy_rss_mib") or {}
            lines.append(
                f"| library's extra RSS ≤ 10 MiB per instance | frontend "
                f"{_num(rss['frontend'], 1)}, backend {_num(rss['backend'], 1)} MiB (a sidecar: "
                f"{_num(side.get('frontend'), 1)} / {_num(side.get('backend'), 1)} MiB, of which "
                f"Envoy {_num(envoy.get('frontend'), 1)} / {_num(envoy.get('backend'), 1)}) | "
                f"{_verdict(None if worst is None else worst <= 10)} |"
            )
        lines.append(
            "| propagation p99 ≤ 1 s to 1,000 watchers | see benchmarks/results/control_plane.md "
            "| - |"
        )
        lines.append("")
    return lines


def _async_target_rows(probe: dict[str, Any], base: str) -> list[str]:
    """The latency targets for the async one-hop caller (over *base*'s async caller)."""
    lib = probe["library_added_us"]
    how = "async caller, one hop"
    rows = [
        f"| library adds ≤ 80 µs p50 over {base} ({how}) | {_num(lib['p50'])} µs | "
        f"{_verdict(None if lib['p50'] is None else lib['p50'] <= 80)} |",
        f"| library adds ≤ 200 µs p99 over {base} ({how}) | {_num(lib['p99'])} µs "
        f"| {_verdict(None if lib['p99'] is None else lib['p99'] <= 200)} |",
    ]
    if "pair_over_library_added_factor" in probe:
        f, pair = probe["pair_over_library_added_factor"], probe["pair_added_us"]
        rows.append(
            f"| Envoy pair adds ≥ 5x what the library adds ({how}; p50; p99) | pair adds "
            f"{_num(pair['p50'])} / {_num(pair['p99'])} µs: {_factor(f['p50'])} / "
            f"{_factor(f['p99'])} | {_verdict(_all_at_least(f.values(), 5))} |"
        )
    return rows


def generator_markdown(summary: dict[str, Any]) -> list[str]:
    gen = summary["generator_check"]
    if not gen:
        return []
    lines = [
        "## The load generator checked against wrk (closed loop, same connections)",
        "",
        "| target | ours req/s | wrk req/s | our CPU use (of one core) | our CPU µs/request |",
        "|---|---|---|---|---|",
    ]
    for name, g in gen.items():
        lines.append(
            f"| {name} (mode a) | {fmt(g['loadgen_throughput'])} | {fmt(g['wrk_throughput'])} | "
            f"{fmt(g['loadgen_cpu_utilisation'], 2)} | {fmt(g['loadgen_cpu_per_request_us'])} |"
        )
    return lines


def projection_markdown(summary: dict[str, Any]) -> list[str]:
    rows = summary["projection"]["rows"]
    if not rows or rows[0].get("rate_per_service") is None:
        return []
    rate = rows[0]["rate_per_service"]
    lines = [
        f"## Projection to N services (one instance each, {rate:g} req/s in, one hop per "
        "request; HTTP figures of this run)",
        "",
        "| N | library: extra RSS | sidecars: RSS | library: extra CPU (cores) | "
        "sidecar pairs: CPU (cores) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['services']:,} | {_num(row.get('library_extra_rss_gib'), 2)} GiB | "
            f"{_num(row.get('sidecars_rss_gib'), 2)} GiB | "
            f"{_num(row.get('library_extra_cores'), 2)} | {_num(row.get('sidecars_cores'), 2)} |"
        )
    return lines


# ---------------------------------------------------------------------------- plots


def plots(document: dict[str, Any], summary: dict[str, Any], out: Path) -> list[Path]:
    """Latency percentiles per mode, and CPU and memory bars, as PNG files in *out*."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    modes = summary["modes"]
    rates = [f"{r:g}" for r in document["profile"]["rates"]]
    for protocol in ("http", "grpc"):
        chosen = {k: m for k, m in modes.items() if k.startswith(protocol)}
        if not chosen:
            continue
        panels = [*(name for name in PROBES if any(name in m for m in chosen.values())),
                  "sequential", *rates]  # fmt: skip
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(4.5 * cols, 3.8 * rows), sharey=True, squeeze=False
        )
        axes_list = [ax for row in axes for ax in row]
        for ax in axes_list[len(panels) :]:
            ax.set_visible(False)
        for ax, panel in zip(axes_list, panels, strict=False):
            for m in chosen.values():
                if panel in PROBES and panel not in m:
                    continue
                source = (
                    m[panel]
                    if panel in (*PROBES, "sequential")
                    else m["rates"][panel]["latency_us"]
                )
                med = [_median(source[k]) or math.nan for k in PKEYS]
                low = [
                    med[i] - (source[k]["min"] if source[k] else math.nan)
                    for i, k in enumerate(PKEYS)
                ]
                high = [
                    (source[k]["max"] if source[k] else math.nan) - med[i]
                    for i, k in enumerate(PKEYS)
                ]
                ax.errorbar(PKEYS, med, yerr=[low, high], marker="o", capsize=3,
                            label=f"{m['key']}: {m['label']}")  # fmt: skip
            ax.set_yscale("log")
            titles = {
                "direct": "one hop, sequential sync",
                "direct_async": "one hop, sequential async",
                "sequential": "via frontend, sequential",
            }
            ax.set_title(titles.get(panel, f"open loop {panel}/s"))
            ax.set_xlabel("percentile")
            ax.grid(True, which="both", alpha=0.3)
        for row in axes:
            row[0].set_ylabel("latency (µs, log)")
        axes_list[0].legend(fontsize=8)
        fig.suptitle(f"{protocol.upper()}: latency per mode (median of repeats, min-max bars)")
        fig.tight_layout()
        path = out / f"data_plane_latency_{protocol}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    names = list(modes)
    rate = summary["headline_rate"].get("http") or document["profile"]["rates"][0]
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    apps, sides, errs = [], [], []
    for mode in names:
        r = modes[mode]["rates"][f"{rate:g}"]
        total = _median(r["cpu_ms_per_1k"]) or 0.0
        side = _median(r["sidecar_cpu_ms_per_1k"]) or 0.0
        apps.append(total - side)
        sides.append(side)
        spread = r["cpu_ms_per_1k"]
        errs.append([total - spread["min"], spread["max"] - total] if spread else [0, 0])
    cpu_ax.bar(names, apps, label="apps")
    cpu_ax.bar(names, sides, bottom=apps, label="sidecars (agent + Envoy)",
               yerr=list(zip(*errs, strict=True)), capsize=3)  # fmt: skip
    cpu_ax.set_ylabel("CPU ms per 1,000 requests")
    cpu_ax.set_title(f"CPU per 1k requests at {rate:g} req/s (both instances)")
    cpu_ax.tick_params(axis="x", rotation=45)
    cpu_ax.legend(fontsize=8)
    width = 0.4
    xs = range(len(names))
    for offset, instance in ((-width / 2, "frontend"), (width / 2, "backend")):
        app = [_median(modes[m]["memory"][instance]["app_rss_mib"]) or 0.0 for m in names]
        side_rss = [_median(modes[m]["memory"][instance]["sidecar_rss_mib"]) or 0.0 for m in names]
        pos = [x + offset for x in xs]
        mem_ax.bar(pos, app, width, label=f"{instance} app")
        mem_ax.bar(pos, side_rss, width, bottom=app, label=f"{instance} sidecar", hatch="//")
    mem_ax.set_xticks(list(xs), names, rotation=45)
    mem_ax.set_ylabel("RSS (MiB)")
    mem_ax.set_title("RSS per service instance (app + its sidecar)")
    mem_ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "data_plane_cpu_memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


DOCS_BEGIN = "<!-- data-plane-results:begin (written by python -m benchmarks.run) -->"
DOCS_END = "<!-- data-plane-results:end -->"


def update_docs(docs: Path, document: dict[str, Any], results_link: str) -> bool:
    """Replace the generated section of *docs* with this run's tables and plots.

    Returns False (and changes nothing) when the page lacks the markers.
    """
    text = docs.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return False
    body = markdown(document, document["summary"]).split("\n", 2)[2]  # drop the title
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.MULTILINE)  # one level down
    images = "\n".join(f"![{name}]({results_link}/{name})" for name in document.get("plots", []))
    section = (
        f"{DOCS_BEGIN}\n\nFull tables: [data_plane.md]({results_link}/data_plane.md); raw "
        f"runs and summary: [data_plane.json]({results_link}/data_plane.json)."
        f"\n\n{images}\n\n{body}\n{DOCS_END}"
    )
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    docs.write_text(head + section + tail)
    return True


def write_outputs(document: dict[str, Any], out: Path) -> dict[str, Any]:
    """Summarise *document* and write JSON, Markdown and plots into *out*."""
    summary = summarise(document)
    document["summary"] = summary
    document["targets_of_issue_7"] = TARGETS
    (out / "data_plane.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / "data_plane.md").write_text(markdown(document, summary))
    document["plots"] = [p.name for p in plots(document, summary, out)]
    (out / "data_plane.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    return summary
