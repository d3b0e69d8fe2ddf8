"""meshlib's spans and metrics against the installed ``opentelemetry-semantic-conventions``.

Every attribute name meshlib emits outside its own ``mesh.*`` namespace must exist in the
package and not be deprecated there; the required attributes of each span and metric
kind must be present with the right types; metric names and units are the package's;
tracer and meter carry the package's schema URL.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv import attributes as stable_attributes
from opentelemetry.semconv._incubating import attributes as incubating_attributes
from opentelemetry.semconv._incubating.metrics import rpc_metrics
from opentelemetry.semconv.attributes.http_attributes import HttpRequestMethodValues
from opentelemetry.semconv.metrics import http_metrics
from opentelemetry.semconv.schemas import Schemas
from opentelemetry.trace import SpanKind, StatusCode

from meshlib.errors import CircuitOpen
from meshlib.telemetry import semconv
from meshlib.telemetry.client import start_client_call
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.telemetry.server import start_server_call

_DEFINITION = re.compile(r'^([A-Z0-9_]+): Final = "([^"]+)"\n"""\n?(.*?)"""', re.M | re.S)


def _conventions() -> dict[str, tuple[bool, bool]]:
    """attribute name -> (stable, deprecated), read from the package's module sources."""
    found: dict[str, tuple[bool, bool]] = {}
    for package, stable in ((incubating_attributes, False), (stable_attributes, True)):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for _, value, doc in _DEFINITION.findall(inspect.getsource(module)):
                deprecated = doc.strip().startswith("Deprecated")
                if stable or value not in found:
                    found[value] = (stable, deprecated)
    return found


CONVENTIONS = _conventions()


def _assert_current(names: set[str]) -> None:
    for name in names:
        if name.startswith("mesh.") or name == "otel.metric.overflow":
            continue
        assert name in CONVENTIONS, f"{name} is no attribute of the semantic conventions"
        assert not CONVENTIONS[name][1], f"{name} is deprecated in the semantic conventions"


@pytest.fixture
def sdk() -> Iterator[tuple[MeshTelemetry, InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = MeshTelemetry(
        service="frontend",
        namespace="default",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    yield telemetry, exporter, reader
    meter_provider.shutdown()


def _metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.schema_url == semconv.SCHEMA_URL
            for metric in scope.metrics:
                out[metric.name] = metric
    return out


def test_every_constant_is_the_packages_current_name():
    """Each attribute constant of meshlib.telemetry.semconv exists and is not deprecated;
    the schema URL is one the package names; the HTTP methods are the package's."""
    assert semconv.SCHEMA_URL in {s.value for s in Schemas}
    constants = {
        value
        for name, value in vars(semconv).items()
        if name.isupper() and isinstance(value, str) and "." in value and name != "SCHEMA_URL"
    }
    assert len(constants) >= 15
    _assert_current(constants)
    for stable in ("http.request.method", "http.route", "server.port", "url.full", "error.type"):
        assert CONVENTIONS[stable][0], stable
    assert {m.value for m in HttpRequestMethodValues} - {"_OTHER"} == semconv.HTTP_METHODS
    assert HttpRequestMethodValues.OTHER.value == semconv.OTHER
    # the deprecated RPC names meshlib no longer sends really are deprecated there
    for old in ("rpc.system", "rpc.service", "rpc.grpc.status_code"):
        assert CONVENTIONS[old][1], old


def test_http_client_span_and_metric(sdk):
    """CLIENT span: name GET, method, server.address/port, url.full, status; error.type and
    ERROR status from 400 on; the metric's name, unit and required attributes."""
    telemetry, exporter, reader = sdk
    call = start_client_call(
        telemetry, protocol="http", service="orders.default", method="GET", route="default",
        url=httpx.URL("http://orders/items/7?x=1"),
    )  # fmt: skip
    call.finish(status=200)
    failed = start_client_call(
        telemetry, protocol="http", service="orders.default", method="POST", route="default",
        url="https://orders:8443/items",
    )  # fmt: skip
    failed.finish(status=404)
    ok, missing = exporter.get_finished_spans()
    assert ok.kind == SpanKind.CLIENT and ok.name == "GET"
    assert ok.instrumentation_scope is not None
    assert ok.instrumentation_scope.schema_url == semconv.SCHEMA_URL
    attributes = dict(ok.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["server.address"] == "orders"
    assert attributes["server.port"] == 80
    assert attributes["url.full"] == "http://orders/items/7?x=1"
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes and ok.status.status_code == StatusCode.UNSET
    failing = dict(missing.attributes or {})
    assert failing["server.port"] == 8443 and failing["error.type"] == "404"
    assert missing.status.status_code == StatusCode.ERROR
    _assert_current(set(attributes) | set(failing))
    metric = _metrics(reader)[http_metrics.HTTP_CLIENT_REQUEST_DURATION]
    assert metric.unit == "s"
    points = list(metric.data.data_points)
    assert len(points) == 2
    for point in points:
        keys = set(point.attributes)
        assert {"http.request.method", "server.address", "server.port"} <= keys
        _assert_current(keys)
    assert {p.attributes.get("error.type") for p in points} == {None, "404"}


def test_http_client_error_type_is_the_exception(sdk):
    """A call ending in an exception: error.type is its class name, on span and metric."""
    telemetry, exporter, reader = sdk
    call = start_client_call(
        telemetry, protocol="http", service="orders.default", method="GET", route="default",
        url="http://orders/x",
    )  # fmt: skip
    call.finish(error=CircuitOpen("every breaker open", service="orders.default"))
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["error.type"] == "CircuitOpen"
    (point,) = _metrics(reader)[http_metrics.HTTP_CLIENT_REQUEST_DURATION].data.data_points
    assert point.attributes["error.type"] == "CircuitOpen"


def _served(telemetry: MeshTelemetry, path: str, method: str = "GET") -> None:
    """One request through a FastAPI app observed as the ASGI middleware observes it."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> JSONResponse:
        return JSONResponse({"id": item_id}, status_code=500 if item_id == 0 else 200)

    async def observed(scope: Any, receive: Any, send: Any) -> None:
        call = start_server_call(
            telemetry, protocol="http", method=scope["method"], path=scope["path"],
            scheme=scope.get("scheme", "http"), scope=scope,
        )  # fmt: skip
        assert call is not None
        status = [500]

        async def seen(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, seen)
        finally:
            call.finish(status=status[0], peer="spiffe://mesh.local/ns/default/sa/shop")

    async def run() -> None:
        transport = httpx.ASGITransport(app=observed, client=("10.0.0.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://orders:8080") as c:
            await c.request(method, path)

    asyncio.run(run())


def test_http_server_span_named_by_route(sdk):
    """SERVER span: 'GET /items/{item_id}', http.route, url.path/scheme, server.address/port,
    network.protocol.version, client.address; a 5xx sets error.type; the metric carries
    http.route and url.scheme, never the path."""
    telemetry, exporter, reader = sdk
    _served(telemetry, "/items/3")
    _served(telemetry, "/items/0")
    _served(telemetry, "/nowhere")
    ok, failed, unrouted = exporter.get_finished_spans()
    assert ok.kind == SpanKind.SERVER and ok.name == "GET /items/{item_id}"
    attributes = dict(ok.attributes or {})
    assert attributes["http.route"] == "/items/{item_id}"
    assert attributes["url.path"] == "/items/3"
    assert attributes["url.scheme"] == "http"
    assert attributes["server.address"] == "orders"
    assert attributes["server.port"] == 8080
    assert attributes["network.protocol.version"] == "1.1"
    assert attributes["client.address"] == "10.0.0.9"
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes
    failing = dict(failed.attributes or {})
    assert failing["error.type"] == "500" and failed.status.status_code == StatusCode.ERROR
    assert unrouted.name == "GET" and "http.route" not in (unrouted.attributes or {})
    _assert_current(set(attributes) | set(failing))
    metric = _metrics(reader)[http_metrics.HTTP_SERVER_REQUEST_DURATION]
    assert metric.unit == "s"
    routes = set()
    for point in metric.data.data_points:
        keys = set(point.attributes)
        assert {"http.request.method", "url.scheme", "http.response.status_code"} <= keys
        assert "url.path" not in keys
        _assert_current(keys)
        routes.add(point.attributes.get("http.route"))
    assert routes == {"/items/{item_id}", None}


def test_unknown_http_method_is_other(sdk):
    """A method outside the conventions' list is _OTHER (span name HTTP), original kept."""
    telemetry, exporter, reader = sdk
    call = start_client_call(
        telemetry, protocol="http", service="a.default", method="BREW", route="d",
        url="http://a/pot",
    )  # fmt: skip
    call.finish(status=200)
    (span,) = exporter.get_finished_spans()
    assert span.name == "HTTP" and span.attributes is not None
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "BREW"
    (point,) = _metrics(reader)[http_metrics.HTTP_CLIENT_REQUEST_DURATION].data.data_points
    assert point.attributes["http.request.method"] == "_OTHER"


def _rpc_attributes(span: ReadableSpan) -> dict[str, Any]:
    attributes = dict(span.attributes or {})
    assert attributes["rpc.system.name"] == "grpc"
    _assert_current(set(attributes))
    return attributes


def test_grpc_client_and_server_spans_and_metrics(sdk):
    """gRPC: span named pkg.Service/Method; rpc.system.name, rpc.method (fully qualified),
    rpc.response.status_code as the code's name; error.type for errors (any non-OK on the
    client, server-error codes on the server)."""
    telemetry, exporter, reader = sdk
    client = start_client_call(
        telemetry, protocol="grpc", service="orders.default", method="/shop.Orders/Get",
        route="d",
    )  # fmt: skip
    client.finish(code="NOT_FOUND")
    for method, code in (
        ("/shop.Orders/Get", "OK"),
        ("/shop.Orders/Get", "NOT_FOUND"),
        ("/shop.Orders/Put", "UNIMPLEMENTED"),
    ):
        served = start_server_call(telemetry, protocol="grpc", method=method)
        assert served is not None
        served.finish(code=code, peer="spiffe://mesh.local/ns/default/sa/shop")
    made, ok, not_found, unknown = exporter.get_finished_spans()
    assert made.kind == SpanKind.CLIENT and made.name == "shop.Orders/Get"
    attributes = _rpc_attributes(made)
    assert attributes["rpc.method"] == "shop.Orders/Get"
    assert attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert attributes["error.type"] == "NOT_FOUND"
    assert ok.kind == SpanKind.SERVER and "error.type" not in _rpc_attributes(ok)
    assert "error.type" not in _rpc_attributes(not_found)  # a client's fault, not the server's
    assert not_found.status.status_code == StatusCode.UNSET
    other = _rpc_attributes(unknown)
    assert other["rpc.method"] == "shop.Orders/Put" and other["error.type"] == "UNIMPLEMENTED"
    assert unknown.status.status_code == StatusCode.ERROR
    metrics = _metrics(reader)
    for name in (rpc_metrics.RPC_CLIENT_CALL_DURATION, rpc_metrics.RPC_SERVER_CALL_DURATION):
        assert metrics[name].unit == "s"
        for point in metrics[name].data.data_points:
            keys = set(point.attributes)
            assert {"rpc.system.name", "rpc.method", "rpc.response.status_code"} <= keys
            assert isinstance(point.attributes["rpc.response.status_code"], str)
            _assert_current(keys)
    served_methods = {
        p.attributes["rpc.method"]
        for p in metrics[rpc_metrics.RPC_SERVER_CALL_DURATION].data.data_points
    }
    assert served_methods == {"shop.Orders/Get", "shop.Orders/Put"}


def test_url_full_hides_credentials_and_signatures():
    """Credentials in the URL and signing query values are REDACTED in url.full."""
    assert semconv.redact_url("http://orders/items?x=1") == "http://orders/items?x=1"
    assert (
        semconv.redact_url("https://ann:secret@orders:8443/a?b=1")
        == "https://REDACTED:REDACTED@orders:8443/a?b=1"
    )
    assert (
        semconv.redact_url("http://s3/obj?AWSAccessKeyId=AK&Expires=9&Signature=abc#f")
        == "http://s3/obj?AWSAccessKeyId=REDACTED&Expires=9&Signature=REDACTED#f"
    )
    assert semconv.redact_url("http://orders/a?q=me@host") == "http://orders/a?q=me@host"
