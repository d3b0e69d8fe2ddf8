"""MeshTelemetry metrics: the in-process meter behind /metrics, or the app's MeterProvider."""

from __future__ import annotations

import math

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib.telemetry import local
from meshlib.telemetry.local import LocalMeter
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.telemetry.prometheus import render_local


def _served(telemetry: MeshTelemetry, duration: float) -> None:
    telemetry.http_server_done(
        method="GET", status=200, duration=duration,
        peer="spiffe://mesh.local/ns/default/sa/frontend", flag=None, path="/", trace_id=None,
    )  # fmt: skip


def test_histogram_buckets_are_upper_inclusive():
    """A value equal to a bound counts in that bound's bucket, as in OpenTelemetry."""
    meter = LocalMeter()
    h = meter.create_histogram("d", unit="s", explicit_bucket_boundaries_advisory=(1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 9.0):
        h.record(value, {"k": "v"})
    ((key, counts, count, total),) = h.points()
    assert key == (("k", "v"),) and counts == [2, 1, 1] and count == 4
    assert math.isclose(total, 12.0)
    page = render_local(meter)
    assert 'd_seconds_bucket{k="v",le="1"} 2' in page
    assert 'd_seconds_bucket{k="v",le="+Inf"} 4' in page


def test_series_beyond_the_limit_go_to_one_overflow_series(monkeypatch):
    """Past MAX_SERIES attribute sets, samples are counted in otel.metric.overflow."""
    monkeypatch.setattr(local, "MAX_SERIES", 2)
    counter = LocalMeter().create_counter("c")
    for i in range(5):
        counter.add(1, {"i": i})
    assert dict(counter.points())[(("otel.metric.overflow", "true"),)] == 3


def test_failing_gauge_callback_contributes_nothing():
    """A gauge source that raises is skipped; the page still renders."""
    telemetry = MeshTelemetry(service="orders", namespace="default")
    telemetry.gauge_source("mesh.certificate.expiry", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    _served(telemetry, 0.001)
    page = telemetry.prometheus()
    assert "mesh_certificate_expiry" not in page and "http_server_request_duration" in page


def test_given_meter_provider_receives_the_metrics():
    """With meter_provider= the app's SDK pipeline gets the samples; /metrics says so."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = MeshTelemetry(service="orders", namespace="default", meter_provider=provider)
    _served(telemetry, 0.002)
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "http.server.request.duration" in names
    assert telemetry.prometheus().startswith("# meshlib records its metrics through")
    provider.shutdown()


def test_mesh_accepts_meter_provider():
    """meshlib.Mesh(meter_provider=...) hands the provider to its telemetry."""
    import meshlib

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    mesh = meshlib.Mesh(service="orders", control_url="https://127.0.0.1:9", token="t",
                        meter_provider=provider, admin_port=None)  # fmt: skip
    assert mesh.telemetry.meter_provider is provider and mesh.telemetry.local is None
    provider.shutdown()


def test_sdk_metrics_data_still_renders_as_prometheus():
    """render_prometheus keeps rendering SDK MetricsData (the SDK imported on that call)."""
    from meshlib.telemetry.prometheus import render_prometheus

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("mesh.x", unit="1").add(2, {"a": "b"})
    assert 'mesh_x_total{a="b"} 2' in render_prometheus(reader.get_metrics_data())
    provider.shutdown()
