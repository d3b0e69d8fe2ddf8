"""The mesh transports: ``http://<service>/…`` → route, resilience, one endpoint, mTLS.

One call, in order: resolve the service in the active snapshot → match a route (its plan
is captured for the whole call) → deadline (the route's timeout, never past the caller's
inherited deadline) → fault injection → mirror a copy → admission against pool limits →
attempts: pick a healthy endpoint (weighted subset, not ejected, breaker closed, same zone
first, another endpoint than the last try), send with the per-try timeout and the
remaining deadline in ``x-mesh-deadline-ms``, record the outcome for breaker and outlier
detection → retry through the tenacity adapter when the outcome, the method and the retry
budget allow.

A try that fails before a byte of the request is written — no connection
(``httpx.ConnectError``/``ConnectTimeout``), or a server at the endpoint that is not the
service's identity (:class:`~meshlib.errors.PeerIdentityError`, for instance a stale
endpoint now answered by another service) — is a ``connect-failure``, as Envoy counts it:
it is retried on another endpoint whatever the method (nothing was sent, so nothing can
happen twice), and it counts against that endpoint for breakers and outlier detection.

Failures the mesh itself decides are :class:`~meshlib.errors.RequestError` subclasses; a
response the mesh produced (fault abort) or shaped (budget exhausted) carries
``x-mesh-flag``. Upstream transport errors that are not retried surface as the httpx
exceptions they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import inject

from meshlib.errors import (
    DeadlineExceeded,
    PeerIdentityError,
    RequestError,
    RetryBudgetExhausted,
    UnknownServiceError,
)
from meshlib.integrations.asgi import FLAG_HEADER
from meshlib.integrations.httpx import AsyncIdentityTransport, IdentityTransport
from meshlib.policy.engine import CompiledService, PolicyEngine, RoutePlan
from meshlib.policy.model import DEFAULT_TIMEOUT
from meshlib.policy.snapshot import Endpoint
from meshlib.resilience.deadline import (
    DEADLINE_HEADER,
    effective_deadline,
    format_deadline_header,
)
from meshlib.resilience.fault import NO_FAULT, FaultDecision, decide_fault
from meshlib.resilience.retry import (
    CONNECT_FAILURE,
    Outcome,
    build_retrying,
    is_retry_safe,
    is_retryable,
)
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.balancers import StatsRegistry
from meshlib.traffic.calls import RuntimeRegistry, ServiceRuntime

__all__ = ["ATTEMPTS_HEADER", "AsyncMeshTransport", "MeshTransport"]

ATTEMPTS_HEADER = "x-mesh-attempts"
MIRROR_MAX_IN_FLIGHT = 64

ContextSource = Callable[[], Any]
EngineSource = Callable[[], PolicyEngine]


def _is_outside(host: str) -> bool:
    """Hosts with a dot, IPs and localhost leave the mesh; single labels are services."""
    return "." in host or ":" in host or host == "localhost"


def _outcome_of_exception(exc: BaseException) -> Outcome | None:
    # PeerIdentityError is raised right after the handshake, before the request is written.
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | PeerIdentityError):
        return CONNECT_FAILURE
    if isinstance(exc, httpx.TimeoutException):
        return Outcome("timeout")
    if isinstance(exc, httpx.TransportError):
        return Outcome("reset")
    return None


def _buffered_body(request: httpx.Request) -> bytes | None:
    """The body if it is already in memory (so it can be replayed), else None."""
    if isinstance(request.stream, httpx.ByteStream):
        return request.content
    return None


class _Call:
    """The decisions of one outbound call; shared by the sync and async transports."""

    __slots__ = (
        "attempts",
        "budget_exhausted",
        "clock",
        "context",
        "deadline",
        "fault",
        "plan",
        "request",
        "retry_safe",
        "runtime",
        "service",
        "span",
        "started",
        "tried",
    )

    def __init__(
        self,
        service: CompiledService,
        runtime: ServiceRuntime,
        plan: RoutePlan,
        request: httpx.Request,
        clock: Callable[[], float],
    ) -> None:
        self.service = service
        self.runtime = runtime
        self.plan = plan
        self.request = request
        self.clock = clock
        timeout = plan.timeout if plan.timeout is not None else DEFAULT_TIMEOUT
        self.deadline = effective_deadline(timeout, clock())
        body = _buffered_body(request)
        replayable = body is not None and len(body) <= plan.retries.max_replay_bytes
        self.retry_safe = replayable and is_retry_safe(
            request.method, request.headers, plan.retries
        )
        self.fault: FaultDecision = (
            decide_fault(plan.fault)
            if plan.fault is not None and plan.fault_applies(request.headers)
            else NO_FAULT
        )
        self.tried: frozenset[str] = frozenset()
        self.attempts = 0
        self.budget_exhausted = False
        self.span: trace.Span | None = None
        self.context: Context | None = None
        self.started = time.perf_counter()

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - self.clock()

    def deadline_error(self, what: str, endpoint: str | None = None) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{self.service.key}: {what} (route {self.plan.name}, "
            f"timeout {self.plan.timeout if self.plan.timeout is not None else DEFAULT_TIMEOUT:g}s"
            f", {self.attempts} attempt(s))",
            service=self.service.key,
            endpoint=endpoint,
            deadline=self.deadline,
        )

    def prepare_attempt(self) -> tuple[Endpoint, httpx.Request]:
        """Choose the endpoint and build the request of the next attempt."""
        remaining = self.remaining()
        if remaining <= 0:
            raise self.deadline_error("deadline exceeded before the attempt")
        endpoint = self.runtime.choose(self.plan, random.random(), self.tried)
        self.tried = self.tried | {endpoint.authority}
        self.attempts += 1
        per_try = self.plan.retries.per_try_timeout
        budget = min(remaining, per_try) if per_try is not None else remaining
        request = self.request
        extensions = dict(request.extensions)
        if budget != float("inf"):
            user = extensions.get("timeout", {})
            extensions["timeout"] = {
                k: min(v, budget) if v is not None else budget
                for k, v in {
                    "connect": user.get("connect"),
                    "read": user.get("read"),
                    "write": user.get("write"),
                    "pool": user.get("pool"),
                }.items()
            }
        headers = request.headers.copy()
        if self.deadline is not None:
            headers[DEADLINE_HEADER] = format_deadline_header(self.deadline, self.clock())
        with contextlib.suppress(Exception):  # telemetry never fails a request
            inject(headers, context=self.context)
            if self.span is not None and self.attempts > 1:
                self.span.add_event(
                    "mesh.retry",
                    {"mesh.attempt": self.attempts, "mesh.endpoint": endpoint.authority},
                )
        attempt = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            stream=request.stream,
            extensions=extensions,
        )
        return endpoint, attempt

    def retry_outcome(self, result: object) -> Outcome | None:
        """The outcome if *result* (a response or an exception) may be retried.

        A connect failure may be retried for any method and body: nothing was sent.
        Anything else only for a request that is safe to send twice.
        """
        outcome: Outcome | None
        if isinstance(result, httpx.Response):
            outcome = Outcome.from_status(result.status_code)
        elif isinstance(result, BaseException):
            outcome = _outcome_of_exception(result)
            if outcome is None:
                return None
        else:
            return None
        if not self.retry_safe and outcome is not CONNECT_FAILURE:
            return None
        return outcome if is_retryable(self.plan.retries, outcome) else None

    def retry_args(self, clock: Callable[[], float]) -> dict[str, Any]:
        """:func:`build_retrying`'s arguments for this call, but the policy and ``async_``."""
        return {
            "budget": self.runtime.budget,
            "should_retry": self.retry_outcome,
            "deadline": self.deadline,
            "clock": clock,
            "on_budget_exhausted": self.on_budget_exhausted,
        }

    def on_budget_exhausted(self, *_: object) -> None:
        self.budget_exhausted = True

    def finish(self, response: httpx.Response) -> httpx.Response:
        if self.attempts > 1:
            response.headers[ATTEMPTS_HEADER] = str(self.attempts)
        if self.budget_exhausted:
            response.headers[FLAG_HEADER.decode()] = RetryBudgetExhausted.flag
        return response

    def fail(self, exc: Exception) -> Exception:
        """Map the last attempt's exception to what the caller sees."""
        if self.budget_exhausted and _outcome_of_exception(exc) is not None:
            return RetryBudgetExhausted(
                f"{self.service.key}: retry budget exhausted after {self.attempts} attempt(s); "
                f"last error: {exc!r}",
                service=self.service.key,
            )
        if isinstance(exc, httpx.TimeoutException):
            return self.deadline_error(
                "per-try timeout" if self.remaining() > 0 else "deadline exceeded"
            )
        return exc

    def fault_response(self) -> httpx.Response:
        status = self.fault.abort_http or 503
        return httpx.Response(
            status,
            headers={FLAG_HEADER.decode(): "FAULT_INJECTED", "content-type": "application/json"},
            json={
                "error": f"fault injected by TrafficPolicy route {self.plan.name}",
                "flag": "FAULT_INJECTED",
            },
            request=self.request,
        )

    def mirror_target(self) -> tuple[Endpoint, httpx.Request] | None:
        """Endpoint and copy of the request to mirror, or None this time."""
        mirror = self.plan.mirror
        if mirror is None or random.random() * 100.0 >= mirror.percent:
            return None
        body = _buffered_body(self.request)
        if body is None:
            return None
        endpoint = self.runtime.balancer.pick(mirror.endpoints)
        if endpoint is None:
            return None
        headers = self.request.headers.copy()
        headers["host"] = f"{self.request.url.host}-shadow"
        return endpoint, httpx.Request(
            self.request.method, self.request.url, headers=headers, content=body
        )


class _Base:
    """What the sync and async mesh transports share."""

    def __init__(
        self,
        *,
        engine: EngineSource,
        stats: StatsRegistry,
        runtimes: RuntimeRegistry | None,
        zone: str | None,
        clock: Callable[[], float],
        telemetry: MeshTelemetry | None = None,
    ) -> None:
        self._engine = engine
        self._stats = stats
        self._clock = clock
        self._telemetry = telemetry
        self._runtimes = runtimes or RuntimeRegistry(stats, zone=zone, clock=clock)

    def _start(self, request: httpx.Request) -> _Call | None:
        host = request.url.host
        service = self._engine().resolve(host)
        if service is None:
            if not _is_outside(host):
                raise UnknownServiceError(host)
            return None
        plan = service.route(request.method, request.url.path, request.headers)
        call = _Call(service, self._runtimes.get(service), plan, request, self._clock)
        if self._telemetry is not None:
            with contextlib.suppress(Exception):  # telemetry never fails a request
                span = self._telemetry.tracer.start_span(
                    request.method,
                    kind=trace.SpanKind.CLIENT,
                    attributes={
                        "http.request.method": request.method,
                        "url.full": str(request.url),
                        "server.address": service.key,
                        "mesh.route": plan.name,
                        "mesh.peer.spiffe_id": service.spiffe_id,
                    },
                )
                if call.fault.delay > 0 or call.fault.abort_http is not None:
                    span.set_attribute("mesh.fault.delay", call.fault.delay)
                    if call.fault.abort_http is not None:
                        span.set_attribute("mesh.fault.abort", call.fault.abort_http)
                call.span = span
                call.context = trace.set_span_in_context(span)
        return call

    def _finish(
        self, call: _Call, response: httpx.Response | None, error: BaseException | None
    ) -> None:
        """Close the call's span and record its metrics; never raises."""
        telemetry = self._telemetry
        if telemetry is None:
            return
        try:
            duration = time.perf_counter() - call.started
            status = response.status_code if response is not None else None
            flag = response.headers.get(FLAG_HEADER.decode()) if response is not None else None
            if isinstance(error, RequestError):
                flag = error.flag
            span = call.span
            trace_id = None
            if span is not None:
                span.set_attribute("mesh.attempts", call.attempts)
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
                service=call.service.key,
                method=call.request.method,
                status=status,
                error=type(error).__name__ if error is not None else None,
                duration=duration,
                attempts=call.attempts,
                flag=flag,
                route=call.plan.name,
                path=call.request.url.path,
                trace_id=trace_id,
            )
        except Exception:
            return


def _result(first: httpx.Response | Exception) -> httpx.Response:
    """A try's response, or its exception raised again (with its original traceback)."""
    if isinstance(first, Exception):
        raise first
    return first


class AsyncMeshTransport(_Base, httpx.AsyncBaseTransport):
    """Route ``http://<service>/…`` over the mesh; other hosts go to *outside*.

    Args:
        engine: returns the active :class:`PolicyEngine` (one attribute read).
        tls: returns the current client SSLContext.
        stats: per-endpoint load statistics shared by the balancers.
        runtimes: per-destination budgets, breakers and outlier state (shared by every
            client of one Mesh); a private registry when omitted.
        zone: this workload's zone, for locality-aware balancing.
        outside: transport for hosts outside the mesh (default: a plain httpx transport).
    """

    def __init__(
        self,
        *,
        engine: EngineSource,
        tls: ContextSource,
        stats: StatsRegistry,
        runtimes: RuntimeRegistry | None = None,
        zone: str | None = None,
        outside: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: MeshTelemetry | None = None,
    ) -> None:
        super().__init__(
            engine=engine,
            stats=stats,
            runtimes=runtimes,
            zone=zone,
            clock=clock,
            telemetry=telemetry,
        )
        self._tls = tls
        self._outside = outside or httpx.AsyncHTTPTransport()
        self._services: dict[tuple[str, int], AsyncIdentityTransport] = {}
        self._mirrors: set[asyncio.Task[None]] = set()

    def _transport(self, service: CompiledService) -> AsyncIdentityTransport:
        # Keyed by pool size too, so a maxConnections update takes effect on open clients.
        key = (service.spiffe_id, service.connection_pool.max_connections)
        transport = self._services.get(key)
        if transport is None:
            transport = self._services[key] = AsyncIdentityTransport(
                expected=service.spiffe_id,
                tls=self._tls,
                sni=service.dns_name,
                max_connections=service.connection_pool.max_connections,
            )
        return transport

    async def _attempt(self, call: _Call) -> httpx.Response:
        endpoint, request = call.prepare_attempt()
        stats = self._stats.get(endpoint.authority)
        started = stats.start()
        outcome: Outcome | None = None
        try:
            response = await self._transport(call.service).send_to(
                request, endpoint.address, endpoint.port
            )
            outcome = Outcome.from_status(response.status_code)
            if call.retry_outcome(response) is not None:
                await response.aread()  # release the connection before a retry
            return response
        except Exception as exc:
            outcome = _outcome_of_exception(exc)
            raise
        finally:
            stats.finish(started, outcome is not None and outcome.kind == "status")
            if outcome is not None:
                call.runtime.record(endpoint, outcome)

    async def _mirror(self, call: _Call) -> None:
        target = call.mirror_target()
        if target is None or len(self._mirrors) >= MIRROR_MAX_IN_FLIGHT:
            return
        endpoint, copy = target

        async def send() -> None:
            with contextlib.suppress(Exception):  # a mirror never affects the caller
                response = await self._transport(call.service).send_to(
                    copy, endpoint.address, endpoint.port
                )
                await response.aclose()

        task = asyncio.get_running_loop().create_task(send())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        if call is None:
            return await self._outside.handle_async_request(request)
        response: httpx.Response | None = None
        error: BaseException | None = None
        try:
            response = await self._handle(call)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(call, response, error)

    async def _handle(self, call: _Call) -> httpx.Response:
        if call.fault.delay > 0:
            await asyncio.sleep(min(call.fault.delay, max(call.remaining(), 0.0)))
        if call.fault.abort_http is not None:
            return call.fault_response()
        await self._mirror(call)
        runtime = call.runtime
        runtime.admit()
        runtime.budget.record_request()
        try:
            try:
                response: httpx.Response
                if call.plan.retries.attempts > 0:
                    # The first try runs bare: most calls end there, and a retrier (the
                    # largest per-call cost in the micro-benchmark) is built only when a
                    # retry is due; it then starts from the first try's result.
                    first: httpx.Response | Exception
                    try:
                        first = await self._attempt(call)
                    except Exception as exc:
                        first = exc
                    if call.retry_outcome(first) is None:
                        response = _result(first)
                    else:
                        retrying = build_retrying(
                            call.plan.retries, async_=True, **call.retry_args(self._clock)
                        )
                        replay = [first]

                        async def attempt(c: _Call) -> httpx.Response:
                            return _result(replay.pop()) if replay else await self._attempt(c)

                        response = await retrying(attempt, call)
                else:  # nothing to retry
                    response = await self._attempt(call)
            except Exception as exc:
                mapped = call.fail(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            return call.finish(response)
        finally:
            runtime.release()

    async def aclose(self) -> None:
        for task in list(self._mirrors):
            task.cancel()
        for transport in self._services.values():
            await transport.aclose()
        await self._outside.aclose()


class MeshTransport(_Base, httpx.BaseTransport):
    """Sync twin of :class:`AsyncMeshTransport`; mirrors run on a small thread pool."""

    def __init__(
        self,
        *,
        engine: EngineSource,
        tls: ContextSource,
        stats: StatsRegistry,
        runtimes: RuntimeRegistry | None = None,
        zone: str | None = None,
        outside: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: MeshTelemetry | None = None,
    ) -> None:
        super().__init__(
            engine=engine,
            stats=stats,
            runtimes=runtimes,
            zone=zone,
            clock=clock,
            telemetry=telemetry,
        )
        self._tls = tls
        self._outside = outside or httpx.HTTPTransport()
        self._services: dict[tuple[str, int], IdentityTransport] = {}
        self._lock = threading.Lock()  # creation of per-service pools only, not per request
        self._mirror_pool: ThreadPoolExecutor | None = None
        self._mirrors_in_flight = 0

    def _transport(self, service: CompiledService) -> IdentityTransport:
        key = (service.spiffe_id, service.connection_pool.max_connections)
        transport = self._services.get(key)
        if transport is None:
            with self._lock:
                transport = self._services.get(key)
                if transport is None:
                    transport = self._services[key] = IdentityTransport(
                        expected=service.spiffe_id,
                        tls=self._tls,
                        sni=service.dns_name,
                        max_connections=service.connection_pool.max_connections,
                    )
        return transport

    def _attempt(self, call: _Call) -> httpx.Response:
        endpoint, request = call.prepare_attempt()
        stats = self._stats.get(endpoint.authority)
        started = stats.start()
        outcome: Outcome | None = None
        try:
            response = self._transport(call.service).send_to(
                request, endpoint.address, endpoint.port
            )
            outcome = Outcome.from_status(response.status_code)
            if call.retry_outcome(response) is not None:
                response.read()
            return response
        except Exception as exc:
            outcome = _outcome_of_exception(exc)
            raise
        finally:
            stats.finish(started, outcome is not None and outcome.kind == "status")
            if outcome is not None:
                call.runtime.record(endpoint, outcome)

    def _mirror(self, call: _Call) -> None:
        target = call.mirror_target()
        if target is None or self._mirrors_in_flight >= MIRROR_MAX_IN_FLIGHT:
            return
        endpoint, copy = target
        if self._mirror_pool is None:
            with self._lock:
                if self._mirror_pool is None:
                    self._mirror_pool = ThreadPoolExecutor(2, thread_name_prefix="mesh-mirror")
        transport = self._transport(call.service)

        def send() -> None:
            try:
                with contextlib.suppress(Exception):  # a mirror never affects the caller
                    transport.send_to(copy, endpoint.address, endpoint.port).close()
            finally:
                self._mirrors_in_flight -= 1

        self._mirrors_in_flight += 1
        self._mirror_pool.submit(send)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = self._start(request)
        if call is None:
            return self._outside.handle_request(request)
        response: httpx.Response | None = None
        error: BaseException | None = None
        try:
            response = self._handle(call)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(call, response, error)

    def _handle(self, call: _Call) -> httpx.Response:
        if call.fault.delay > 0:
            time.sleep(min(call.fault.delay, max(call.remaining(), 0.0)))
        if call.fault.abort_http is not None:
            return call.fault_response()
        self._mirror(call)
        runtime = call.runtime
        runtime.admit()
        runtime.budget.record_request()
        try:
            try:
                response: httpx.Response
                if call.plan.retries.attempts > 0:
                    # As in the async twin: the first try bare, a retrier only when due.
                    first: httpx.Response | Exception
                    try:
                        first = self._attempt(call)
                    except Exception as exc:
                        first = exc
                    if call.retry_outcome(first) is None:
                        response = _result(first)
                    else:
                        retrying = build_retrying(
                            call.plan.retries, async_=False, **call.retry_args(self._clock)
                        )
                        replay = [first]

                        def attempt(c: _Call) -> httpx.Response:
                            return _result(replay.pop()) if replay else self._attempt(c)

                        response = retrying(attempt, call)
                else:  # nothing to retry
                    response = self._attempt(call)
            except Exception as exc:
                mapped = call.fail(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            return call.finish(response)
        finally:
            runtime.release()

    def close(self) -> None:
        if self._mirror_pool is not None:
            self._mirror_pool.shutdown(wait=False, cancel_futures=True)
        for transport in self._services.values():
            transport.close()
        self._outside.close()
