"""Client-side telemetry helpers: one span and one metric sample per call, never raising."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshlib.errors import CircuitOpen
from meshlib.telemetry.client import finish_client_call, start_client_call
from meshlib.telemetry.metrics import MeshTelemetry


@pytest.fixture
def traced() -> tuple[MeshTelemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return MeshTelemetry(service="frontend", namespace="default", tracer_provider=provider), (
        exporter
    )


def test_http_call_makes_one_client_span_and_one_sample(traced):
    """An HTTP call ends one CLIENT span with its attributes and records one duration."""
    telemetry, exporter = traced
    call = start_client_call(
        telemetry,
        protocol="http",
        service="orders.default",
        method="GET",
        route="default",
        url="http://orders/items?x=1",
        peer_spiffe_id="spiffe://mesh.local/ns/default/sa/orders",
    )
    assert "traceparent" in call.trace_headers
    call.retrying(attempt=2, endpoint="127.0.0.1:1")
    call.finish(status=503, attempts=2)
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.CLIENT and span.name == "GET"
    assert span.attributes is not None
    assert span.attributes["url.full"] == "http://orders/items?x=1"
    assert span.attributes["mesh.attempts"] == 2
    assert span.attributes["http.response.status_code"] == 503
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["mesh.retry"]
    page = telemetry.prometheus()
    assert 'http_client_request_duration_seconds_count{http_request_method="GET"' in page
    assert (
        'mesh_client_retries_total{mesh_destination_service="orders",'
        'mesh_destination_namespace="default"} 1'
    ) in page


def test_grpc_call_records_rpc_metrics_and_mesh_flag(traced):
    """A gRPC call names its span by method and counts retries and the mesh flag."""
    telemetry, exporter = traced
    call = start_client_call(
        telemetry, protocol="grpc", service="orders.default", method="/shop.Orders/Get",
        route="r1",
    )  # fmt: skip
    finish_client_call(
        call, code="UNAVAILABLE", attempts=3, error=CircuitOpen("open", service="orders.default")
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "shop.Orders/Get"
    assert span.attributes is not None and span.attributes["rpc.method"] == "shop.Orders/Get"
    assert span.attributes["mesh.flag"] == "CIRCUIT_OPEN"
    assert span.attributes["rpc.response.status_code"] == "UNAVAILABLE"
    assert span.attributes["error.type"] == "UNAVAILABLE"
    page = telemetry.prometheus()
    assert 'rpc_response_status_code="UNAVAILABLE"' in page
    assert (
        'mesh_client_retries_total{mesh_destination_service="orders",'
        'mesh_destination_namespace="default"} 2'
    ) in page
    assert 'mesh_flag="CIRCUIT_OPEN"' in page


def test_finish_is_idempotent(traced):
    """A second finish records nothing more."""
    telemetry, exporter = traced
    call = start_client_call(
        telemetry, protocol="http", service="a.default", method="GET", route="d"
    )
    call.finish(status=200)
    call.finish(status=500)
    assert len(exporter.get_finished_spans()) == 1
    assert "} 1\n" in telemetry.prometheus().split("_count", 1)[1]
    assert not call.is_recording


def test_without_telemetry_everything_is_a_noop():
    """telemetry=None gives a call with no span and no headers whose finish does nothing."""
    call = start_client_call(None, protocol="http", service="a.default", method="GET", route="d")
    call.retrying(attempt=2, endpoint="x")
    call.finish(status=200)
    assert call.span is None and call.trace_headers == {}


class _Broken:
    def start_span(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("tracer exploded")


class _BrokenMetric:
    def record(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("meter exploded")


def test_failing_tracer_and_meter_never_raise():
    """A tracer and a histogram that raise leave the call unaffected (invariant 7)."""
    telemetry = MeshTelemetry(service="frontend", namespace="default")
    telemetry._tracer_provider = None
    telemetry.http_client = _BrokenMetric()
    telemetry.rpc_client = _BrokenMetric()
    original = MeshTelemetry.tracer
    try:
        MeshTelemetry.tracer = property(lambda self: _Broken())  # type: ignore[assignment,method-assign]
        call = start_client_call(
            telemetry, protocol="grpc", service="a.default", method="/s/M", route="d"
        )
        call.finish(code="OK")
        http = start_client_call(
            telemetry, protocol="http", service="a.default", method="GET", route="d"
        )
        http.finish(status=200)
    finally:
        MeshTelemetry.tracer = original  # type: ignore[method-assign]
    assert call.span is None and not call.is_recording and not http.is_recording
