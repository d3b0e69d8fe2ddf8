"""Render OpenTelemetry SDK metrics as Prometheus text (exposition format 0.0.4).

Names follow the OpenTelemetry → Prometheus rules: dots become underscores, the unit is
appended (``s`` → ``_seconds``), counters end in ``_total``; histograms become
``_bucket{le=…}``, ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricsData,
    Sum,
)

__all__ = ["prometheus_name", "render_prometheus"]

_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_UNITS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}


def prometheus_name(name: str, unit: str, *, counter: bool) -> str:
    """The Prometheus name of an OpenTelemetry instrument."""
    base = _INVALID.sub("_", name)
    suffix = _UNITS.get(unit, _INVALID.sub("_", unit))
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if counter and not base.endswith("_total"):
        base += "_total"
    return base


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, Any] | None, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [(_INVALID.sub("_", k), v) for k, v in (attributes or {}).items()]
    pairs.extend(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or (value == int(value) and abs(value) < 1e15):
        return str(int(value))
    return repr(float(value))


def render_prometheus(data: MetricsData | None) -> str:
    """Prometheus text for everything in *data* (one ``# TYPE`` per metric family)."""
    lines: list[str] = []
    seen: set[str] = set()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                point_data = metric.data
                if isinstance(point_data, Histogram):
                    name = prometheus_name(metric.name, metric.unit or "", counter=False)
                    if name not in seen:
                        seen.add(name)
                        lines.append(f"# HELP {name} {_escape(metric.description or name)}")
                        lines.append(f"# TYPE {name} histogram")
                    for p in point_data.data_points:
                        cumulative = 0
                        for bound, count in zip(
                            (*p.explicit_bounds, math.inf), p.bucket_counts, strict=True
                        ):
                            cumulative += count
                            le = (("le", _number(bound)),)
                            lines.append(f"{name}_bucket{_labels(p.attributes, le)} {cumulative}")
                        lines.append(f"{name}_sum{_labels(p.attributes)} {_number(p.sum)}")
                        lines.append(f"{name}_count{_labels(p.attributes)} {p.count}")
                elif isinstance(point_data, Sum | Gauge):
                    counter = isinstance(point_data, Sum) and point_data.is_monotonic
                    name = prometheus_name(metric.name, metric.unit or "", counter=counter)
                    kind = "counter" if counter else "gauge"
                    if name not in seen:
                        seen.add(name)
                        lines.append(f"# HELP {name} {_escape(metric.description or name)}")
                        lines.append(f"# TYPE {name} {kind}")
                    for point in point_data.data_points:
                        lines.append(f"{name}{_labels(point.attributes)} {_number(point.value)}")
    return "\n".join(lines) + "\n"
