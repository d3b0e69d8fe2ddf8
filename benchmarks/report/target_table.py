"""The Markdown section that sets the issue's targets beside this run's figures."""

from __future__ import annotations

from typing import Any

from benchmarks.report.formatting import all_at_least, factor, num, verdict

__all__ = ["targets_markdown"]


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
            f"{num(rate)} req/s, the highest rate every {protocol} mode sustained)",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
        ]
        lib = t["library_added_sequential_us"]
        how = f"sequential caller, {t['latency_source']}"
        lines.append(
            f"| library adds ≤ 80 µs p50 over {base} ({how}) | {num(lib['p50'])} µs | "
            f"{verdict(None if lib['p50'] is None else lib['p50'] <= 80)} |"
        )
        lines.append(
            f"| library adds ≤ 200 µs p99 over {base} ({how}) | {num(lib['p99'])} µs "
            f"| {verdict(None if lib['p99'] is None else lib['p99'] <= 200)} |"
        )
        if "library_added_at_rate_us" in t:
            at = t["library_added_at_rate_us"]
            lines.append(
                f"| (same, open loop at {num(rate)}/s: p50 / p99) | {num(at['p50'])} / "
                f"{num(at['p99'])} µs | - |"
            )
        if "pair_over_library_added_factor" in t:
            f = t["pair_over_library_added_factor"]
            pair = t["pair_added_sequential_us"]
            lines.append(
                f"| Envoy pair adds ≥ 5x what the library adds (p50; p99) | pair adds "
                f"{num(pair['p50'])} / {num(pair['p99'])} µs: {factor(f['p50'])} / "
                f"{factor(f['p99'])} | "
                f"{verdict(all_at_least(f.values(), 5))} |"
            )
        if "one_hop_async" in t:
            lines += _async_target_rows(t["one_hop_async"], base)
        if "library_cpu_fraction_of_pair" in t:
            frac = t["library_cpu_fraction_of_pair"]
            lines.append(
                f"| library's extra CPU/1k ≤ ¼ of the pair's | library "
                f"{num(t['library_extra_cpu_ms_per_1k'], 0)} ms vs sidecars "
                f"{num(t['pair_sidecar_cpu_ms_per_1k'], 0)} ms per 1k (of which the two "
                f"Envoys {num(t.get('pair_envoy_cpu_ms_per_1k'), 0)} ms; the pair's total "
                f"extra over (a) {num(t.get('pair_extra_cpu_ms_per_1k'), 0)} ms): "
                f"{num(frac, 2)} | {verdict(None if frac is None else frac <= 0.25)} |"
            )
        if "library_extra_rss_mib" in t:
            rss = t["library_extra_rss_mib"]
            worst = max((v for v in rss.values() if v is not None), default=None)
            side = t.get("sidecar_rss_mib") or {}
            envoy = t.get("envoy_rss_mib") or {}
            lines.append(
                f"| library's extra RSS ≤ 10 MiB per instance | frontend "
                f"{num(rss['frontend'], 1)}, backend {num(rss['backend'], 1)} MiB (a sidecar: "
                f"{num(side.get('frontend'), 1)} / {num(side.get('backend'), 1)} MiB, of which "
                f"Envoy {num(envoy.get('frontend'), 1)} / {num(envoy.get('backend'), 1)}) | "
                f"{verdict(None if worst is None else worst <= 10)} |"
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
        f"| library adds ≤ 80 µs p50 over {base} ({how}) | {num(lib['p50'])} µs | "
        f"{verdict(None if lib['p50'] is None else lib['p50'] <= 80)} |",
        f"| library adds ≤ 200 µs p99 over {base} ({how}) | {num(lib['p99'])} µs "
        f"| {verdict(None if lib['p99'] is None else lib['p99'] <= 200)} |",
    ]
    if "pair_over_library_added_factor" in probe:
        f, pair = probe["pair_over_library_added_factor"], probe["pair_added_us"]
        rows.append(
            f"| Envoy pair adds ≥ 5x what the library adds ({how}; p50; p99) | pair adds "
            f"{num(pair['p50'])} / {num(pair['p99'])} µs: {factor(f['p50'])} / "
            f"{factor(f['p99'])} | {verdict(all_at_least(f.values(), 5))} |"
        )
    return rows
