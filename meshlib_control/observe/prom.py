"""PURE parser for the Prometheus text exposition format — only what golden metrics need.

Histograms (``_bucket{le=…}``, ``_sum``, ``_count``) and plain samples (gauges, counters),
each with its labels. ``# TYPE`` lines tell histograms apart; comments are otherwise
ignored, and so are malformed lines (a scrape is best effort, never an error).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["HistogramSeries", "Labels", "MetricsScrape", "Sample", "parse_metrics", "parse_samples"]

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


@dataclass(frozen=True, slots=True)
class Sample:
    """One line: metric name, labels (sorted), value."""

    name: str
    labels: Labels
    value: float

    def label(self, name: str, default: str = "") -> str:
        """The value of label *name*."""
        return dict(self.labels).get(name, default)


@dataclass(frozen=True, slots=True)
class HistogramSeries:
    """One labelled series of a histogram: cumulative buckets sorted by upper bound."""

    labels: Labels
    buckets: tuple[tuple[float, float], ...]  # (le, cumulative count), +Inf last
    sum: float
    count: float

    def label(self, name: str, default: str = "") -> str:
        """The value of label *name*."""
        return dict(self.labels).get(name, default)


@dataclass(frozen=True, slots=True)
class MetricsScrape:
    """One parsed page: histograms by family name, and every other sample by name."""

    histograms: dict[str, dict[Labels, HistogramSeries]] = field(default_factory=dict)
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def gauge(self, name: str) -> Sample | None:
        """The first sample of *name* (for single-valued gauges), or None."""
        found = self.samples.get(name)
        return found[0] if found else None


MAX_SAMPLE_VALUE = 1e18  # beyond any real counter, gauge or sum; keeps arithmetic finite


def _parse_value(text: str) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    return float(text)


def _parse_labels(text: str, start: int) -> tuple[Labels, int]:
    """Parse ``{a="x",b="y"}`` from ``text[start] == "{"``; returns labels and end index."""
    pairs: list[tuple[str, str]] = []
    i = start + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " ,":
            i += 1
        if i < n and text[i] == "}":
            return tuple(sorted(pairs)), i + 1
        eq = text.index("=", i)
        name = text[i:eq].strip()
        i = eq + 1
        while text[i] == " ":
            i += 1
        if text[i] != '"':
            raise ValueError(f"label {name}: value not quoted")
        i += 1
        value: list[str] = []
        while text[i] != '"':
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1]
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            else:
                value.append(ch)
                i += 1
        pairs.append((name, "".join(value)))
        i += 1
    raise ValueError("unterminated label set")


def parse_samples(text: str) -> Iterator[tuple[Sample, str | None]]:
    """Every well-formed sample line, with the ``# TYPE`` declared for its family so far."""
    types: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        try:
            brace = line.find("{")
            space = line.find(" ")
            if brace != -1 and (space == -1 or brace < space):
                name = line[:brace]
                labels, end = _parse_labels(line, brace)
                rest = line[end:].split()
            else:
                name, *rest = line.split()
                labels = ()
            value = _parse_value(rest[0])
        except (ValueError, IndexError):
            continue
        if not -MAX_SAMPLE_VALUE <= value <= MAX_SAMPLE_VALUE:
            continue  # NaN, an infinity or absurd: golden metrics stay finite (JSON has none)
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
                family = name[: -len(suffix)]
                break
        yield Sample(name, labels, value), types.get(family)


def parse_metrics(text: str) -> MetricsScrape:
    """Parse a ``/metrics`` page into histograms and other samples."""
    parts: dict[str, dict[Labels, dict[str, object]]] = {}
    scrape = MetricsScrape()
    for sample, kind in parse_samples(text):
        if kind != "histogram":
            scrape.samples.setdefault(sample.name, []).append(sample)
            continue
        for suffix in ("_bucket", "_sum", "_count"):
            if sample.name.endswith(suffix):
                family = sample.name[: -len(suffix)]
                break
        else:
            continue
        labels = tuple(p for p in sample.labels if p[0] != "le")
        entry = parts.setdefault(family, {}).setdefault(labels, {"buckets": []})
        if suffix == "_bucket":
            try:
                le = _parse_value(dict(sample.labels)["le"])
            except (KeyError, ValueError):
                continue
            buckets = entry["buckets"]
            assert isinstance(buckets, list)
            buckets.append((le, sample.value))
        else:
            entry[suffix] = sample.value
    for family, series in parts.items():
        out: dict[Labels, HistogramSeries] = {}
        for labels, entry in series.items():
            buckets = entry["buckets"]
            assert isinstance(buckets, list)
            ordered = tuple(sorted(buckets))
            count = entry.get("_count")
            total = entry.get("_sum", 0.0)
            if not isinstance(count, float):
                count = ordered[-1][1] if ordered else 0.0
            assert isinstance(total, float)
            out[labels] = HistogramSeries(labels, ordered, total, count)
        scrape.histograms[family] = out
    return scrape
