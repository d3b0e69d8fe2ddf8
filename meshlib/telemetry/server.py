"""Server-side telemetry written once: one span and one metric sample per served request.

The ASGI middleware and both gRPC server interceptors use the same two calls::

    call = start_server_call(
        telemetry,              # MeshTelemetry, or None: then None comes back (no-op)
        protocol="http",        # or "grpc"
        method="GET",           # HTTP method, or the gRPC path "/pkg.Svc/Method"
        path="/items/1",        # HTTP only
        scheme="https",         # HTTP only
        carrier={"traceparent": "00-…"},   # only the propagation headers, or None
        scope=scope,            # HTTP: the ASGI scope, read for http.route once the app ran
    )
    ...
    call.finish(status=200, peer=peer, flag=None)     # HTTP
    call.finish(code="OK", peer=peer)                  # gRPC

The SERVER span is started in the caller's context (W3C ``traceparent``/``baggage`` as the
global propagator reads them) and attached as the current context while the handler runs,
so the handler's own meshed calls continue the trace. With no propagation header in the
request, nothing is extracted. Span names and attributes follow
:mod:`meshlib.telemetry.semconv`: a served HTTP request is named ``GET /items/{id}`` when
the app's route template is known (Starlette/FastAPI leave the matched route in
``scope["route"]``), else ``GET``. ``finish`` is idempotent and neither function nor any
method of :class:`ServerCall` ever raises (DESIGN.md invariant 7).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, get_global_textmap

from meshlib.telemetry.semconv import (
    CLIENT_ADDRESS,
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
    NETWORK_PROTOCOL_VERSION,
    OTHER,
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_PATH,
    URL_SCHEME,
    grpc_error_type,
    http_method,
)

if TYPE_CHECKING:
    from meshlib.telemetry.metrics import MeshTelemetry

__all__ = ["ServerCall", "propagation_fields", "propagation_keys", "start_server_call"]

log = logging.getLogger("meshlib.telemetry")

Protocol = Literal["http", "grpc"]

_fields: tuple[object, frozenset[str], frozenset[bytes]] = (None, frozenset(), frozenset())


def _cached_fields() -> tuple[object, frozenset[str], frozenset[bytes]]:
    global _fields
    propagator = get_global_textmap()
    cached = _fields
    if cached[0] is propagator:
        return cached
    try:
        names = frozenset(name.lower() for name in propagator.fields)
    except Exception:
        names = frozenset({"traceparent", "tracestate", "baggage"})
    _fields = (propagator, names, frozenset(n.encode("latin-1") for n in names))
    return _fields


def propagation_fields() -> frozenset[str]:
    """The lower-case header names the global propagator reads (cached per propagator)."""
    return _cached_fields()[1]


def propagation_keys() -> frozenset[bytes]:
    """:func:`propagation_fields` as ASGI header keys (lower-case bytes)."""
    return _cached_fields()[2]


class ServerCall:
    """The telemetry of one served request; see the module docstring."""

    __slots__ = (
        "_done",
        "_telemetry",
        "method",
        "path",
        "protocol",
        "scheme",
        "scope",
        "span",
        "started",
        "token",
    )

    def __init__(
        self,
        telemetry: MeshTelemetry,
        protocol: Protocol,
        method: str,
        path: str,
        scheme: str = "https",
        scope: Mapping[str, Any] | None = None,
    ):
        self._telemetry = telemetry
        self._done = False
        self.protocol = protocol
        self.method = method
        self.path = path
        self.scheme = scheme
        self.scope = scope
        self.started = time.perf_counter()
        self.span: trace.Span | None = None
        self.token: Any = None

    def finish(
        self,
        *,
        status: int | None = None,
        code: str | None = None,
        peer: str | None = None,
        flag: str | None = None,
    ) -> None:
        """End the span and record the request (*status* for HTTP, *code* for gRPC)."""
        if self._done:
            return
        self._done = True
        duration = time.perf_counter() - self.started
        trace_id: str | None = None
        try:
            if self.token is not None:
                otel_context.detach(self.token)
        except Exception:
            log.debug("telemetry failed", exc_info=True)
        span = self.span
        scope = self.scope
        route = _route_of(scope)
        try:
            if span is not None:
                trace_id = self._end_span(span, status, code, peer, flag, route)
        except Exception:
            log.debug("telemetry failed", exc_info=True)
        telemetry = self._telemetry
        try:
            if self.protocol == "http":
                telemetry.http_server_done(
                    method=self.method,
                    status=500 if status is None else status,
                    duration=duration,
                    peer=peer,
                    flag=flag,
                    path=self.path,
                    trace_id=trace_id,
                    route=route,
                    scheme=self.scheme,
                    protocol_version=scope.get("http_version") if scope is not None else None,
                )
                return
            name = code or "UNKNOWN"
            telemetry.rpc_done(
                side="server", method=self.method, code=name, duration=duration, peer=peer
            )
            if name == "PERMISSION_DENIED":
                # by method: only registered methods reach the interceptors (bounded)
                telemetry.authz_denials.add(1, {"rpc.method": self.method})
            elif name == "RESOURCE_EXHAUSTED":
                telemetry.rate_limited.add(1, {"rpc.method": self.method})
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def _end_span(
        self,
        span: trace.Span,
        status: int | None,
        code: str | None,
        peer: str | None,
        flag: str | None,
        route: str | None,
    ) -> str | None:
        if not span.is_recording():
            span.end()
            return None
        if self.protocol == "http":
            answered = 500 if status is None else status
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, answered)
            if route is not None:
                span.set_attribute(HTTP_ROUTE, route)
                known = http_method(self.method)
                span.update_name(f"{self.method if known != OTHER else 'HTTP'} {route}")
            if answered >= 500:  # a server span's error: 5xx only
                span.set_attribute(ERROR_TYPE, str(answered))
                span.set_status(trace.StatusCode.ERROR)
        else:
            name = code or "UNKNOWN"
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, name)
            error = grpc_error_type(name, server=True)
            if error is not None:
                span.set_attribute(ERROR_TYPE, error)
                span.set_status(trace.StatusCode.ERROR, name)
        if peer is not None:
            span.set_attribute("mesh.peer.spiffe_id", peer)
        if flag is not None:
            span.set_attribute("mesh.flag", flag)
        context = span.get_span_context()
        span.end()
        return format(context.trace_id, "032x") if context.is_valid else None


def start_server_call(
    telemetry: MeshTelemetry | None,
    *,
    protocol: Protocol,
    method: str,
    path: str = "",
    scheme: str = "https",
    carrier: Mapping[str, str] | None = None,
    scope: Mapping[str, Any] | None = None,
) -> ServerCall | None:
    """Start observing one served request; None when *telemetry* is None. Never raises.

    *scope* (HTTP): the request's ASGI scope; the route template is read from it when the
    request is finished, and the server, client and protocol version for a recording span.
    """
    if telemetry is None:
        return None
    try:
        call = ServerCall(telemetry, protocol, method, path, scheme, scope)
    except Exception:
        log.debug("telemetry failed", exc_info=True)
        return None
    try:
        incoming = extract(carrier) if carrier else None  # the caller's span and baggage
        tracer = telemetry.tracing()
        if tracer is None:  # no span; the caller's context is current, for the app's calls
            if incoming is not None:
                call.token = otel_context.attach(incoming)
            return call
        if protocol == "http":
            known = http_method(method)
            name = method if known != OTHER else "HTTP"
            attributes: dict[str, Any] = {
                HTTP_REQUEST_METHOD: known,
                URL_PATH: path,
                URL_SCHEME: scheme,
            }
            if known == OTHER:
                attributes[HTTP_REQUEST_METHOD_ORIGINAL] = method
            if scope is not None:
                _scope_attributes(scope, scheme, attributes)
        else:
            name = method.strip("/")
            attributes = {RPC_SYSTEM_NAME: "grpc", RPC_METHOD: name}
        span = tracer.start_span(
            name, context=incoming, kind=trace.SpanKind.SERVER, attributes=attributes
        )
        call.span = span
        if span.is_recording() or incoming is not None:
            call.token = otel_context.attach(trace.set_span_in_context(span, incoming))
    except Exception:
        log.debug("telemetry failed", exc_info=True)
    return call


def _route_of(scope: Mapping[str, Any] | None) -> str | None:
    """The route template the app matched (Starlette/FastAPI), or None."""
    if scope is None:
        return None
    route = getattr(scope.get("route"), "path_format", None)
    return route if isinstance(route, str) else None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _scope_attributes(scope: Mapping[str, Any], scheme: str, attributes: dict[str, Any]) -> None:
    """server.*, client.address and network.protocol.version of a recording span."""
    host: str | None = None
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.decode("latin-1")
            break
    port: int | None = None
    if host:
        if host.startswith("["):  # [v6]:port
            end = host.find("]")
            name, tail = host[1:end], host[end + 1 :].removeprefix(":")
        else:
            name, _, tail = host.partition(":")
        host, port = name, int(tail) if tail.isdigit() else None
    else:
        server = scope.get("server")
        if server:
            host, port = server[0], server[1]
    if host:
        attributes[SERVER_ADDRESS] = host
        attributes[SERVER_PORT] = port if port is not None else _DEFAULT_PORTS.get(scheme, 0)
    client = scope.get("client")
    if client:
        attributes[CLIENT_ADDRESS] = client[0]
    version = scope.get("http_version")
    if version:
        attributes[NETWORK_PROTOCOL_VERSION] = version
