"""A small in-process meter behind the admin port's ``/metrics`` when no SDK is configured.

meshlib records its metrics through the OpenTelemetry *API* shape (``create_histogram``,
``create_counter``, ``create_observable_gauge``; ``record``/``add``). When the application
passes ``Mesh(meter_provider=…)`` the instruments come from that provider and the app's
pipeline exports them. When it passes none, they come from :class:`LocalMeter`: cumulative
histograms with fixed buckets and monotonic counters, rendered as Prometheus text by
:func:`meshlib.telemetry.prometheus.render_local`. That keeps the OpenTelemetry SDK (and its
memory) out of a process that never asked for it, and one ``record`` costs a dictionary
lookup, a bisect and a lock.

Series per instrument are bounded (:data:`MAX_SERIES`); past that, samples go to one
``otel.metric.overflow="true"`` series, as the SDK does.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["MAX_SERIES", "LocalCounter", "LocalGauge", "LocalHistogram", "LocalMeter"]

MAX_SERIES = 2000
"""Distinct attribute sets kept per instrument (the SDK's default cardinality limit)."""

_OVERFLOW: tuple[tuple[str, Any], ...] = (("otel.metric.overflow", "true"),)

Attributes = Mapping[str, Any] | None
Key = tuple[tuple[str, Any], ...]


def _key(attributes: Attributes, series: Mapping[Key, Any]) -> Key:
    key = tuple(attributes.items()) if attributes else ()
    if key not in series and len(series) >= MAX_SERIES:
        return _OVERFLOW
    return key


class LocalHistogram:
    """A cumulative explicit-bucket histogram (bucket i counts values in (b[i-1], b[i]])."""

    kind = "histogram"

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(bounds)
        # key -> [bucket counts..., count, sum]
        self._series: dict[Key, list[float]] = {}
        self._lock = threading.Lock()

    def record(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        """Add one sample."""
        index = bisect.bisect_left(self.bounds, amount)
        with self._lock:
            key = _key(attributes, self._series)
            row = self._series.get(key)
            if row is None:
                row = self._series[key] = [0.0] * (len(self.bounds) + 3)
            row[index] += 1
            row[-2] += 1
            row[-1] += amount

    def points(self) -> list[tuple[Key, list[int], int, float]]:
        """(attributes, per-bucket counts including +Inf, count, sum) per series."""
        with self._lock:
            rows = [(key, list(row)) for key, row in self._series.items()]
        return [(k, [int(c) for c in r[:-2]], int(r[-2]), r[-1]) for k, r in rows]


class LocalCounter:
    """A monotonic sum."""

    kind = "counter"

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._series: dict[Key, float] = {}
        self._lock = threading.Lock()

    def add(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        """Add *amount* (negative amounts are ignored, as the API specifies)."""
        if amount < 0:
            return
        with self._lock:
            key = _key(attributes, self._series)
            self._series[key] = self._series.get(key, 0) + amount

    def points(self) -> list[tuple[Key, float]]:
        """(attributes, value) per series."""
        with self._lock:
            return list(self._series.items())

    def retain(self, keep: Callable[[Key], bool]) -> None:
        """Drop the series whose attributes *keep* refuses (the overflow series stays)."""
        with self._lock:
            for key in [k for k in self._series if k != _OVERFLOW and not keep(k)]:
                del self._series[key]


class LocalGauge:
    """An observable gauge: its callbacks run when the page is rendered."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        callbacks: Sequence[Callable[[CallbackOptions], Iterable[Observation]]],
    ) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._callbacks = tuple(callbacks)

    def points(self) -> list[tuple[Key, float]]:
        """(attributes, value) of every observation; a failing callback contributes none."""
        out: list[tuple[Key, float]] = []
        for callback in self._callbacks:
            try:
                # meshlib's own callbacks ignore the options; build none at import time
                observations = list(callback(_NO_OPTIONS))
            except Exception:
                continue
            for obs in observations:
                out.append((tuple((obs.attributes or {}).items()), float(obs.value)))
        return out


_NO_OPTIONS: Any = None

Instrument = LocalHistogram | LocalCounter | LocalGauge


class LocalMeter:
    """The subset of ``opentelemetry.metrics.Meter`` meshlib uses, aggregated in memory."""

    def __init__(self) -> None:
        self.instruments: list[Instrument] = []

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> LocalHistogram:
        """A histogram with the advised buckets (the SDK's defaults when none)."""
        bounds = explicit_bucket_boundaries_advisory or (
            0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
        )  # fmt: skip
        histogram = LocalHistogram(name, unit, description, bounds)
        self.instruments.append(histogram)
        return histogram

    def create_counter(self, name: str, unit: str = "", description: str = "") -> LocalCounter:
        """A monotonic counter."""
        counter = LocalCounter(name, unit, description)
        self.instruments.append(counter)
        return counter

    def create_observable_gauge(
        self,
        name: str,
        callbacks: Sequence[Callable[[CallbackOptions], Iterable[Observation]]] | None = None,
        unit: str = "",
        description: str = "",
    ) -> LocalGauge:
        """A gauge read from *callbacks* at render time."""
        gauge = LocalGauge(name, unit, description, callbacks or ())
        self.instruments.append(gauge)
        return gauge
