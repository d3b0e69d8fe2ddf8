"""Traces, metrics, admin endpoints and the access log of meshed workloads."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

import meshlib
from tests.integration.harness import wait_endpoints, wait_for
from tests.integration.inproc import start_chain

pytestmark = pytest.mark.integration


@pytest.fixture
def traced(tmp_path, control):
    """Meshes that share one in-memory span exporter; servers stopped at the end."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    made: list[meshlib.Mesh] = []
    servers = []

    def make(name: str, **kwargs) -> meshlib.Mesh:
        mesh = meshlib.Mesh(
            service=name,
            control_url=control.url,
            token=control.token(name),
            data_dir=tmp_path / f"w-{name}-{len(made)}",
            tracer_provider=kwargs.pop("tracer_provider", provider),
            **kwargs,
        )
        made.append(mesh)
        return mesh.start()

    def chain(names: list[str]):
        hops = start_chain(make, names)
        servers.extend(server for _, server in hops)
        return hops

    yield exporter, make, chain
    for server in servers:
        server.stop()
    for mesh in made:
        mesh.close()


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


def test_spans_link_across_three_hops(traced):
    """client → orders → inventory: one trace, server spans child of client spans, baggage."""
    exporter, make, chain = traced
    (orders, _), _ = chain(["orders", "inventory"])
    wait_endpoints(orders, "inventory")
    client = make("frontend")
    wait_endpoints(client, "orders")
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with client.client() as http:
            response = http.get("http://orders/hop")
    finally:
        otel_context.detach(token)
    assert response.status_code == 200, response.text
    assert response.json()["below"]["peer"].endswith("/sa/orders")
    # W3C baggage set by the first caller reaches both hops.
    assert response.json()["baggage"] == {"tenant": "acme"}
    assert response.json()["below"]["baggage"] == {"tenant": "acme"}
    # A server span ends just after its response is sent: give the last one a moment.
    wait_for(lambda: len(exporter.get_finished_spans()) >= 4, 5, "4 finished spans")
    spans = exporter.get_finished_spans()
    trace_ids = {s.context.trace_id for s in spans}
    assert len(trace_ids) == 1, spans
    clients = _by_kind(spans, SpanKind.CLIENT)
    servers = _by_kind(spans, SpanKind.SERVER)
    assert len(clients) == 2 and len(servers) == 2
    by_id = {s.context.span_id: s for s in spans}
    for server in servers:
        parent = by_id[server.parent.span_id]
        assert parent.kind == SpanKind.CLIENT
    outer_client = next(s for s in clients if s.attributes["mesh.destination.service"] == "orders")
    assert outer_client.attributes["server.address"] == "orders"
    assert outer_client.parent is None
    assert outer_client.attributes["mesh.peer.spiffe_id"].endswith("/sa/orders")
    assert outer_client.attributes["mesh.route"] == "default"
    assert outer_client.attributes["http.response.status_code"] == 200
    inner_server = next(
        s for s in servers if s.attributes.get("mesh.peer.spiffe_id", "").endswith("/orders")
    )
    assert inner_server.attributes["http.response.status_code"] == 200
    # through the real middleware: the FastAPI route template names the served span
    assert inner_server.name == "GET /hop" and inner_server.attributes["http.route"] == "/hop"


def _metrics(port: int) -> dict[str, list]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    return families


def test_metrics_match_known_traffic_and_parse_as_prometheus(traced):
    """After 20 calls, both sides' /metrics count exactly 20, by edge, in Prometheus text."""
    _, make, chain = traced
    ((orders_mesh, _),) = chain(["orders"])
    client = make("frontend")
    wait_endpoints(client, "orders")
    with client.client() as http:
        for _ in range(20):
            assert http.get("http://orders/hop").status_code == 200
    server = _metrics(orders_mesh.admin_port)
    counts = [
        s
        for s in server["http_server_request_duration_seconds"]
        if s.name.endswith("_count") and s.labels["mesh_source_workload"] == "frontend"
    ]
    assert [c.value for c in counts] == [20.0]
    assert counts[0].labels["http_response_status_code"] == "200"
    client_side = [
        s
        for s in _metrics(client.admin_port)["http_client_request_duration_seconds"]
        if s.name.endswith("_count")
    ]
    assert [c.value for c in client_side] == [20.0]
    assert client_side[0].labels["mesh_destination_service"] == "orders"
    expiry = _metrics(orders_mesh.admin_port)["mesh_certificate_expiry_seconds"]
    assert 0 < expiry[0].value <= 24 * 3600


def test_admin_endpoints(traced):
    """/live, /ready, /debug/snapshot and /debug/identity answer; no key is ever shown."""
    _, make, _ = traced
    mesh = make("orders")
    base = f"http://127.0.0.1:{mesh.admin_port}"
    assert httpx.get(f"{base}/live").json() == {"live": True}
    assert httpx.get(f"{base}/ready").json() == {"ready": True}
    snap = httpx.get(f"{base}/debug/snapshot").json()
    assert snap["snapshot"]["version"] == mesh.engine.version
    identity = httpx.get(f"{base}/debug/identity")
    assert identity.json()["spiffeId"] == "spiffe://mesh.local/ns/default/sa/orders"
    assert "PRIVATE KEY" not in identity.text
    assert httpx.get(f"{base}/nope").status_code == 404


class _Exploding(SpanProcessor):
    """A span pipeline that fails on every span (an exporter that is down, or worse)."""

    def on_start(self, span, parent_context=None):
        raise RuntimeError("span processor down")

    def on_end(self, span):
        raise RuntimeError("span processor down")


def test_telemetry_failures_never_fail_a_request(traced):
    """With a span pipeline that raises on every span, calls still succeed."""
    _, make, _ = traced
    broken = TracerProvider()
    broken.add_span_processor(_Exploding())
    orders = make("orders", tracer_provider=broken)
    from tests.integration.inproc import ThreadServer, chain_app

    server = ThreadServer(chain_app(orders, "orders", None), orders).start()
    try:
        client = make("frontend", tracer_provider=broken)
        wait_endpoints(client, "orders")
        with client.client() as http:
            for _ in range(5):
                assert http.get("http://orders/hop").status_code == 200
    finally:
        server.stop()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


def test_access_log_lines(traced):
    """The access log has one JSON line per request with trace id, peer, status, answer."""
    _, make, chain = traced
    ((orders_mesh, _),) = chain(["orders"])
    orders_mesh.telemetry.access_log = True
    client = make("frontend", access_log=True)
    wait_endpoints(client, "orders")
    handler = _Lines()
    logger = logging.getLogger("meshlib.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with client.client() as http:
            assert http.get("http://orders/hop").status_code == 200
        # The server logs once its response is sent, which may be after the client has it.
        wait_for(lambda: any(line["side"] == "server" for line in handler.lines), 5, "server line")
    finally:
        logger.removeHandler(handler)
    lines = handler.lines
    server = next(line for line in lines if line["side"] == "server")
    caller = next(line for line in lines if line["side"] == "client")
    assert server["peer"].endswith("/sa/frontend") and server["status"] == 200
    assert caller["destination"] == "orders.default" and caller["route"] == "default"
    assert server["trace_id"] == caller["trace_id"] and len(server["trace_id"]) == 32
    assert caller["answered_by"] == "upstream" and server["answered_by"] == "app"


def _grpc_server(mesh: meshlib.Mesh):
    """An in-process sync gRPC inventory server for *mesh*, registered once listening."""
    from concurrent import futures

    import grpc

    from tests.integration.grpc_app import SyncInventory, pb_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=mesh.grpc_server_interceptors()
    )
    pb_grpc.add_InventoryServicer_to_server(SyncInventory(mesh), server)
    port = mesh.add_secure_port(server, "127.0.0.1:0")
    server.start()
    mesh.set_endpoint("127.0.0.1", port)
    return server


def test_grpc_spans_link_across_three_hops(traced):
    """client → orders (gRPC) → inventory (gRPC): one trace, client/server spans paired."""
    from tests.integration.grpc_app import pb, pb_grpc

    exporter, make, _ = traced
    inventory = make("inventory")
    orders = make("orders")
    servers = [_grpc_server(inventory), _grpc_server(orders)]
    try:
        client = make("frontend")
        wait_endpoints(client, "orders")
        wait_endpoints(orders, "inventory")
        with client.grpc_channel("orders") as channel:
            reply = pb_grpc.InventoryStub(channel).GetItemVia(
                pb.ViaRequest(service="inventory", item="apple"), timeout=10
            )
        assert reply.upstream.item == "apple"
        wait_for(lambda: len(exporter.get_finished_spans()) >= 4, 5, "4 finished spans")
        spans = exporter.get_finished_spans()
        assert len({s.context.trace_id for s in spans}) == 1
        by_id = {s.context.span_id: s for s in spans}
        servers_seen = _by_kind(spans, SpanKind.SERVER)
        assert len(servers_seen) == 2 and len(_by_kind(spans, SpanKind.CLIENT)) == 2
        for span in servers_seen:
            assert by_id[span.parent.span_id].kind == SpanKind.CLIENT
            assert span.attributes["rpc.system.name"] == "grpc"
            assert span.attributes["rpc.response.status_code"] == "OK"
        callers = {s.attributes["mesh.peer.spiffe_id"].rsplit("/", 1)[1] for s in servers_seen}
        assert callers == {"frontend", "orders"}
        metrics = _metrics(orders.admin_port)
        served = [
            s
            for s in metrics["rpc_server_call_duration_seconds"]
            if s.name.endswith("_count") and s.labels["mesh_source_workload"] == "frontend"
        ]
        assert [s.value for s in served] == [1.0]
    finally:
        for server in servers:
            server.stop(0)


class _Collector:
    """A loopback OTLP/HTTP receiver: records each POST /v1/traces body."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        bodies: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                bodies.append(self.rfile.read(length) if self.path == "/v1/traces" else b"")
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.bodies = bodies
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_otlp_export_when_otel_variables_ask(traced, monkeypatch):
    """With OTEL_EXPORTER_OTLP_ENDPOINT set and no provider, spans reach an OTLP collector."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    _, make, chain = traced
    collector = _Collector()
    try:
        chain(["orders"])
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        client = make("frontend", tracer_provider=None)
        wait_endpoints(client, "orders")
        with client.client() as http:
            assert http.get("http://orders/hop").status_code == 200
        provider = client.telemetry._tracer_provider
        assert provider is not None, "no OTLP provider was installed"
        assert provider.force_flush(10_000)
        names = []
        for body in collector.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    names.extend(s.name for s in scope_spans.spans)
        assert "GET" in names
    finally:
        collector.close()
