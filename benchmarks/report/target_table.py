"""The Markdown section that sets the issue's targets beside this run's figures."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.report.formatting import num, verdict
from benchmarks.report.targets import ISSUE, TARGET

__all__ = ["targets_markdown"]

_DIGITS = {"µs": 0, "x": 1, "MiB": 1, "": 2}


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if math.isinf(value):  # a factor over a library that adds nothing measurable
        return "∞ (library adds ≤ 0)"
    text = num(value, _DIGITS[unit])
    return f"{text}x" if unit == "x" else f"{text} {unit}".rstrip()


def _verdict(check: dict[str, Any]) -> str:
    """met / missed, and by how much (in the target's unit)."""
    if check["met"] is None:
        return verdict(None)
    unit = TARGET[check["target"]].unit
    margin = check["margin"]
    if margin is None:  # an infinite factor: the library adds nothing measurable
        return verdict(True)
    by = _figure(abs(margin), unit)
    return f"met ({by} to spare)" if check["met"] else f"{verdict(False)} by {by}"


def _row(check: dict[str, Any]) -> str:
    target = TARGET[check["target"]]
    measured = _figure(check["measured"], target.unit)
    if check["detail"]:
        measured += f" ({check['detail']})"
    return f"| {target.text} | {check['mode']}, {check['where']} | {measured} | {_verdict(check)} |"


def targets_markdown(summary: dict[str, Any]) -> list[str]:
    """Issue 12's targets, one row per library mode, caller and figure, judged on this run."""
    lines = [
        f"## Issue {ISSUE}'s targets, measured in this run",
        "",
        "Every figure is the median over the repeats of a paired difference; each row says "
        "whether the target is met and by how much. Library modes: (c) metrics on, tracing "
        "off; (e) with an SDK tracer.",
        "",
    ]
    for protocol, t in summary["targets"].items():
        checks = t.get("checks")
        if not checks:
            continue
        base = t.get("latency_baseline", "?")
        rate = t.get("headline_rate")
        lines += [
            f"### {protocol.upper()} (latency baseline {base}; CPU at "
            f"{num(rate)} req/s, the highest rate every {protocol} mode sustained)",
            "",
            "| target | mode, where | measured | verdict |",
            "|---|---|---|---|",
            *(_row(check) for check in checks),
            "",
        ]
    return lines
