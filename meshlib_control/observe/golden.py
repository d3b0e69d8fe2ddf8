"""PURE golden metrics: requests per second, success rate and latency percentiles.

Computed from two scrapes of each instance: the per-series deltas of the server-side
duration histograms (what the instance *received*) give the request count of the window,
the failures (HTTP 5xx, gRPC server-error codes) and the latency distribution, whose
percentiles are linearly interpolated within buckets as Prometheus' ``histogram_quantile``
does. A service sums its instances; an edge is (source workload → service), from the
``mesh_source_workload``/``mesh_source_namespace`` labels the server records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshlib_control.observe.prom import HistogramSeries, Labels, MetricsScrape

__all__ = [
    "SERVER_HISTOGRAMS",
    "Golden",
    "InstanceWindow",
    "delta",
    "golden_stats",
    "is_failure",
    "quantile",
]

SERVER_HISTOGRAMS = ("http_server_request_duration_seconds", "rpc_server_call_duration_seconds")
# gRPC codes that are the server's fault (OpenTelemetry's rule for rpc server spans).
GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
    | {"2", "4", "12", "13", "14", "15"}
)


def is_failure(family: str, labels: Labels) -> bool:
    """True for a series of failed requests: HTTP 5xx, or a gRPC server-error code."""
    values = dict(labels)
    if family.startswith("rpc_"):
        # rpc.response.status_code (semantic conventions 1.44); rpc.grpc.status_code from
        # instances of meshlib before it
        code = values.get("rpc_response_status_code") or values.get("rpc_grpc_status_code", "")
        return code.upper().removeprefix("STATUSCODE.") in GRPC_SERVER_ERRORS
    status = values.get("http_response_status_code", "")
    return not status.isdigit() or int(status) >= 500


def delta(previous: HistogramSeries | None, current: HistogramSeries) -> HistogramSeries:
    """*current* minus *previous*, bucket by bucket; a reset counter counts from zero."""
    if previous is None or current.count < previous.count:
        return current
    before = dict(previous.buckets)
    buckets = tuple((le, max(0.0, c - before.get(le, 0.0))) for le, c in current.buckets)
    return HistogramSeries(
        current.labels, buckets, current.sum - previous.sum, current.count - previous.count
    )


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The *q*-quantile of cumulative *buckets* ``(le, count)``, interpolated linearly.

    None without observations. A rank in the ``+Inf`` bucket answers the highest finite
    bound (nothing better is known); the first bucket starts at 0.
    """
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        if not math.isinf(le):
            lower = le
        below = cumulative
    return lower


@dataclass(slots=True)
class _Accumulator:
    requests: float = 0.0
    failures: float = 0.0
    rps: float = 0.0
    total: float = 0.0
    total_failures: float = 0.0
    per_bucket: dict[float, float] = field(default_factory=dict)  # non-cumulative counts

    def add_window(self, series: HistogramSeries, failed: bool, seconds: float) -> None:
        self.requests += series.count
        self.rps += series.count / seconds if seconds > 0 else 0.0
        if failed:
            self.failures += series.count
        below = 0.0
        for le, cumulative in series.buckets:
            self.per_bucket[le] = self.per_bucket.get(le, 0.0) + cumulative - below
            below = cumulative

    def add_total(self, series: HistogramSeries, failed: bool) -> None:
        self.total += series.count
        if failed:
            self.total_failures += series.count

    def result(self) -> Golden:
        cumulative: list[tuple[float, float]] = []
        running = 0.0
        for le in sorted(self.per_bucket):
            running += self.per_bucket[le]
            cumulative.append((le, running))
        success = None if self.requests <= 0 else (self.requests - self.failures) / self.requests
        return Golden(
            requests=self.requests,
            rps=self.rps,
            success=success,
            p50=quantile(0.50, cumulative),
            p95=quantile(0.95, cumulative),
            p99=quantile(0.99, cumulative),
            total=self.total,
            total_failures=self.total_failures,
        )


@dataclass(frozen=True, slots=True)
class Golden:
    """Golden metrics of one service or edge over one window (latencies in seconds)."""

    requests: float
    rps: float
    success: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    total: float
    total_failures: float

    def to_json(self) -> dict[str, Any]:
        """The admin API's form (latencies in milliseconds)."""

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000.0, 3)

        return {
            "requests": round(self.requests),
            "rps": round(self.rps, 3),
            "successRate": None if self.success is None else round(self.success, 4),
            "p50Ms": ms(self.p50),
            "p95Ms": ms(self.p95),
            "p99Ms": ms(self.p99),
            "totalRequests": round(self.total),
            "totalFailures": round(self.total_failures),
        }


@dataclass(frozen=True, slots=True)
class InstanceWindow:
    """The last two scrapes of one instance (*previous* is None after the first one)."""

    instance_id: str
    service: str
    namespace: str
    latest: MetricsScrape
    latest_at: float
    previous: MetricsScrape | None = None
    previous_at: float | None = None

    @property
    def seconds(self) -> float | None:
        """Length of the window, None with a single scrape."""
        if self.previous_at is None:
            return None
        return self.latest_at - self.previous_at


def golden_stats(windows: Iterable[InstanceWindow]) -> dict[str, Any]:
    """Golden metrics per service and per edge, summed over instances.

    Returns ``{"services": [...], "edges": [...], "windowSeconds": …}``; every entry has
    the fields of :meth:`Golden.to_json`. A service with scraped instances but no traffic
    is listed with zero requests.
    """
    services: dict[tuple[str, str], _Accumulator] = {}
    edges: dict[tuple[str, str, str, str], _Accumulator] = {}
    lengths: list[float] = []
    for window in windows:
        svc = services.setdefault((window.namespace, window.service), _Accumulator())
        seconds = window.seconds
        if seconds is not None and seconds > 0:
            lengths.append(seconds)
        for family in SERVER_HISTOGRAMS:
            current = window.latest.histograms.get(family, {})
            before = (
                window.previous.histograms.get(family, {}) if window.previous is not None else {}
            )
            for labels, series in current.items():
                failed = is_failure(family, labels)
                values = dict(labels)
                edge_key = (
                    values.get("mesh_source_namespace", "unknown"),
                    values.get("mesh_source_workload", "unknown"),
                    window.namespace,
                    window.service,
                )
                edge = edges.setdefault(edge_key, _Accumulator())
                for acc in (svc, edge):
                    acc.add_total(series, failed)
                if seconds is not None and seconds > 0:
                    moved = delta(before.get(labels), series)
                    for acc in (svc, edge):
                        acc.add_window(moved, failed, seconds)
    return {
        "services": [
            {"namespace": ns, "service": name, **acc.result().to_json()}
            for (ns, name), acc in sorted(services.items())
        ],
        "edges": [
            {
                "sourceNamespace": src_ns,
                "source": src,
                "namespace": ns,
                "service": name,
                **acc.result().to_json(),
            }
            for (src_ns, src, ns, name), acc in sorted(edges.items())
        ],
        "windowSeconds": round(sum(lengths) / len(lengths), 3) if lengths else None,
    }
