"""Meshed gRPC channels: one logical channel per service, one real channel per endpoint.

:class:`MeshChannel` (sync) and :class:`AsyncMeshChannel` (grpc.aio) are real
``grpc.Channel`` / ``grpc.aio.Channel`` objects, so generated stubs take them as they are.
Per call they

1. resolve the service in the active snapshot (one attribute read) and route the call as
   ``POST /pkg.Service/Method`` (headers are the call's metadata);
2. compute the deadline: the tightest of the call's ``timeout``, the route's ``timeout``
   and the deadline of the call being served (:func:`current_deadline`); unary calls with
   none of them get ``DEFAULT_TIMEOUT``, as HTTP calls do. gRPC carries it on the wire
   (``grpc-timeout``), so the next hop sees what is left;
3. apply the route's fault (delay, abort);
4. pick a weighted backend, then an endpoint with the service's load balancer, skipping
   open circuit breakers (and, for a retry, endpoints already tried when others remain);
5. send over a cached ``grpc.secure_channel`` to that endpoint with the current SVID, the
   bundle as roots, and ``grpc.ssl_target_name_override`` set to the service's DNS SAN
   ``<svc>.<ns>.svc.<td>``: gRPC's host-name check is the server-identity check (the CA
   issues that DNS SAN only together with the matching SPIFFE ID);
6. retry unary-request calls by the route's retry policy and the service's retry budget
   (:mod:`meshlib.resilience.retry`). Streams are never retried.

gRPC outcomes are read as the HTTP outcomes the policy speaks of (so ``retryOn`` and
breakers mean the same thing for both)::

    UNAVAILABLE, no connection could be made     connect-failure  (retried for any method:
                                                                   nothing was sent)
    UNAVAILABLE, the connection broke            reset
    UNAVAILABLE otherwise                        503
    DEADLINE_EXCEEDED of a per-try timeout       timeout
    INTERNAL, UNKNOWN, DATA_LOSS                 500
    RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, other codes 4xx (never failures)

Every gRPC call is a POST, so only connect failures are retried unless the method is
marked idempotent (``idempotent_methods=``), the call carries ``idempotency-key``
metadata, or the route sets ``allowNonIdempotent``.

Sub-channels follow the mesh: a rotated SVID makes new calls build new channels while the
old ones are closed after ``grace`` seconds; endpoints that leave the snapshot are closed
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.propagate import inject

from meshlib.errors import (
    CircuitOpen,
    DeadlineExceeded,
    FaultInjected,
    NoHealthyEndpoint,
    RequestError,
    UnknownServiceError,
)
from meshlib.identity.svid import SVID
from meshlib.identity.tls import TLSContexts
from meshlib.policy.engine import CompiledService, PolicyEngine, RoutePlan
from meshlib.policy.model import DEFAULT_TIMEOUT, RetryPolicy
from meshlib.resilience import deadline as _deadline
from meshlib.resilience.breaker import BreakerRegistry
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.fault import decide_fault
from meshlib.resilience.outlier import OutlierDetector
from meshlib.resilience.retry import (
    CONNECT_FAILURE,
    RESET,
    TIMEOUT,
    Outcome,
    attempt_deadline,
    build_retrying,
    is_failure,
    is_retry_safe,
)
from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.traffic.balancers import Balancer, StatsRegistry, make_balancer

try:
    import grpc  # type: ignore[import-untyped]
    import grpc.aio  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC support needs grpcio: pip install 'meshlib[grpc]'") from exc

__all__ = [
    "DEFAULT_GRACE",
    "AsyncMeshChannel",
    "MeshChannel",
    "MeshRpcError",
    "current_deadline",
    "outcome_of",
]

DEFAULT_GRACE = 30.0
"""Seconds a replaced sub-channel (old SVID, departed endpoint) keeps serving its calls."""

GRPC_METHOD = "POST"

# gRPC code -> the HTTP status the policy's conditions speak of (gRPC's own mapping table,
# read backwards), for codes that are not failures before a response.
_STATUS_OF = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_OK = Outcome.from_status(200)
_CONNECT_HINTS = ("failed to connect", "connection refused", "connections to all backends failing")
_RESET_HINTS = ("socket closed", "connection reset", "stream removed", "goaway", "broken pipe")


# --------------------------------------------------------------------- deadlines


def current_deadline() -> float | None:
    """Absolute ``time.monotonic()`` deadline of the call being served, if any.

    The one deadline context of the mesh (:mod:`meshlib.resilience.deadline`), shared with
    the HTTP side: a gRPC handler calling over HTTP, or the reverse, passes it on.
    """
    return _deadline.current_deadline.get()


# --------------------------------------------------------------------- errors


class MeshRpcError(grpc.RpcError):  # type: ignore[misc]
    """A call the mesh itself answered, as a ``grpc.RpcError`` (``code()``, ``details()``).

    ``mesh_error`` is the :class:`~meshlib.errors.RequestError` behind it
    (:class:`NoHealthyEndpoint`, :class:`CircuitOpen`, :class:`DeadlineExceeded`,
    :class:`FaultInjected`), also chained as ``__cause__``.
    """

    def __init__(self, code: grpc.StatusCode, mesh_error: RequestError) -> None:
        super().__init__(f"{code.name}: {mesh_error}")
        self._code = code
        self.mesh_error = mesh_error
        self.__cause__ = mesh_error

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self.mesh_error)

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-mesh-flag", self.mesh_error.flag),)


def outcome_of(error: Any, *, per_try_expired: bool = False) -> Outcome:
    """The policy's view of a failed try (table in the module docstring)."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    if code == grpc.StatusCode.UNAVAILABLE:
        details = str(error.details() if callable(getattr(error, "details", None)) else "")
        lowered = details.lower()
        if any(hint in lowered for hint in _CONNECT_HINTS):
            return CONNECT_FAILURE
        if any(hint in lowered for hint in _RESET_HINTS):
            return RESET
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and per_try_expired:
        return TIMEOUT
    return Outcome.from_status(_STATUS_OF.get(code, 500))


# --------------------------------------------------------------------- per-mesh state


class MeshLike(Protocol):
    """What the channels need of :class:`meshlib.Mesh`."""

    @property
    def engine(self) -> PolicyEngine: ...

    @property
    def tls(self) -> TLSContexts: ...

    @property
    def stats(self) -> StatsRegistry: ...


class _ServiceGuards:
    """Retry budget, breakers and outlier detector of one destination service."""

    __slots__ = ("breakers", "budget", "budget_policy", "outliers")

    def __init__(self, service: CompiledService) -> None:
        self.budget_policy = service.retry_budget
        self.budget = RetryBudget.from_policy(service.retry_budget)
        self.breakers = BreakerRegistry(service.circuit_breaker)
        self.outliers = OutlierDetector(service.outlier_detection)


class _Guards:
    """Per-mesh resilience state shared by every gRPC channel of that mesh (rebuilt for a
    service when its policy changes)."""

    def __init__(self) -> None:
        self._services: dict[str, _ServiceGuards] = {}

    def of(self, service: CompiledService) -> _ServiceGuards:
        guards = self._services.get(service.key)
        if (
            guards is None
            or guards.budget_policy != service.retry_budget
            or guards.breakers.policy != service.circuit_breaker
            or guards.outliers.policy != service.outlier_detection
        ):
            guards = _ServiceGuards(service)
            self._services[service.key] = guards
        return guards


_GUARDS: weakref.WeakKeyDictionary[Any, _Guards] = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


def _guards_of(mesh: Any) -> _Guards:
    with _GUARDS_LOCK:
        guards = _GUARDS.get(mesh)
        if guards is None:
            guards = _GUARDS[mesh] = _Guards()
        return guards


@dataclass(frozen=True, slots=True)
class _Fault:
    delay: float
    abort: grpc.StatusCode | None
    message: str


_NO_FAULT = _Fault(0.0, None, "")


def _decide_fault(plan: RoutePlan, headers: dict[str, str], rand: Callable[[], float]) -> _Fault:
    """The route's fault for this call, decided as for HTTP (``decide_fault``)."""
    if not plan.fault_applies(headers):
        return _NO_FAULT
    decision = decide_fault(plan.fault, rand)
    abort = None
    if decision.abort_grpc is not None:
        abort = _CODES.get(decision.abort_grpc, grpc.StatusCode.UNKNOWN)
    return _Fault(decision.delay, abort, f"fault injected by route {plan.name}")


# --------------------------------------------------------------------- sub-channels


class _SubChannels:
    """Real channels per endpoint authority, built for the SVID in force when first used."""

    def __init__(
        self,
        *,
        tls: TLSContexts,
        make: Callable[[str, Any, Sequence[tuple[str, Any]]], Any],
        retire: Callable[[Any], None],
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._tls = tls
        self._make = make
        self._retire = retire
        self._options = tuple(options)
        self._entries: dict[str, tuple[SVID, Any]] = {}
        self._credentials: tuple[SVID, Any] | None = None
        self._lock = threading.Lock()
        self._version = ""

    def _creds(self, svid: SVID) -> Any:
        cached = self._credentials
        if cached is not None and cached[0] is svid:
            return cached[1]
        creds = grpc.ssl_channel_credentials(
            root_certificates=svid.bundle_pem,
            private_key=svid.key_pem,
            certificate_chain=svid.cert_chain_pem,
        )
        self._credentials = (svid, creds)
        return creds

    def get(self, authority: str, dns_name: str) -> Any:
        svid = self._tls.svid
        entry = self._entries.get(authority)
        if entry is not None and entry[0] is svid:
            return entry[1]
        with self._lock:
            entry = self._entries.get(authority)
            if entry is not None and entry[0] is svid:
                return entry[1]
            options = (
                ("grpc.ssl_target_name_override", dns_name),
                ("grpc.default_authority", dns_name),
                *self._options,
            )
            channel = self._make(authority, self._creds(svid), options)
            self._entries[authority] = (svid, channel)
        if entry is not None:
            self._retire(entry[1])  # the previous SVID's channel: closed after the grace
        return channel

    def sweep(self, engine: PolicyEngine, service: CompiledService) -> None:
        """Retire channels to endpoints the snapshot no longer lists (once per version)."""
        if engine.version == self._version:
            return
        self._version = engine.version
        live = {e.authority for e in service.endpoints}
        with self._lock:
            gone = [a for a in self._entries if a not in live]
            retired = [self._entries.pop(a)[1] for a in gone]
        for channel in retired:
            self._retire(channel)

    def drain(self) -> list[Any]:
        with self._lock:
            channels = [channel for _, channel in self._entries.values()]
            self._entries.clear()
        return channels

    def channels(self) -> list[Any]:
        return [channel for _, channel in list(self._entries.values())]


# --------------------------------------------------------------------- one call


class _Call:
    """The decisions of one logical call; the sync and async loops do the I/O."""

    __slots__ = (
        "began",
        "core",
        "deadline",
        "fault",
        "guards",
        "metadata",
        "method",
        "plan",
        "retries",
        "safe",
        "service",
        "span",
        "telemetry",
        "tried",
    )

    def __init__(
        self, core: _Core, method: str, metadata: Any, timeout: float | None, streaming: bool
    ) -> None:
        engine = core.mesh.engine
        service = engine.resolve(core.service_name)
        if service is None:
            raise UnknownServiceError(core.service_name)
        core.subchannels.sweep(engine, service)
        md = tuple(metadata or ())
        headers = {str(k).lower(): v for k, v in md if isinstance(v, str)}
        plan = service.route(GRPC_METHOD, method, headers)
        self.core = core
        self.service = service
        self.plan = plan
        self.metadata = md
        self.retries: RetryPolicy = plan.retries
        self.guards = core.guards.of(service)
        self.safe = core.is_idempotent(method) or is_retry_safe(GRPC_METHOD, headers, plan.retries)
        self.tried: set[str] = set()
        now = time.monotonic()
        route_timeout = plan.timeout
        if route_timeout is None and timeout is None and not streaming:
            route_timeout = DEFAULT_TIMEOUT
        deadline = _deadline.effective_deadline(route_timeout, now)
        if timeout is not None:
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        self.deadline = deadline
        self.fault = _decide_fault(plan, headers, core.rand)
        self.method = method
        self.began = time.perf_counter()
        self.span: trace.Span | None = None
        self.telemetry: MeshTelemetry | None = getattr(core.mesh, "telemetry", None)
        if self.telemetry is not None:
            with contextlib.suppress(Exception):  # telemetry never fails a call
                rpc_service, _, rpc_method = method.strip("/").partition("/")
                self.span = self.telemetry.tracer.start_span(
                    method.strip("/"),
                    kind=trace.SpanKind.CLIENT,
                    attributes={
                        "rpc.system": "grpc",
                        "rpc.service": rpc_service,
                        "rpc.method": rpc_method,
                        "server.address": service.key,
                        "mesh.route": plan.name,
                        "mesh.peer.spiffe_id": service.spiffe_id,
                    },
                )
                carrier: dict[str, str] = {}
                inject(carrier, context=trace.set_span_in_context(self.span))
                self.metadata = md + tuple(carrier.items())

    def finish(self, code: Any) -> None:
        """End the call's span and record its duration; safe to call more than once."""
        telemetry, span = self.telemetry, self.span
        if telemetry is None:
            return
        self.telemetry = None
        try:
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", name)
                span.set_attribute("mesh.attempts", max(len(self.tried), 1))
                if name != "OK":
                    span.set_status(trace.StatusCode.ERROR, name)
                span.end()
            telemetry.rpc_done(
                side="client",
                method=self.method,
                code=name,
                duration=time.perf_counter() - self.began,
                service=self.service.key,
            )
            if len(self.tried) > 1:
                telemetry.retries.add(
                    len(self.tried) - 1, {"mesh.destination.service": self.service.name}
                )
        except Exception:
            return

    def fault_error(self) -> MeshRpcError | None:
        if self.fault.abort is None:
            return None
        err = FaultInjected(self.fault.message, service=self.service.key)
        return MeshRpcError(self.fault.abort, err)

    def try_timeout(self) -> float | None:
        """Seconds the next try may take; raises when the call's deadline has passed."""
        now = time.monotonic()
        end = attempt_deadline(self.retries, self.deadline, now)
        if end is None:
            return None
        if end <= now:
            raise MeshRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                DeadlineExceeded(
                    f"deadline of the call to {self.service.key} passed before a try could start",
                    service=self.service.key,
                    deadline=self.deadline,
                ),
            )
        return end - now

    def pick(self) -> str:
        """An endpoint for the next try: weighted backend, balancer, breakers."""
        service = self.service
        backend = self.plan.pick_backend(self.core.rand())
        balancer = self.core.balancer(service)
        breakers = self.guards.breakers
        outliers = self.guards.outliers
        outliers.set_endpoints(e.authority for e in service.endpoints)
        ejected = outliers.ejected()
        exclude = set(ejected)
        if len(self.tried | ejected) < len(backend.endpoints):
            exclude |= self.tried
        refused = 0
        for _ in range(len(backend.endpoints) + 1):
            endpoint = balancer.pick(backend.endpoints, frozenset(exclude))
            if endpoint is None:
                break
            if breakers.allow(endpoint.authority):
                self.tried.add(endpoint.authority)
                return endpoint.authority
            refused += 1
            exclude.add(endpoint.authority)
        subset = f" subset {backend.subset!r}" if backend.subset else ""
        if refused:
            raise MeshRpcError(
                grpc.StatusCode.UNAVAILABLE,
                CircuitOpen(
                    f"every endpoint of {service.key}{subset} has an open circuit breaker",
                    service=service.key,
                ),
            )
        raise MeshRpcError(
            grpc.StatusCode.UNAVAILABLE,
            NoHealthyEndpoint(
                f"service {service.key}{subset} has no healthy endpoint (route {self.plan.name})",
                service=service.key,
            ),
        )

    def record(self, authority: str, outcome: Outcome | None, started: float) -> None:
        ok = outcome is None or not is_failure(outcome)
        self.core.mesh.stats.get(authority).finish(started, ok)
        self.guards.breakers.record(authority, ok)
        self.guards.outliers.record(authority, outcome or _OK)

    def classify(self, result: Any) -> Outcome | None:
        """``should_retry`` for tenacity: the outcome of a failed try that may be retried."""
        if not isinstance(result, grpc.RpcError) or isinstance(result, MeshRpcError):
            return None
        outcome: Outcome | None = getattr(result, "_mesh_outcome", None)
        if outcome is None:
            return None
        if outcome is CONNECT_FAILURE or self.safe:
            return outcome  # nothing was sent on a connect failure: safe for any method
        return None

    def start(self) -> None:
        self.guards.budget.record_request()


def _note_outcome(error: Any, per_try: float | None, started_at: float) -> Outcome:
    expired = per_try is not None and time.monotonic() - started_at >= per_try * 0.95
    outcome = outcome_of(error, per_try_expired=expired)
    with contextlib.suppress(AttributeError):  # grpc's errors accept attributes
        error._mesh_outcome = outcome
    return outcome


class _Core:
    """What both channel flavours share: the service, balancers, guards, sub-channels."""

    def __init__(
        self,
        service: str,
        mesh: MeshLike,
        subchannels: _SubChannels,
        idempotent_methods: Iterable[str],
    ) -> None:
        self.service_name = service
        self.mesh = mesh
        self.subchannels = subchannels
        self.guards = _guards_of(mesh)
        self.rand = random.random
        self._balancers: dict[tuple[str, str], Balancer] = {}
        patterns = tuple(idempotent_methods)
        self._idempotent = {p for p in patterns if "*" not in p}
        self._idempotent_globs = tuple(p for p in patterns if "*" in p)

    def is_idempotent(self, method: str) -> bool:
        if method in self._idempotent:
            return True
        return any(fnmatch.fnmatchcase(method, p) for p in self._idempotent_globs)

    def balancer(self, service: CompiledService) -> Balancer:
        key = (service.key, service.load_balancer)
        found = self._balancers.get(key)
        if found is None:
            found = self._balancers[key] = make_balancer(service.load_balancer, self.mesh.stats)
        return found


def _kwargs(credentials: Any, wait_for_ready: bool | None, compression: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if credentials is not None:
        kwargs["credentials"] = credentials
    if wait_for_ready is not None:
        kwargs["wait_for_ready"] = wait_for_ready
    if compression is not None:
        kwargs["compression"] = compression
    return kwargs


# --------------------------------------------------------------------- sync channel


class _SyncMulti:
    def __init__(self, core: _Core, kind: str, method: str, ser: Any, de: Any) -> None:
        self._core = core
        self._kind = kind
        self._method = method
        self._ser = ser
        self._de = de

    def _inner(self, call: _Call, authority: str) -> Any:
        channel = self._core.subchannels.get(authority, call.service.dns_name)
        factory = getattr(channel, self._kind)
        return factory(
            self._method,
            request_serializer=self._ser,
            response_deserializer=self._de,
            _registered_method=True,
        )

    def _stream(self, request: Any, timeout: float | None, metadata: Any, **kw: Any) -> Any:
        """A streaming call: one endpoint, no retry; the outcome is recorded when it ends."""
        call = _Call(self._core, self._method, metadata, timeout, streaming=True)
        if call.fault.delay:
            time.sleep(call.fault.delay)
        error = call.fault_error()
        if error is not None:
            raise error
        call.start()
        per_try = call.try_timeout()
        authority = call.pick()
        started = self._core.mesh.stats.get(authority).start()
        factory = self._inner(call, authority)
        if self._kind == "stream_unary":  # its __call__ blocks: take the future
            factory = factory.future
        inner = factory(request, timeout=per_try, metadata=call.metadata or None, **kw)

        def done(rpc: Any) -> None:
            code = rpc.code()
            call.record(authority, None if code == grpc.StatusCode.OK else outcome_of(rpc), started)
            call.finish(code)

        inner.add_done_callback(done)
        return inner

    def _unary(self, request: Any, timeout: float | None, metadata: Any, **kw: Any) -> Any:
        """A unary-request call with retries; returns ``(response, grpc.Call)``."""
        call = _Call(self._core, self._method, metadata, timeout, streaming=False)
        try:
            result = self._unary_call(call, request, **kw)
        except grpc.RpcError as exc:
            call.finish(exc.code())
            raise
        except BaseException:
            call.finish("UNKNOWN")
            raise
        call.finish(grpc.StatusCode.OK)
        return result

    def _unary_call(self, call: _Call, request: Any, **kw: Any) -> Any:
        if call.fault.delay:
            time.sleep(call.fault.delay)
        error = call.fault_error()
        if error is not None:
            raise error
        call.start()

        def once() -> Any:
            per_try = call.try_timeout()
            authority = call.pick()
            started = self._core.mesh.stats.get(authority).start()
            began = time.monotonic()
            try:
                result = self._inner(call, authority).with_call(
                    request, timeout=per_try, metadata=call.metadata or None, **kw
                )
            except grpc.RpcError as exc:
                call.record(authority, _note_outcome(exc, per_try, began), started)
                raise
            call.record(authority, None, started)
            return result

        retrying = build_retrying(
            call.retries,
            budget=call.guards.budget,
            should_retry=call.classify,
            deadline=call.deadline,
        )
        return retrying(once)


class _UnaryUnary(_SyncMulti, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = _kwargs(credentials, wait_for_ready, compression)
        return self._unary(request, timeout, metadata, **kw)[0]

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = _kwargs(credentials, wait_for_ready, compression)
        return self._unary(request, timeout, metadata, **kw)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """One try, no retry (a future cannot be re-sent); otherwise as ``__call__``."""
        kw = _kwargs(credentials, wait_for_ready, compression)
        call = _Call(self._core, self._method, metadata, timeout, streaming=False)
        error = call.fault_error()
        if error is not None:
            raise error
        authority = call.pick()
        future = self._inner(call, authority).future(
            request, timeout=call.try_timeout(), metadata=call.metadata or None, **kw
        )
        future.add_done_callback(lambda rpc: call.finish(rpc.code()))
        return future


class _UnaryStream(_SyncMulti, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = _kwargs(credentials, wait_for_ready, compression)
        return self._stream(request, timeout, metadata, **kw)


class _StreamUnary(_SyncMulti, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self.future(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        ).result()

    def with_call(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        fut = self.future(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )
        return fut.result(), fut

    def future(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = _kwargs(credentials, wait_for_ready, compression)
        return self._stream(request_iterator, timeout, metadata, **kw)


class _StreamStream(_SyncMulti, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    def __call__(
        self,
        request_iterator: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = _kwargs(credentials, wait_for_ready, compression)
        return self._stream(request_iterator, timeout, metadata, **kw)


def _retire_later(grace: float) -> Callable[[Any], None]:
    def retire(channel: Any) -> None:
        timer = threading.Timer(grace, channel.close)
        timer.daemon = True
        timer.start()

    return retire


class MeshChannel(grpc.Channel):  # type: ignore[misc]
    """A sync ``grpc.Channel`` to a mesh service; hand it to a generated stub.

    Args:
        service: the service name (``inventory``, ``inventory.ns``…).
        mesh: the started :class:`meshlib.Mesh`.
        options: extra channel options for every per-endpoint channel.
        idempotent_methods: ``/pkg.Service/Method`` names (``*`` globs allowed) that may
            be retried on any retryable outcome.
        grace: seconds a replaced per-endpoint channel keeps running its calls.
    """

    def __init__(
        self,
        service: str,
        *,
        mesh: MeshLike,
        options: Sequence[tuple[str, Any]] = (),
        idempotent_methods: Iterable[str] = (),
        grace: float = DEFAULT_GRACE,
    ) -> None:
        subchannels = _SubChannels(
            tls=mesh.tls,
            make=lambda target, creds, opts: grpc.secure_channel(target, creds, options=opts),
            retire=_retire_later(grace),
            options=options,
        )
        self._core = _Core(service, mesh, subchannels, idempotent_methods)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _UnaryUnary(
            self._core, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _UnaryStream(
            self._core, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _StreamUnary(
            self._core, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _StreamStream(
            self._core, "stream_stream", method, request_serializer, response_deserializer
        )

    def subscribe(self, callback: Callable[[Any], None], try_to_connect: bool = False) -> None:
        """Not supported: connectivity belongs to the per-endpoint channels."""
        raise NotImplementedError("a meshed channel has no single connectivity state")

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        raise NotImplementedError("a meshed channel has no single connectivity state")

    def close(self) -> None:
        """Close every per-endpoint channel (calls in flight are cancelled)."""
        for channel in self._core.subchannels.drain():
            channel.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------- aio channel


class _AioUnaryCall:
    """The awaitable a retrying aio unary call returns; ``code()`` etc. read the last try."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[Any]]) -> None:
        self._last: list[Any] = []
        self._task = asyncio.ensure_future(run(self._last))

    def __await__(self) -> Any:
        return self._task.__await__()

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._task.add_done_callback(lambda _task: callback(self))

    async def _settle(self) -> Any:
        try:
            await self._task
        except grpc.RpcError as exc:
            return exc
        return self._last[-1] if self._last else None

    async def code(self) -> Any:
        last = await self._settle()
        result = last.code() if last is not None else grpc.StatusCode.OK
        return await result if asyncio.iscoroutine(result) else result

    async def details(self) -> str:
        last = await self._settle()
        result = last.details() if last is not None else ""
        return await result if asyncio.iscoroutine(result) else str(result)

    async def initial_metadata(self) -> Any:
        last = await self._settle()
        result = last.initial_metadata() if last is not None else ()
        return await result if asyncio.iscoroutine(result) else result

    async def trailing_metadata(self) -> Any:
        last = await self._settle()
        result = last.trailing_metadata() if last is not None else ()
        return await result if asyncio.iscoroutine(result) else result


class _AioStreamCall:
    """A started aio stream, with a fault delay or abort applied before the first read."""

    def __init__(self, inner: Any, delay: float, error: MeshRpcError | None) -> None:
        self._inner = inner
        self._delay = delay
        self._error = error

    async def _ready(self) -> None:
        if self._delay:
            delay, self._delay = self._delay, 0.0
            await asyncio.sleep(delay)
        if self._error is not None:
            raise self._error

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        await self._ready()
        async for item in self._inner:
            yield item

    async def read(self) -> Any:
        await self._ready()
        return await self._inner.read()

    async def code(self) -> Any:
        if self._error is not None:
            return self._error.code()
        return await self._inner.code()

    def __await__(self) -> Any:  # stream_unary calls are awaited for their response
        async def response() -> Any:
            await self._ready()
            return await self._inner

        return response().__await__()

    def __getattr__(self, name: str) -> Any:
        if self._inner is None:
            raise AttributeError(name)
        return getattr(self._inner, name)


class _AioMulti:
    def __init__(self, core: _Core, kind: str, method: str, ser: Any, de: Any) -> None:
        self._core = core
        self._kind = kind
        self._method = method
        self._ser = ser
        self._de = de

    def _inner(self, call: _Call, authority: str) -> Any:
        channel = self._core.subchannels.get(authority, call.service.dns_name)
        return getattr(channel, self._kind)(
            self._method,
            request_serializer=self._ser,
            response_deserializer=self._de,
            _registered_method=True,
        )

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kw = _kwargs(credentials, wait_for_ready, compression)
        if self._kind == "unary_unary":
            return self._unary(request, timeout, metadata, kw)
        return self._stream(request, timeout, metadata, kw)

    def _stream(self, request: Any, timeout: float | None, metadata: Any, kw: Any) -> Any:
        call = _Call(self._core, self._method, metadata, timeout, streaming=True)
        error = call.fault_error()
        if error is not None:
            return _AioStreamCall(None, call.fault.delay, error)
        call.start()
        per_try = call.try_timeout()
        authority = call.pick()
        started = self._core.mesh.stats.get(authority).start()
        inner = self._inner(call, authority)(
            request, timeout=per_try, metadata=call.metadata or None, **kw
        )
        inner.add_done_callback(lambda rpc: _after_aio_stream(rpc, call, authority, started))
        return _AioStreamCall(inner, call.fault.delay, None)

    def _unary(self, request: Any, timeout: float | None, metadata: Any, kw: Any) -> Any:
        call = _Call(self._core, self._method, metadata, timeout, streaming=False)
        inner_factory = self._inner

        async def run(last: list[Any]) -> Any:
            if call.fault.delay:
                await asyncio.sleep(call.fault.delay)
            error = call.fault_error()
            if error is not None:
                raise error
            call.start()

            async def once() -> Any:
                per_try = call.try_timeout()
                authority = call.pick()
                started = self._core.mesh.stats.get(authority).start()
                began = time.monotonic()
                rpc = inner_factory(call, authority)(
                    request, timeout=per_try, metadata=call.metadata or None, **kw
                )
                last.append(rpc)
                try:
                    response = await rpc
                except grpc.RpcError as exc:
                    call.record(authority, _note_outcome(exc, per_try, began), started)
                    raise
                call.record(authority, None, started)
                return response

            retrying = build_retrying(
                call.retries,
                budget=call.guards.budget,
                should_retry=call.classify,
                deadline=call.deadline,
                async_=True,
            )
            return await retrying(once)

        async def observed(last: list[Any]) -> Any:
            try:
                response = await run(last)
            except grpc.RpcError as exc:
                call.finish(exc.code())
                raise
            except BaseException:
                call.finish("UNKNOWN")
                raise
            call.finish(grpc.StatusCode.OK)
            return response

        return _AioUnaryCall(observed)


_RECORDING: set[asyncio.Task[None]] = set()


def _after_aio_stream(rpc: Any, call: _Call, authority: str, started: float) -> None:
    """Record how an aio stream ended (its status is only readable by awaiting)."""

    async def record() -> None:
        try:
            code = await rpc.code()
        except Exception:  # cancelled before a status: count it as a reset
            call.record(authority, RESET, started)
            call.finish(grpc.StatusCode.CANCELLED)
            return
        call.record(authority, None if code == grpc.StatusCode.OK else outcome_of(rpc), started)
        call.finish(code)

    task = asyncio.get_running_loop().create_task(record())
    _RECORDING.add(task)
    task.add_done_callback(_RECORDING.discard)


class AsyncMeshChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` to a mesh service; create and use it on one event loop.

    Arguments as :class:`MeshChannel`.
    """

    def __init__(
        self,
        service: str,
        *,
        mesh: MeshLike,
        options: Sequence[tuple[str, Any]] = (),
        idempotent_methods: Iterable[str] = (),
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

        def retire(channel: Any) -> None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - channels are used on a loop
                return
            task = loop.create_task(channel.close(grace))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        subchannels = _SubChannels(
            tls=mesh.tls,
            make=lambda target, creds, opts: grpc.aio.secure_channel(target, creds, options=opts),
            retire=retire,
            options=options,
        )
        self._core = _Core(service, mesh, subchannels, idempotent_methods)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _AioMulti(
            self._core, "unary_unary", method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _AioMulti(
            self._core, "unary_stream", method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _AioMulti(
            self._core, "stream_unary", method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _AioMulti(
            self._core, "stream_stream", method, request_serializer, response_deserializer
        )

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY when some per-endpoint channel is ready, else IDLE."""
        for channel in self._core.subchannels.channels():
            if channel.get_state(try_to_connect) == grpc.ChannelConnectivity.READY:
                return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("a meshed channel has no single connectivity state")

    async def channel_ready(self) -> None:
        """Wait until a channel to one endpoint (picked as a call would) is ready."""
        call = _Call(self._core, "/grpc.health.v1.Health/Check", None, None, streaming=True)
        authority = call.pick()
        await self._core.subchannels.get(authority, call.service.dns_name).channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close every per-endpoint channel, letting calls finish for *grace* seconds."""
        channels = self._core.subchannels.drain()
        await asyncio.gather(*(c.close(grace) for c in channels), return_exceptions=True)
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def __aenter__(self) -> AsyncMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)
