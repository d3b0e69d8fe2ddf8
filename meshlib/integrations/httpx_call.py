"""What an HTTP call adds to the call driver: requests, outcomes, answers, telemetry.

The decisions are :class:`~meshlib.traffic.driver.CallDriver`'s; this module maps them to
httpx objects, once for both transports: the attempt's request (``x-mesh-deadline-ms``,
trace context, the per-try timeout), the :class:`Outcome` of a response or an httpx
exception, the fault answer, the response's ``x-mesh-attempts`` and ``x-mesh-flag``, the
error the caller sees, the mirror copy, and the span and metrics (which never fail a call).
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.propagate import inject

from meshlib.errors import PeerIdentityError, RequestError, RetryBudgetExhausted
from meshlib.policy.engine import RoutePlan
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.policy.snapshot import Endpoint
from meshlib.resilience.deadline import DEADLINE_HEADER, effective_deadline, format_deadline_header
from meshlib.resilience.fault import NO_FAULT, decide_fault
from meshlib.resilience.retry import CONNECT_FAILURE, RESET, TIMEOUT, Outcome, is_retry_safe
from meshlib.runtime.view import Destination
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.driver import DONE, CallDriver

__all__ = ["ATTEMPTS_HEADER", "FLAG_HEADER", "HttpCall", "outcome_of_exception"]

ATTEMPTS_HEADER = "x-mesh-attempts"
FLAG_HEADER = "x-mesh-flag"

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")

# Outcomes of statuses, built once (Outcome is immutable).
_STATUS = {code: Outcome.from_status(code) for code in range(100, 600)}


def outcome_of_exception(exc: BaseException) -> Outcome | None:
    """The policy's view of an exception from one try; None when it is not the network's."""
    # PeerIdentityError is raised right after the handshake, before the request is written.
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | PeerIdentityError):
        return CONNECT_FAILURE
    if isinstance(exc, httpx.TimeoutException):
        return TIMEOUT
    if isinstance(exc, httpx.TransportError):
        return RESET
    return None


def outcome_of_response(response: httpx.Response) -> Outcome:
    """The outcome of a try that got *response*."""
    code = response.status_code
    return _STATUS.get(code) or Outcome.from_status(code)


def _buffered_body(request: httpx.Request) -> bytes | None:
    """The body if it is already in memory (so it can be replayed), else None."""
    if isinstance(request.stream, httpx.ByteStream):
        return request.content
    return None


class HttpCall:
    """One HTTP call: its driver, its original request, and its telemetry."""

    __slots__ = (
        "destination",
        "driver",
        "plan",
        "request",
        "span",
        "started",
        "trace",
        "user_timeout",
    )

    def __init__(
        self,
        destination: Destination,
        plan: RoutePlan,
        request: httpx.Request,
        clock: Any,
        telemetry: MeshTelemetry | None,
    ) -> None:
        self.destination = destination
        self.plan = plan
        self.request = request
        timeout = plan.timeout if plan.timeout is not None else DEFAULT_TIMEOUT
        retry_safe = False
        retries = plan.retries
        if retries.attempts > 0:
            body = _buffered_body(request)
            retry_safe = (
                body is not None
                and len(body) <= retries.max_replay_bytes
                and is_retry_safe(request.method, request.headers, retries)
            )
        fault = NO_FAULT
        if plan.fault is not None and plan.fault_applies(request.headers):
            fault = decide_fault(plan.fault)
        self.driver = CallDriver(
            destination.runtime,
            plan,
            retry_safe=retry_safe,
            deadline=effective_deadline(timeout, clock()),
            fault=fault,
            clock=clock,
        )
        self.span: trace.Span | None = None
        self.trace: dict[str, str] | None = None
        self.started = 0.0
        self.user_timeout: dict[str, Any] = request.extensions.get("timeout") or {}
        if telemetry is not None:
            self._start_span(telemetry)
        elif trace.get_current_span().get_span_context().is_valid:
            # Without telemetry, pass on the trace of the call being served (if any).
            with contextlib.suppress(Exception):
                carrier: dict[str, str] = {}
                inject(carrier)
                self.trace = carrier or None

    # ------------------------------------------------------------------ attempts

    def attempt_request(self) -> httpx.Request:
        """The request of the driver's current try: deadline, trace context, per-try timeout.

        The call's own request is updated in place (httpx builds one per call): the
        deadline header and the timeouts are rewritten for every try, the trace headers
        set once. No copy, no rebuild.
        """
        request = self.request
        driver = self.driver
        headers = request.headers
        if driver.deadline is not None:
            headers[DEADLINE_HEADER] = format_deadline_header(driver.deadline, driver.clock())
        timeout = driver.timeout
        if timeout is not None:
            user = self.user_timeout
            extensions = dict(request.extensions)
            extensions["timeout"] = {
                key: timeout if user.get(key) is None else min(user[key], timeout)
                for key in _TIMEOUT_KEYS
            }
            request.extensions = extensions
        if driver.attempts == 1:
            if self.trace is not None:
                headers.update(self.trace)
        elif self.span is not None:
            endpoint = driver.endpoint.authority if driver.endpoint is not None else ""
            with contextlib.suppress(Exception):  # telemetry never fails a request
                self.span.add_event(
                    "mesh.retry", {"mesh.attempt": driver.attempts, "mesh.endpoint": endpoint}
                )
        return request

    # ------------------------------------------------------------------ answers

    def finish(self, response: httpx.Response) -> httpx.Response:
        """Mark the final response with the attempt count and a budget flag."""
        driver = self.driver
        if driver.attempts > 1:
            response.headers[ATTEMPTS_HEADER] = str(driver.attempts)
        if driver.budget_exhausted:
            response.headers[FLAG_HEADER] = RetryBudgetExhausted.flag
        return response

    def fail(self, exc: Exception) -> Exception:
        """Map the last try's exception to what the caller sees."""
        driver = self.driver
        if driver.budget_exhausted and outcome_of_exception(exc) is not None:
            return RetryBudgetExhausted(
                f"{driver.runtime.name}: retry budget exhausted after {driver.attempts} "
                f"attempt(s); last error: {exc!r}",
                service=driver.runtime.name,
            )
        if isinstance(exc, httpx.TimeoutException):
            return driver.deadline_error(
                "per-try timeout" if driver.remaining() > 0 else "deadline exceeded"
            )
        return exc

    def fault_response(self) -> httpx.Response:
        """The answer of a fault abort."""
        status = self.driver.fault.abort_http or 503
        return httpx.Response(
            status,
            headers={FLAG_HEADER: "FAULT_INJECTED", "content-type": "application/json"},
            json={
                "error": f"fault injected by TrafficPolicy route {self.plan.name}",
                "flag": "FAULT_INJECTED",
            },
            request=self.request,
        )

    def mirror_target(self) -> tuple[Endpoint, httpx.Request] | None:
        """Endpoint and copy of the request to mirror, or None this time."""
        if self.plan.mirror is None:
            return None
        endpoint = self.driver.mirror_endpoint(random.random())
        body = _buffered_body(self.request)
        if endpoint is None or body is None:
            return None
        headers = self.request.headers.copy()
        headers["host"] = f"{self.request.url.host}-shadow"
        return endpoint, httpx.Request(
            self.request.method, self.request.url, headers=headers, content=body
        )

    # ------------------------------------------------------------------ telemetry

    def _start_span(self, telemetry: MeshTelemetry) -> None:
        self.started = time.perf_counter()
        with contextlib.suppress(Exception):  # telemetry never fails a request
            service = self.destination.service
            request = self.request
            span = telemetry.tracer.start_span(
                request.method,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "http.request.method": request.method,
                    "url.full": str(request.url),
                    "server.address": service.key,
                    "mesh.route": self.plan.name,
                    "mesh.peer.spiffe_id": service.spiffe_id,
                },
            )
            fault = self.driver.fault
            if fault.delay > 0 or fault.abort_http is not None:
                span.set_attribute("mesh.fault.delay", fault.delay)
                if fault.abort_http is not None:
                    span.set_attribute("mesh.fault.abort", fault.abort_http)
            self.span = span
            if span.is_recording() or span.get_span_context().is_valid:
                carrier: dict[str, str] = {}
                inject(carrier, context=trace.set_span_in_context(span))
                self.trace = carrier or None

    def observe_end(
        self,
        telemetry: MeshTelemetry | None,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> None:
        """Close the call's span and record its metrics; never raises."""
        if telemetry is None:
            return
        try:
            duration = time.perf_counter() - self.started
            status = response.status_code if response is not None else None
            flag = response.headers.get(FLAG_HEADER) if response is not None else None
            if isinstance(error, RequestError):
                flag = error.flag
            attempts = self.driver.attempts
            span = self.span
            trace_id = None
            if span is not None:
                span.set_attribute("mesh.attempts", attempts)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                if flag is not None:
                    span.set_attribute("mesh.flag", flag)
                if error is not None:
                    span.set_attribute("error.type", type(error).__name__)
                    span.set_status(trace.StatusCode.ERROR, str(error)[:200])
                elif status is not None and status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
                context = span.get_span_context()
                trace_id = format(context.trace_id, "032x") if context.is_valid else None
                span.end()
            telemetry.http_client_done(
                service=self.destination.service.key,
                method=self.request.method,
                status=status,
                error=type(error).__name__ if error is not None else None,
                duration=duration,
                attempts=attempts,
                flag=flag,
                route=self.plan.name,
                path=self.request.url.path,
                trace_id=trace_id,
            )
        except Exception:
            return

    # ------------------------------------------------------------------ the loop's steps

    def target(self) -> tuple[str, int]:
        """Address and port of the driver's current try."""
        endpoint = self.driver.endpoint
        assert endpoint is not None  # set by every ATTEMPT action
        return endpoint.address, endpoint.port

    def on_response(self, response: httpx.Response) -> int:
        """The driver's next action after *response*."""
        return self.driver.observe(outcome_of_response(response))

    def on_error(self, exc: Exception) -> int:
        """The driver's next action after *exc*; raises what the caller sees when done."""
        action = self.driver.observe(outcome_of_exception(exc))
        if action == DONE:
            mapped = self.fail(exc)
            if mapped is exc:
                raise exc
            raise mapped from exc
        return action
