"""The results as PNG plots: latency percentiles per mode, CPU and memory bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.report.stats import PKEYS, PROBES, median

__all__ = ["plots"]


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
                med = [median(source[k]) or math.nan for k in PKEYS]
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
        total = median(r["cpu_ms_per_1k"]) or 0.0
        side = median(r["sidecar_cpu_ms_per_1k"]) or 0.0
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
        app = [median(modes[m]["memory"][instance]["app_rss_mib"]) or 0.0 for m in names]
        side_rss = [median(modes[m]["memory"][instance]["sidecar_rss_mib"]) or 0.0 for m in names]
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
