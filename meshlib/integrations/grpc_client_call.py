"""What a gRPC call adds to the call driver: metadata, deadline, outcomes, telemetry.

Shared by the sync and aio channels. The decisions — fault, admission, endpoint, per-try
timeout, retry, backoff, budget — are the :class:`~meshlib.traffic.driver.CallDriver`'s,
over the destination's :class:`~meshlib.traffic.runtime.ServiceRuntime`, the same one
HTTP calls to that service use (one budget, one breaker per endpoint, one outlier view).
"""

from __future__ import annotations

import contextlib
import fnmatch
import random
import time
from collections.abc import Iterable
from typing import Any, Protocol

import grpc  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.propagate import inject

from meshlib.errors import FaultInjected, RequestError, UnknownServiceError
from meshlib.identity.tls import TLSContexts
from meshlib.integrations.grpc_client_channels import SubChannels
from meshlib.integrations.grpc_client_outcomes import (
    GRPC_METHOD,
    OK,
    MeshRpcError,
    grpc_code,
    note_outcome,
    rpc_error,
)
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.resilience import deadline as _deadline
from meshlib.resilience.fault import NO_FAULT, decide_fault
from meshlib.resilience.retry import is_retry_safe
from meshlib.runtime.view import ActiveView, Destination
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.driver import DONE, CallDriver

__all__ = ["Core", "GrpcCall", "MeshLike", "call_kwargs"]


class MeshLike(Protocol):
    """What the channels need of :class:`meshlib.Mesh`."""

    @property
    def view(self) -> ActiveView: ...

    @property
    def tls(self) -> TLSContexts: ...


class Core:
    """What both channel flavours share: the service name, sub-channels, idempotency."""

    def __init__(
        self,
        service: str,
        mesh: MeshLike,
        subchannels: SubChannels,
        idempotent_methods: Iterable[str],
    ) -> None:
        self.service_name = service
        self.mesh = mesh
        self.subchannels = subchannels
        self.telemetry: MeshTelemetry | None = getattr(mesh, "telemetry", None)
        self._swept: object = None
        patterns = tuple(idempotent_methods)
        self._idempotent = {p for p in patterns if "*" not in p}
        self._idempotent_globs = tuple(p for p in patterns if "*" in p)

    def destination(self) -> Destination:
        """The service in the active view; retires channels to departed endpoints."""
        view = self.mesh.view
        destination = view.resolve(self.service_name)
        if destination is None:
            raise UnknownServiceError(self.service_name)
        if view is not self._swept:  # a new view was installed: channel bookkeeping only
            self._swept = view
            self.subchannels.sweep(destination.service)
        return destination

    def is_idempotent(self, method: str) -> bool:
        if method in self._idempotent:
            return True
        return any(fnmatch.fnmatchcase(method, p) for p in self._idempotent_globs)


def call_kwargs(credentials: Any, wait_for_ready: bool | None, compression: Any) -> dict[str, Any]:
    """The optional per-call arguments a caller actually gave."""
    kwargs: dict[str, Any] = {}
    if credentials is not None:
        kwargs["credentials"] = credentials
    if wait_for_ready is not None:
        kwargs["wait_for_ready"] = wait_for_ready
    if compression is not None:
        kwargs["compression"] = compression
    return kwargs


class GrpcCall:
    """One logical gRPC call: its driver, metadata and telemetry."""

    __slots__ = ("began", "core", "destination", "driver", "metadata", "method", "span")

    def __init__(
        self, core: Core, method: str, metadata: Any, timeout: float | None, streaming: bool
    ) -> None:
        destination = core.destination()
        service = destination.service
        md = tuple(metadata or ())
        headers = {str(k).lower(): v for k, v in md if isinstance(v, str)}
        plan = service.route(GRPC_METHOD, method, headers)
        self.core = core
        self.destination = destination
        self.method = method
        now = time.monotonic()
        route_timeout = plan.timeout
        if route_timeout is None and timeout is None and not streaming:
            route_timeout = DEFAULT_TIMEOUT
        deadline = _deadline.effective_deadline(route_timeout, now)
        if timeout is not None:
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        fault = decide_fault(plan.fault) if plan.fault_applies(headers) else NO_FAULT
        safe = core.is_idempotent(method) or is_retry_safe(GRPC_METHOD, headers, plan.retries)
        self.driver = CallDriver(
            destination.runtime,
            plan,
            retry_safe=safe,
            deadline=deadline,
            fault=fault,
            retries=not streaming,
        )
        self.metadata = md
        self.began = time.perf_counter()
        self.span: trace.Span | None = None
        if core.telemetry is not None:
            self._start_span(core.telemetry)

    # ------------------------------------------------------------------ the loop's steps

    def begin(self) -> int:
        """The driver's first action; mesh refusals raised as :class:`MeshRpcError`."""
        try:
            return self.driver.begin()
        except RequestError as exc:
            raise rpc_error(exc) from exc

    def resume(self) -> int:
        """The driver's action after a sleep; mesh refusals raised as :class:`MeshRpcError`."""
        try:
            return self.driver.resume()
        except RequestError as exc:
            raise rpc_error(exc) from exc

    def on_error(self, error: Any, began: float) -> int:
        """The next action after a failed try; raises *error* itself when done."""
        try:
            action = self.driver.observe(note_outcome(error, self.driver.timeout, began))
        except RequestError as exc:  # the next try found no endpoint, or no time
            raise rpc_error(exc) from exc
        if action == DONE:
            raise error
        return action

    def on_ok(self) -> None:
        """The try succeeded."""
        self.driver.observe(OK)

    def ended(self, code: Any, rpc: Any, began: float) -> None:
        """A stream or future ended with *code*: count its outcome, finish the call."""
        if code == grpc.StatusCode.OK:
            self.driver.observe(OK)
        else:
            self.driver.observe(note_outcome(rpc, self.driver.timeout, began))
        self.finish(code)

    def authority(self) -> str:
        endpoint = self.driver.endpoint
        assert endpoint is not None  # set by every ATTEMPT action
        return endpoint.authority

    def channel(self) -> Any:
        """The per-endpoint channel of the driver's current try."""
        return self.core.subchannels.get(self.authority(), self.destination.service.dns_name)

    def mirror_channel(self) -> Any:
        """The channel to send this call's shadow copy to, or None this time."""
        endpoint = self.driver.mirror_endpoint(random.random())
        if endpoint is None:
            return None
        return self.core.subchannels.get(endpoint.authority, self.destination.service.dns_name)

    def fault_error(self) -> MeshRpcError:
        """The error of a fault abort."""
        fault = self.driver.fault
        err = FaultInjected(
            f"fault injected by route {self.driver.plan.name}",
            service=self.destination.service.key,
        )
        return MeshRpcError(grpc_code(fault.abort_grpc or 2), err)

    # ------------------------------------------------------------------ telemetry

    def _start_span(self, telemetry: MeshTelemetry) -> None:
        with contextlib.suppress(Exception):  # telemetry never fails a call
            service = self.destination.service
            method = self.method.strip("/")
            rpc_service, _, rpc_method = method.partition("/")
            span = self.span = telemetry.tracer.start_span(
                method,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": rpc_service,
                    "rpc.method": rpc_method,
                    "server.address": service.key,
                    "mesh.route": self.driver.plan.name,
                    "mesh.peer.spiffe_id": service.spiffe_id,
                },
            )
            if span.is_recording() or span.get_span_context().is_valid:
                carrier: dict[str, str] = {}
                inject(carrier, context=trace.set_span_in_context(span))
                self.metadata = self.metadata + tuple(carrier.items())

    def finish(self, code: Any) -> None:
        """End the call: release its admission, end its span, record it; idempotent."""
        self.driver.close()
        telemetry, span = self.core.telemetry, self.span
        if telemetry is None or self.began < 0:
            return
        self.began, began = -1.0, self.began
        try:
            name = code.name if hasattr(code, "name") else str(code)
            attempts = max(self.driver.attempts, 1)
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", name)
                span.set_attribute("mesh.attempts", attempts)
                if name != "OK":
                    span.set_status(trace.StatusCode.ERROR, name)
                span.end()
            service = self.destination.service
            telemetry.rpc_done(
                side="client",
                method=self.method,
                code=name,
                duration=time.perf_counter() - began,
                service=service.key,
            )
            if attempts > 1:
                telemetry.retries.add(attempts - 1, {"mesh.destination.service": service.name})
        except Exception:
            return
