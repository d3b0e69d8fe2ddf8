"""Server-side telemetry written once: one span and one metric sample per served request.

The ASGI middleware and both gRPC server interceptors use the same two calls::

    call = start_server_call(
        telemetry,              # MeshTelemetry, or None: then None comes back (no-op)
        protocol="http",        # or "grpc"
        method="GET",           # HTTP method, or the gRPC path "/pkg.Svc/Method"
        path="/items/1",        # HTTP only
        scheme="https",         # HTTP only
        carrier={"traceparent": "00-…"},   # only the propagation headers, or None
    )
    ...
    call.finish(status=200, peer=peer, flag=None)     # HTTP
    call.finish(code="OK", peer=peer)                  # gRPC

The SERVER span is started in the caller's context (W3C ``traceparent``/``baggage`` as the
global propagator reads them) and attached as the current context while the handler runs,
so the handler's own meshed calls continue the trace. With no propagation header in the
request, nothing is extracted. ``finish`` is idempotent and neither function nor any
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

    __slots__ = ("_done", "_telemetry", "method", "path", "protocol", "span", "started", "token")

    def __init__(self, telemetry: MeshTelemetry, protocol: Protocol, method: str, path: str):
        self._telemetry = telemetry
        self._done = False
        self.protocol = protocol
        self.method = method
        self.path = path
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
        try:
            if span is not None:
                trace_id = self._end_span(span, status, code, peer, flag)
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
                )
                return
            name = code or "UNKNOWN"
            telemetry.rpc_done(
                side="server", method=self.method, code=name, duration=duration, peer=peer
            )
            if name == "PERMISSION_DENIED":
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
    ) -> str | None:
        if not span.is_recording():
            span.end()
            return None
        if self.protocol == "http":
            span.set_attribute("http.response.status_code", 500 if status is None else status)
            if status is None or status >= 500:
                span.set_status(trace.StatusCode.ERROR)
        else:
            name = code or "UNKNOWN"
            span.set_attribute("rpc.grpc.status_code", name)
            if name != "OK":
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
) -> ServerCall | None:
    """Start observing one served request; None when *telemetry* is None. Never raises."""
    if telemetry is None:
        return None
    try:
        call = ServerCall(telemetry, protocol, method, path)
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
            name = method
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scheme,
            }
        else:
            name = method.strip("/")
            rpc_service, _, rpc_method = name.partition("/")
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": rpc_service,
                "rpc.method": rpc_method,
            }
        span = tracer.start_span(
            name, context=incoming, kind=trace.SpanKind.SERVER, attributes=attributes
        )
        call.span = span
        if span.is_recording() or incoming is not None:
            call.token = otel_context.attach(trace.set_span_in_context(span, incoming))
    except Exception:
        log.debug("telemetry failed", exc_info=True)
    return call
