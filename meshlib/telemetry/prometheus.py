"""Render metrics as Prometheus text (exposition format 0.0.4).

:func:`render_local` renders meshlib's own :class:`~meshlib.telemetry.local.LocalMeter`
(what ``/metrics`` shows when no ``meter_provider`` is given); :func:`render_prometheus`
renders OpenTelemetry SDK ``MetricsData`` (the SDK is imported only when it is called).

Names follow the OpenTelemetry → Prometheus rules: dots become underscores, the unit is
appended (``s`` → ``_seconds``), counters end in ``_total``; histograms become
``_bucket{le=…}``, ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from meshlib.telemetry.local import LocalHistogram, LocalMeter

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricsData

__all__ = ["prometheus_name", "render_local", "render_prometheus"]

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
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

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


def render_local(meter: LocalMeter) -> str:
    """Prometheus text for every instrument of *meter* that has a sample."""
    lines: list[str] = []
    seen: set[str] = set()

    def family(name: str, description: str, kind: str) -> None:
        if name not in seen:
            seen.add(name)
            lines.append(f"# HELP {name} {_escape(description or name)}")
            lines.append(f"# TYPE {name} {kind}")

    for instrument in meter.instruments:
        if isinstance(instrument, LocalHistogram):
            points = instrument.points()
            if not points:
                continue
            name = prometheus_name(instrument.name, instrument.unit, counter=False)
            family(name, instrument.description, "histogram")
            bounds = (*instrument.bounds, math.inf)
            for key, counts, count, total in points:
                attributes = dict(key)
                cumulative = 0
                for bound, n in zip(bounds, counts, strict=True):
                    cumulative += n
                    le = (("le", _number(bound)),)
                    lines.append(f"{name}_bucket{_labels(attributes, le)} {cumulative}")
                lines.append(f"{name}_sum{_labels(attributes)} {_number(total)}")
                lines.append(f"{name}_count{_labels(attributes)} {count}")
        else:
            values = instrument.points()
            if not values:
                continue
            counter = instrument.kind == "counter"
            name = prometheus_name(instrument.name, instrument.unit, counter=counter)
            family(name, instrument.description, instrument.kind)
            for key, value in values:
                lines.append(f"{name}{_labels(dict(key))} {_number(value)}")
    return "\n".join(lines) + "\n"
