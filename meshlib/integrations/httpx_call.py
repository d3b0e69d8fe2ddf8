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
from typing import Any

import httpx

from meshlib.errors import PeerIdentityError, RetryBudgetExhausted
from meshlib.policy.engine import RoutePlan
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.policy.snapshot import Endpoint
from meshlib.resilience.deadline import DEADLINE_HEADER, effective_deadline, format_deadline_header
from meshlib.resilience.fault import NO_FAULT, decide_fault
from meshlib.resilience.retry import CONNECT_FAILURE, RESET, TIMEOUT, Outcome, is_retry_safe
from meshlib.runtime.view import Destination
from meshlib.telemetry.client import ClientCall, passthrough_headers, start_client_call
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.driver import DONE, CallDriver

__all__ = ["ATTEMPTS_HEADER", "FLAG_HEADER", "HttpCall", "outcome_of_exception"]

ATTEMPTS_HEADER = "x-mesh-attempts"
FLAG_HEADER = "x-mesh-flag"

_DEADLINE_KEY = DEADLINE_HEADER.encode("ascii")

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
        "extra_headers",
        "plan",
        "request",
        "telemetry",
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
        user: dict[str, Any] = request.extensions.get("timeout") or {}
        self.user_timeout = (
            user.get("connect"),
            user.get("read"),
            user.get("write"),
            user.get("pool"),
        )
        self.extra_headers: list[tuple[bytes, bytes]] | None = None
        self.telemetry: ClientCall | None = None
        self.trace: dict[str, str] | None = None
        if telemetry is not None:
            service = destination.service
            self.telemetry = start_client_call(
                telemetry,
                protocol="http",
                service=service.key,
                method=request.method,
                route=plan.name,
                url=request.url,
                peer_spiffe_id=service.spiffe_id or None,  # "" for an ExternalService
                fault_delay=fault.delay,
                fault_abort=fault.abort_http,
            )
            self.trace = self.telemetry.trace_headers or None
        else:
            # Without telemetry, pass on the trace and baggage of the call being served.
            with contextlib.suppress(Exception):
                self.trace = passthrough_headers()

    # ------------------------------------------------------------------ attempts

    def attempt_request(self) -> httpx.Request:
        """The request of the driver's current try: deadline, trace context, per-try timeout.

        The call's own request is updated in place (httpx builds one per call): the
        timeouts are rewritten for every try, the trace headers set once. The deadline
        header of the try goes to :attr:`extra_headers`, which the identity transport adds
        to the wire request (replacing a caller-set one) without touching ``request.headers``.
        No copy, no rebuild.
        """
        request = self.request
        driver = self.driver
        if driver.deadline is not None:
            value = format_deadline_header(driver.deadline, driver.clock())
            self.extra_headers = [(_DEADLINE_KEY, value.encode("ascii"))]
        timeout = driver.timeout
        if timeout is not None:
            connect, read, write, pool = self.user_timeout
            request.extensions["timeout"] = {  # httpx builds this dict for this request
                "connect": timeout if connect is None or connect > timeout else connect,
                "read": timeout if read is None or read > timeout else read,
                "write": timeout if write is None or write > timeout else write,
                "pool": timeout if pool is None or pool > timeout else pool,
            }
        if driver.attempts == 1:
            if self.trace is not None:
                request.headers.update(self.trace)
        elif self.telemetry is not None:
            endpoint = driver.endpoint.authority if driver.endpoint is not None else ""
            self.telemetry.retrying(attempt=driver.attempts, endpoint=endpoint)
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

    def observe_end(self, response: httpx.Response | None, error: BaseException | None) -> None:
        """Close the call's span and record its metrics; never raises."""
        call = self.telemetry
        if call is None:
            return
        if response is None:
            call.finish(error=error, attempts=self.driver.attempts)
        else:
            status = response.status_code
            call.finish(
                status=status,
                error=error,
                attempts=self.driver.attempts,
                # the mesh flags refusals, failures (4xx, 5xx) and fault aborts only
                flag=response.headers.get(FLAG_HEADER)
                if status >= 400 or self.driver.fault.abort_http is not None
                else None,
            )

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
