"""Client-side telemetry written once: one span and one metric sample per outbound call.

Every client flavour (httpx sync/async, gRPC sync/aio) uses the same two calls::

    call = start_client_call(
        telemetry,                  # MeshTelemetry, or None: then everything is a no-op
        protocol="http",            # or "grpc"
        service=service.key,        # "orders.default"
        method="GET",               # HTTP method, or the gRPC path "/pkg.Svc/Method"
        route=plan.name,
        url=request.url,            # HTTP only: str() of it is url.full (read only if needed)
        peer_spiffe_id=service.spiffe_id,
        fault_delay=fault.delay, fault_abort=fault.abort_http,   # optional
    )
    headers.update(call.trace_headers)   # W3C traceparent/baggage, same for every attempt
    call.retrying(attempt=2, endpoint="10.0.0.7:8443")          # optional span event
    ...
    call.finish(status=503, attempts=2, flag=None, error=None)  # HTTP
    call.finish(code="UNAVAILABLE", attempts=3)                  # gRPC

``finish_client_call(call, ...)`` is the same as ``call.finish(...)``. ``finish`` is
idempotent (the second call does nothing), and neither function nor any method of
:class:`ClientCall` ever raises (DESIGN.md invariant 7): a failing tracer or meter is
logged at DEBUG and the call goes on. ``trace_headers`` is computed once at start, so the
retry loop adds no propagation cost per attempt.

*flag* is the mesh's answer flag (``CIRCUIT_OPEN``, …): pass the response's
``x-mesh-flag`` header when there is one; when omitted, it is taken from *error* when that
is a :class:`meshlib.errors.RequestError`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import inject

from meshlib.telemetry.semconv import (
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    OTHER,
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
    grpc_error_type,
    http_method,
    redact_url,
    server_of_url,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from meshlib.telemetry.metrics import MeshTelemetry

__all__ = [
    "ClientCall",
    "Protocol",
    "finish_client_call",
    "passthrough_headers",
    "start_client_call",
]

log = logging.getLogger("meshlib.telemetry")

Protocol = Literal["http", "grpc"]


class ClientCall:
    """The telemetry of one outbound call (all its attempts); see the module docstring."""

    __slots__ = (
        "_done",
        "_telemetry",
        "context",
        "method",
        "protocol",
        "route",
        "service",
        "span",
        "started",
        "trace_headers",
        "url",
    )

    def __init__(
        self,
        telemetry: MeshTelemetry | None,
        *,
        protocol: Protocol,
        service: str,
        method: str,
        route: str,
        url: object = None,
    ) -> None:
        self._telemetry = telemetry
        self._done = telemetry is None
        self.protocol = protocol
        self.service = service
        self.method = method
        self.route = route
        self.url = url
        self.span: trace.Span | None = None
        self.context: Context | None = None
        self.trace_headers: dict[str, str] = {}
        self.started = time.perf_counter()

    @property
    def is_recording(self) -> bool:
        """True while the call still has a span or metrics to record."""
        return not self._done

    def retrying(self, *, attempt: int, endpoint: str) -> None:
        """Note on the span that attempt number *attempt* goes to *endpoint*."""
        span = self.span
        if span is None or self._done:
            return
        try:
            span.add_event("mesh.retry", {"mesh.attempt": attempt, "mesh.endpoint": endpoint})
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def finish(
        self,
        *,
        status: int | None = None,
        code: str | None = None,
        error: BaseException | None = None,
        attempts: int = 1,
        flag: str | None = None,
    ) -> None:
        """End the span and record the call's metrics; later calls do nothing; never raises.

        Args:
            status: the HTTP status of the final response (HTTP calls).
            code: the gRPC status code name, ``"OK"`` included (gRPC calls).
            error: the exception the call ended with, if any.
            attempts: tries sent, the first included.
            flag: the mesh answer flag; defaults to ``error.flag`` for mesh errors.
        """
        if self._done:
            return
        self._done = True
        telemetry = self._telemetry
        if telemetry is None:
            return
        try:
            duration = time.perf_counter() - self.started
            if flag is None and error is not None:
                flag = _flag_of(error)
            error_type = type(error).__name__ if error is not None else None
            if self.protocol == "grpc":
                code = code or ("UNKNOWN" if error is not None else "OK")
                error_type = grpc_error_type(code, server=False) or error_type
            elif error_type is None and status is not None and status >= 400:
                error_type = str(status)
            trace_id = self._end_span(status, code, error, error_type, attempts, flag)
            if self.protocol == "grpc":
                telemetry.rpc_client_done(
                    service=self.service,
                    method=self.method,
                    code=code or "OK",
                    duration=duration,
                    attempts=attempts,
                    flag=flag,
                )
            else:
                address, port = server_of_url(self.url)
                telemetry.http_client_done(
                    service=self.service,
                    method=self.method,
                    status=status,
                    error=type(error).__name__ if error is not None else None,
                    address=address,
                    port=port,
                    duration=duration,
                    attempts=attempts,
                    flag=flag,
                    route=self.route,
                    path=_path_of(self.url) if telemetry.access_log else "",
                    trace_id=trace_id,
                )
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def _end_span(
        self,
        status: int | None,
        code: str | None,
        error: BaseException | None,
        error_type: str | None,
        attempts: int,
        flag: str | None,
    ) -> str | None:
        span = self.span
        if span is None:
            return None
        span.set_attribute("mesh.attempts", max(attempts, 1))
        if status is not None:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
        if code is not None:
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, code)
        if flag is not None:
            span.set_attribute("mesh.flag", flag)
        if error_type is not None:
            # a client span's error: an exception, an HTTP status >= 400, a gRPC code not OK
            span.set_attribute(ERROR_TYPE, error_type)
            described = str(error)[:200] if error is not None else (code or "")
            span.set_status(trace.StatusCode.ERROR, described)
        context = span.get_span_context()
        span.end()
        return format(context.trace_id, "032x") if context.is_valid else None


def start_client_call(
    telemetry: MeshTelemetry | None,
    *,
    protocol: Protocol,
    service: str,
    method: str,
    route: str,
    url: object = None,
    peer_spiffe_id: str | None = None,
    fault_delay: float = 0.0,
    fault_abort: int | str | None = None,
) -> ClientCall:
    """Open the CLIENT span of one outbound call; never raises.

    Args:
        telemetry: the workload's :class:`MeshTelemetry`; ``None`` gives a no-op call.
        protocol: ``"http"`` or ``"grpc"``.
        service: the destination's key (``name.namespace``).
        method: the HTTP method, or the gRPC full method ``/pkg.Service/Method``.
        route: the name of the route the plan matched.
        url: the full URL (HTTP), or an object whose ``str()`` is (an ``httpx.URL``):
            turned into text only for a recording span or the access log.
        peer_spiffe_id: the identity the destination must present.
        fault_delay, fault_abort: an injected fault, noted on the span when set.

    Returns:
        The call; pass its ``trace_headers`` on every attempt and ``finish`` it once.
    """
    call = ClientCall(
        telemetry, protocol=protocol, service=service, method=method, route=route, url=url
    )
    if telemetry is None:
        return call
    try:
        tracer = telemetry.tracing()
        if tracer is None:  # no span; the served call's trace and baggage still travel
            call.trace_headers = passthrough_headers() or {}
            return call
        destination, _, namespace = service.partition(".")
        attributes: dict[str, str | int | float] = {
            "mesh.route": route,
            "mesh.destination.service": destination,
            "mesh.destination.namespace": namespace,
        }
        if peer_spiffe_id is not None:
            attributes["mesh.peer.spiffe_id"] = peer_spiffe_id
        if protocol == "grpc":
            name = method.strip("/")
            attributes[RPC_SYSTEM_NAME] = "grpc"
            attributes[RPC_METHOD] = name
            attributes[SERVER_ADDRESS] = destination
        else:
            known = http_method(method)
            name = method if known != OTHER else "HTTP"
            attributes[HTTP_REQUEST_METHOD] = known
            if known == OTHER:
                attributes[HTTP_REQUEST_METHOD_ORIGINAL] = method
            if url is not None:
                attributes[URL_FULL] = redact_url(str(url))
                address, port = server_of_url(url)
                if address is not None:
                    attributes[SERVER_ADDRESS] = address
                    if port is not None:
                        attributes[SERVER_PORT] = port
        if fault_delay > 0 or fault_abort is not None:
            attributes["mesh.fault.delay"] = fault_delay
            if fault_abort is not None:
                attributes["mesh.fault.abort"] = fault_abort
        span = tracer.start_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)
        call.span = span
        # built on the current context, so the caller's baggage travels even untraced
        call.context = trace.set_span_in_context(span)
        inject(call.trace_headers, context=call.context)
    except Exception:
        log.debug("telemetry failed", exc_info=True)
    return call


def passthrough_headers() -> dict[str, str] | None:
    """The current context's trace and baggage as headers, for a call with no span of its own.

    None when nothing is attached (the common case outside a traced request): no
    propagator runs.
    """
    current = otel_context.get_current()
    if not current:
        return None
    carrier: dict[str, str] = {}
    inject(carrier, context=current)
    return carrier or None


def finish_client_call(
    call: ClientCall,
    *,
    status: int | None = None,
    code: str | None = None,
    error: BaseException | None = None,
    attempts: int = 1,
    flag: str | None = None,
) -> None:
    """``call.finish(...)``: end the span and record the metrics once; never raises."""
    call.finish(status=status, code=code, error=error, attempts=attempts, flag=flag)


def _flag_of(error: BaseException) -> str | None:
    flag = getattr(error, "flag", None)
    return flag if isinstance(flag, str) else None


def _path_of(url: object) -> str:
    text = "" if url is None else str(url)
    if not text:
        return ""
    # scheme://authority/path?query: the path alone, without parsing the whole URL
    _, sep, rest = text.partition("://")
    path = "/" + rest.partition("/")[2] if sep else text
    return path.partition("?")[0]
