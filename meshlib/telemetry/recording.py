"""The recording half of :class:`~meshlib.telemetry.metrics.MeshTelemetry`.

One method per finished event (a served request, a call made, a breaker transition, …),
each building the attribute set of its metric and swallowing its own errors. Attribute
names and values follow :mod:`meshlib.telemetry.semconv`; every label value is bounded:
methods outside the HTTP conventions' list are ``_OTHER``, gRPC methods are those the
server registered (the interceptors observe no other call), paths are never labels
(``http.route`` is the app's route template), status codes are numbers, and the mesh
labels name services and endpoints of the snapshot.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, Protocol

from meshlib.telemetry.semconv import (
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
    NETWORK_PROTOCOL_VERSION,
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_SCHEME,
    grpc_error_type,
    http_method,
)
from meshlib.telemetry.series import destination

__all__ = ["Counter", "Histogram", "Recorder", "rpc_method_of", "workload_of"]

log = logging.getLogger("meshlib.telemetry")
access_log = logging.getLogger("meshlib.access")

UNKNOWN = "unknown"


class Histogram(Protocol):
    """What meshlib needs of a histogram (the OpenTelemetry API's and LocalMeter's)."""

    def record(self, amount: float, attributes: Any = None, context: Any = None) -> None: ...


class Counter(Protocol):
    """What meshlib needs of a counter."""

    def add(self, amount: float, attributes: Any = None, context: Any = None) -> None: ...


@functools.lru_cache(maxsize=4096)  # few distinct callers; a hit costs no parse
def workload_of(spiffe_id: str | None) -> tuple[str, str]:
    """(service, namespace) of a workload SPIFFE ID; ("unknown", "unknown") otherwise."""
    if not spiffe_id:
        return UNKNOWN, UNKNOWN
    parts = spiffe_id.split("/")
    # spiffe: '' td ns <ns> sa <svc>
    if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa":
        return parts[6], parts[4]
    return UNKNOWN, UNKNOWN


def rpc_method_of(method: str) -> str:
    """``rpc.method`` of the full method ``/pkg.Service/Method``: ``pkg.Service/Method``."""
    return method[1:] if method.startswith("/") else method


class Recorder:
    """Recording methods over the instruments :class:`MeshTelemetry` creates."""

    service: str
    namespace: str
    access_log: bool
    http_server: Histogram
    http_client: Histogram
    rpc_server: Histogram
    rpc_client: Histogram
    retries: Counter
    budget_exhausted: Counter
    breaker_transitions: Counter
    ejections: Counter
    mesh_failures: Counter
    authz_denials: Counter
    rate_limited: Counter

    def http_server_done(
        self,
        *,
        method: str,
        status: int,
        duration: float,
        peer: str | None,
        flag: str | None,
        path: str,
        trace_id: str | None,
        route: str | None = None,
        scheme: str = "https",
        protocol_version: str | None = None,
    ) -> None:
        """One served HTTP request (*route*: the app's route template, when known)."""
        try:
            source, source_ns = workload_of(peer)
            attributes: dict[str, Any] = {
                HTTP_REQUEST_METHOD: http_method(method),
                HTTP_RESPONSE_STATUS_CODE: status,
                URL_SCHEME: scheme,
                "mesh.source.workload": source,
                "mesh.source.namespace": source_ns,
            }
            if route is not None:
                attributes[HTTP_ROUTE] = route
            if protocol_version is not None:
                attributes[NETWORK_PROTOCOL_VERSION] = protocol_version
            if status >= 500:
                attributes[ERROR_TYPE] = str(status)
            self.http_server.record(duration, attributes)
            if flag == "AUTHZ_DENIED":
                self.authz_denials.add(1, {"mesh.source.workload": source})
            elif flag == "RATE_LIMITED":
                self.rate_limited.add(1, {"mesh.source.workload": source})
            if self.access_log:
                self._access(
                    "server", method, path, status, duration, peer, None, flag, trace_id, 1
                )
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def http_client_done(
        self,
        *,
        service: str,
        method: str,
        status: int | None,
        error: str | None,
        duration: float,
        attempts: int,
        flag: str | None,
        route: str,
        path: str,
        trace_id: str | None,
        address: str | None = None,
        port: int | None = None,
    ) -> None:
        """One call made through the mesh transport (all its attempts)."""
        try:
            labels = destination(service)
            attributes: dict[str, Any] = {
                HTTP_REQUEST_METHOD: http_method(method),
                **labels,
                "mesh.route": route,
            }
            if address is not None:
                attributes[SERVER_ADDRESS] = address
                if port is not None:
                    attributes[SERVER_PORT] = port
            if status is not None:
                attributes[HTTP_RESPONSE_STATUS_CODE] = status
            if error is not None:
                attributes[ERROR_TYPE] = error
            elif status is not None and status >= 400:
                attributes[ERROR_TYPE] = str(status)
            self.http_client.record(duration, attributes)
            self._mesh_counters(labels, attempts, flag)
            if self.access_log:
                self._access(
                    "client", method, path, status, duration, None, service, flag or error,
                    trace_id, attempts, route,
                )  # fmt: skip
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def rpc_done(
        self,
        *,
        side: str,
        method: str,
        code: str,
        duration: float,
        peer: str | None = None,
        service: str | None = None,
    ) -> None:
        """One gRPC call, served (*side* ``server``) or made (``client``).

        *method* is the full method (``/pkg.Service/Method``).
        """
        try:
            server = side == "server"
            attributes: dict[str, Any] = {
                RPC_SYSTEM_NAME: "grpc",
                RPC_METHOD: rpc_method_of(method),
                RPC_RESPONSE_STATUS_CODE: code,
            }
            error = grpc_error_type(code, server=server)
            if error is not None:
                attributes[ERROR_TYPE] = error
            if server:
                source, source_ns = workload_of(peer)
                attributes["mesh.source.workload"] = source
                attributes["mesh.source.namespace"] = source_ns
                self.rpc_server.record(duration, attributes)
            else:
                labels = destination(service or UNKNOWN)
                attributes[SERVER_ADDRESS] = labels["mesh.destination.service"]
                attributes.update(labels)
                self.rpc_client.record(duration, attributes)
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def rpc_client_done(
        self,
        *,
        service: str,
        method: str,
        code: str,
        duration: float,
        attempts: int = 1,
        flag: str | None = None,
    ) -> None:
        """One gRPC call made through the mesh (all its attempts)."""
        try:
            self.rpc_done(
                side="client", method=method, code=code, duration=duration, service=service
            )
            self._mesh_counters(destination(service), attempts, flag)
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def _mesh_counters(self, labels: dict[str, Any], attempts: int, flag: str | None) -> None:
        if attempts > 1:
            self.retries.add(attempts - 1, labels)
        if flag is not None:
            self.mesh_failures.add(1, {**labels, "mesh.flag": flag})
            if flag == "RETRY_BUDGET_EXHAUSTED":
                self.budget_exhausted.add(1, labels)

    def breaker_transition(self, service: str, authority: str, old: str, new: str) -> None:
        """A circuit breaker changed state."""
        try:
            labels = destination(service)
            self.breaker_transitions.add(1, {**labels, "mesh.endpoint": authority, "to": new})
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def ejected(self, service: str, authority: str) -> None:
        """Outlier detection ejected an endpoint."""
        try:
            self.ejections.add(1, {**destination(service), "mesh.endpoint": authority})
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def _access(
        self,
        side: str,
        method: str,
        path: str,
        status: int | None,
        duration: float,
        peer: str | None,
        service: str | None,
        answered_by: str | None,
        trace_id: str | None,
        attempts: int,
        route: str | None = None,
    ) -> None:
        record = {
            "time": time.time(),
            "side": side,
            "service": f"{self.service}.{self.namespace}",
            "trace_id": trace_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "peer": peer,
            "destination": service,
            "route": route,
            "attempts": attempts,
            "answered_by": answered_by or ("upstream" if side == "client" else "app"),
        }
        access_log.info(json.dumps(record, separators=(",", ":")))
