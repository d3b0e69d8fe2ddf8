"""From raw runs to the summary: per-mode figures, paired differences, the projection."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.report.checks import check_targets
from benchmarks.report.stats import (
    MIB,
    PKEYS,
    PROBES,
    Stat,
    mode_order,
    per_1k_ms,
    stat,
)
from benchmarks.report.targets import measure_targets

__all__ = ["summarise"]


def _sustained(phase: dict[str, Any]) -> bool:
    return bool(
        phase["incomplete"] == 0
        and phase["errors"] == 0
        and phase["completed"] >= 0.97 * phase["intended"]
        and phase["throughput"] >= 0.95 * phase["rate"]
    )


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
            "cpu_ms_per_1k": stat(per_1k_ms(p["cpu"]["total"], p["completed"]) for p in phases),
            "sidecar_cpu_ms_per_1k": stat(
                per_1k_ms(p["cpu"]["sidecars"], p["completed"]) for p in phases
            ),
            "envoy_cpu_ms_per_1k": stat(
                per_1k_ms(p["cpu"].get("envoys", 0.0), p["completed"]) for p in phases
            ),
            "frontend_cpu_ms_per_1k": stat(
                per_1k_ms(p["cpu"]["frontend"], p["completed"]) for p in phases
            ),
            "backend_cpu_ms_per_1k": stat(
                per_1k_ms(p["cpu"]["backend"], p["completed"]) for p in phases
            ),
            "send_lag_us": {k: stat(p["send_lag_us"][k] for p in phases) for k in ("p50", "p99")},
            "loadgen_cpu_ms_per_1k": stat(
                per_1k_ms(p["loadgen_cpu_s"], p["completed"]) for p in phases
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
        "cpu_ms_per_1k": stat(per_1k_ms(s["cpu"]["total"], s["completed"]) for s in sat),
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
    return per_1k_ms(phase["cpu"][part], phase["completed"])


def _added(
    by_mode: dict[str, dict[int, dict[str, Any]]], rates: list[float]
) -> dict[str, dict[str, Any]]:
    added: dict[str, dict[str, Any]] = {}
    for mode in sorted(by_mode, key=mode_order):
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


def _headline_rate(modes: dict[str, Any], rates: list[float], protocol: str) -> float | None:
    """The highest rate every mode of *protocol* sustained in every repeat."""
    chosen = None
    for rate in rates:
        phases = [m["rates"][f"{rate:g}"] for k, m in modes.items() if k.startswith(protocol)]
        if phases and all(p["sustained"] for p in phases):
            chosen = rate
    return chosen


def summarise(document: dict[str, Any]) -> dict[str, Any]:
    """The summary of *document*'s raw runs (see the module docstring)."""
    rates = [float(r) for r in document["profile"]["rates"]]
    by_mode = _runs_by_mode(document)
    modes = {
        mode: {**document["modes"][mode], **_mode_summary(list(runs.values()), rates)}
        for mode, runs in sorted(by_mode.items(), key=lambda item: mode_order(item[0]))
    }
    summary: dict[str, Any] = {"modes": modes, "added": _added(by_mode, rates)}
    summary["headline_rate"] = {
        protocol: _headline_rate(modes, rates, protocol) for protocol in ("http", "grpc")
    }
    summary["targets"] = {
        p: {**measure_targets(summary, p), "checks": check_targets(summary, p)}
        for p in ("http", "grpc")
    }
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
