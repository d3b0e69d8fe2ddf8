"""How the report writes a figure and a verdict in a Markdown cell."""

from __future__ import annotations

import math

from benchmarks.report.stats import Stat

__all__ = ["fmt", "num", "verdict"]


def fmt(value: Stat | None, digits: int = 0) -> str:
    """A summarised figure: its median, with (min-max) when there were several repeats."""
    if value is None:
        return "-"
    if value["n"] == 1:
        return f"{value['median']:,.{digits}f}"
    return f"{value['median']:,.{digits}f} ({value['min']:,.{digits}f}-{value['max']:,.{digits}f})"


def num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    """One number, ``-`` when unknown and ``∞`` when infinite."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}{suffix}"


def verdict(ok: bool | None) -> str:
    """``met``, ``**missed**``, or ``-`` when it could not be judged."""
    return "-" if ok is None else ("met" if ok else "**missed**")
