"""How the report writes a figure, a factor and a verdict in a Markdown cell."""

from __future__ import annotations

import math
from collections.abc import Iterable

from benchmarks.report.stats import Stat

__all__ = ["all_at_least", "factor", "fmt", "num", "verdict"]


def fmt(value: Stat | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if value["n"] == 1:
        return f"{value['median']:,.{digits}f}"
    return f"{value['median']:,.{digits}f} ({value['min']:,.{digits}f}-{value['max']:,.{digits}f})"


def num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}{suffix}"


def factor(value: float | None) -> str:
    return "n/a (pair adds ≤ 0)" if value is None else num(value, 1, "x")


def all_at_least(values: Iterable[float | None], floor: float) -> bool | None:
    known = list(values)
    if any(v is None for v in known):
        return None
    return all(v is not None and v >= floor for v in known)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")
