"""gRPC servers in the mesh: rotating mTLS credentials and the inbound-policy interceptors.

What :class:`meshlib.integrations.asgi.MeshMiddleware` does for HTTP, the interceptors here
do for gRPC, with the same policy and the same decisions:

1. peer identity: the caller's leaf certificate, read from the call's auth context
   (``x509_pem_cert``), must pass the X.509-SVID rules of
   :class:`meshlib.identity.svid.PeerSVIDValidator` for this workload's trust domain (one
   URI SAN with a workload path, not a CA). gRPC has no per-connection hook, so the
   validator's cache of verdicts makes the per-call check a dictionary lookup;
2. PeerAuthentication: a plaintext call (an insecure port) is refused under STRICT;
3. AuthorizationPolicy, with method ``POST`` and path ``/pkg.Service/Method``;
4. the local RateLimit;
5. the call's remaining deadline is published for the handler's own meshed calls.

Refusals and the status they get (the flag also travels as trailing metadata
``x-mesh-flag``, as the HTTP middleware's ``x-mesh-flag`` header)::

    INVALID_PEER_CERT   UNAUTHENTICATED     TLS peer without a valid X.509-SVID
    PLAINTEXT_REFUSED   UNAUTHENTICATED     plaintext caller under STRICT
    AUTHZ_DENIED        PERMISSION_DENIED   details name the deciding policy and rule
    RATE_LIMITED        RESOURCE_EXHAUSTED  the local token bucket is empty

:func:`server_credentials` / :func:`add_secure_port` give a server the workload's SVID
through ``grpc.dynamic_ssl_server_credentials``: gRPC asks for the configuration on every
new handshake, so a rotated certificate or trust bundle applies without a restart, and
client certificates are required.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract

from meshlib.errors import IdentityError
from meshlib.identity.svid import SVID, PeerSVIDValidator
from meshlib.identity.tls import TLSContexts
from meshlib.integrations.asgi import PeerInfo
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.model import RateLimitSpec
from meshlib.resilience.deadline import reset_deadline, set_deadline
from meshlib.resilience.ratelimit import RateLimiter
from meshlib.telemetry.metrics import MeshTelemetry

try:
    import grpc  # type: ignore[import-untyped]
    import grpc.aio  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("meshlib's gRPC support needs grpcio: pip install 'meshlib[grpc]'") from exc

__all__ = [
    "FLAG_METADATA",
    "AsyncMeshServerInterceptor",
    "MeshServerInterceptor",
    "Refusal",
    "add_secure_port",
    "admit",
    "current_peer",
    "server_credentials",
]

log = logging.getLogger(__name__)

FLAG_METADATA = "x-mesh-flag"
GRPC_METHOD = "POST"
"""HTTP/2 carries every gRPC call as a POST; authorization and routing match on it."""

_PEER: contextvars.ContextVar[PeerInfo | None] = contextvars.ContextVar(
    "meshlib_grpc_peer", default=None
)


class MeshLike(Protocol):
    """What the server side needs of :class:`meshlib.Mesh`."""

    @property
    def engine(self) -> PolicyEngine: ...

    @property
    def tls(self) -> TLSContexts: ...


def current_peer() -> PeerInfo | None:
    """Who is calling the gRPC handler running now (None outside a meshed handler).

    ``peer`` is the caller's SPIFFE ID, None for a plaintext caller admitted by PERMISSIVE.
    """
    return _PEER.get()


# --------------------------------------------------------------------- the decision


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused, and the status it gets."""

    code: grpc.StatusCode
    flag: str
    details: str
    metadata: tuple[tuple[str, str], ...] = ()


def _first(auth: Mapping[str, Sequence[bytes]], key: str) -> str | None:
    values = auth.get(key)
    return values[0].decode("utf-8", "replace") if values else None


def admit(
    engine: PolicyEngine,
    method: str,
    auth: Mapping[str, Sequence[bytes]],
    validator: PeerSVIDValidator,
) -> PeerInfo | Refusal:
    """Decide one inbound call from its auth context; pure, shared by both interceptors.

    Args:
        engine: the active policy.
        method: ``/pkg.Service/Method``.
        auth: ``context.auth_context()``: empty (or without ``transport_security_type``
            ``ssl``) for a plaintext call.
        validator: the X.509-SVID rules for the caller's leaf (``x509_pem_cert``).
    """
    peer: str | None = None
    if _first(auth, "transport_security_type") == "ssl":
        pems = auth.get("x509_pem_cert", ())
        reason: str | None = None
        if not pems:
            reason = "no client certificate"
        else:
            try:
                peer = str(validator.validate_pem(pems[0]))
            except IdentityError as exc:
                reason = str(exc)
        if reason is not None:
            return Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "INVALID_PEER_CERT",
                f"peer certificate is not a valid X.509-SVID: {reason}",
            )
    elif engine.peer_mode == "STRICT":
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "PLAINTEXT_REFUSED",
            "plaintext call refused: PeerAuthentication mode is STRICT, mutual TLS is required",
        )
    verdict = engine.authorize(peer, GRPC_METHOD, method)
    if not verdict.allowed:
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            "AUTHZ_DENIED",
            f"RBAC: access denied: {verdict.reason} (peer {peer or 'plaintext'}, {method})",
            (("x-mesh-policy", verdict.policy or ""), ("x-mesh-rule", verdict.rule or "")),
        )
    wait = _rate_limit_wait(engine, peer)
    if wait > 0.0:
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
            f"local rate limit of {engine.snapshot.service} exceeded; retry in {wait:.3f}s",
            (("retry-after-ms", str(max(1, round(wait * 1000)))),),
        )
    return PeerInfo(peer, peer is not None, engine.version)


_LIMITERS: dict[RateLimitSpec, RateLimiter] = {}


def _rate_limit_wait(engine: PolicyEngine, peer: str | None) -> float:
    """Seconds *peer* must wait under the local RateLimit (0.0: admitted).

    One limiter per RateLimit spec in this process, so a new snapshot with the same limit
    keeps the buckets' state.
    """
    resource = engine.snapshot.inbound.rate_limit
    if resource is None or not isinstance(resource.spec, RateLimitSpec):
        return 0.0
    spec = resource.spec
    limiter = _LIMITERS.get(spec)
    if limiter is None:
        _LIMITERS.clear()  # the limit changed: start over with the new one
        limiter = _LIMITERS.setdefault(spec, RateLimiter(spec))
    return limiter.check(peer)


def _remaining(context: Any) -> float | None:
    remaining = context.time_remaining()
    # grpc reports "no deadline" as None or as a huge value, depending on the stack.
    if remaining is None or remaining > 10 * 365 * 86400:
        return None
    return float(remaining)


def _enter(peer: PeerInfo, context: Any) -> tuple[contextvars.Token[Any], Any]:
    remaining = _remaining(context)
    deadline = None if remaining is None else time.monotonic() + remaining
    return _PEER.set(peer), set_deadline(deadline)


def _exit(tokens: tuple[contextvars.Token[Any], Any]) -> None:
    try:
        _PEER.reset(tokens[0])
        reset_deadline(tokens[1])
    except ValueError:  # reset from another context (a generator resumed elsewhere)
        pass


class _Observed:
    """The SERVER span and start time of one served call (telemetry, best effort)."""

    __slots__ = ("method", "peer", "span", "started", "telemetry", "token")

    def __init__(self, telemetry: MeshTelemetry, method: str, context: Any) -> None:
        self.telemetry = telemetry
        self.method = method
        self.started = time.perf_counter()
        self.peer: str | None = None
        self.span: trace.Span | None = None
        self.token: Any = None
        try:
            carrier = {
                str(k): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)
            }
            rpc_service, _, rpc_method = method.strip("/").partition("/")
            incoming = extract(carrier)  # the caller's span context and its baggage
            self.span = telemetry.tracer.start_span(
                method.strip("/"),
                context=incoming,
                kind=trace.SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": rpc_service,
                    "rpc.method": rpc_method,
                },
            )
            self.token = otel_context.attach(trace.set_span_in_context(self.span, incoming))
        except Exception:
            self.span = None

    def end(self, context: Any, error: BaseException | None) -> None:
        try:
            if self.token is not None:
                otel_context.detach(self.token)
        except Exception:
            pass
        try:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            if self.span is not None:
                self.span.set_attribute("rpc.grpc.status_code", name)
                if self.peer is not None:
                    self.span.set_attribute("mesh.peer.spiffe_id", self.peer)
                if name != "OK":
                    self.span.set_status(trace.StatusCode.ERROR, name)
                self.span.end()
            self.telemetry.rpc_done(
                side="server",
                method=self.method,
                code=name,
                duration=time.perf_counter() - self.started,
                peer=self.peer,
            )
            if name == "PERMISSION_DENIED":
                self.telemetry.authz_denials.add(1, {"rpc.method": self.method})
            elif name == "RESOURCE_EXHAUSTED":
                self.telemetry.rate_limited.add(1, {"rpc.method": self.method})
        except Exception:
            return


def _observe(mesh: Any, method: str, context: Any) -> _Observed | None:
    telemetry = getattr(mesh, "telemetry", None)
    return _Observed(telemetry, method, context) if telemetry is not None else None


def _metadata(refusal: Refusal) -> tuple[tuple[str, str], ...]:
    return ((FLAG_METADATA, refusal.flag), *refusal.metadata)


# --------------------------------------------------------------------- sync interceptor


class MeshServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Enforce the inbound policy on every call of a sync ``grpc.server``.

    Args:
        mesh: holds the active policy engine (normally the :class:`meshlib.Mesh`).
    """

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh

    def _gate(self, method: str, context: Any) -> tuple[contextvars.Token[Any], Any]:
        mesh = self._mesh
        decision = admit(mesh.engine, method, context.auth_context(), mesh.tls.peer_validator)
        if isinstance(decision, Refusal):
            context.set_trailing_metadata(_metadata(decision))
            context.abort(decision.code, decision.details)  # raises
        assert isinstance(decision, PeerInfo)
        return _enter(decision, context)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details)
        gate = self._gate
        mesh = self._mesh
        if handler.unary_unary is not None or handler.stream_unary is not None:
            field = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            behavior = getattr(handler, field)

            def unary(request: Any, context: Any) -> Any:
                observed = _observe(mesh, method, context)
                error: BaseException | None = None
                try:
                    tokens = gate(method, context)
                    if observed is not None:
                        observed.peer = _peer_id()
                    try:
                        return behavior(request, context)
                    finally:
                        _exit(tokens)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    if observed is not None:
                        observed.end(context, error)

            return handler._replace(**{field: unary})
        field = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        streaming_behavior = getattr(handler, field)

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            observed = _observe(mesh, method, context)
            error: BaseException | None = None
            try:
                tokens = gate(method, context)
                if observed is not None:
                    observed.peer = _peer_id()
                try:
                    yield from streaming_behavior(request, context)
                finally:
                    _exit(tokens)
            except BaseException as exc:
                error = exc
                raise
            finally:
                if observed is not None:
                    observed.end(context, error)

        return handler._replace(**{field: streaming})


# --------------------------------------------------------------------- aio interceptor


class AsyncMeshServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Enforce the inbound policy on every call of a ``grpc.aio.server``.

    Handlers may be coroutines, async generators, or coroutines writing with
    ``context.write``; sync handlers are accepted as grpc.aio accepts them.
    """

    def __init__(self, mesh: MeshLike) -> None:
        self._mesh = mesh

    async def _gate(self, method: str, context: Any) -> tuple[contextvars.Token[Any], Any]:
        mesh = self._mesh
        decision = admit(mesh.engine, method, context.auth_context(), mesh.tls.peer_validator)
        if isinstance(decision, Refusal):
            context.set_trailing_metadata(_metadata(decision))
            await context.abort(decision.code, decision.details)  # raises
        assert isinstance(decision, PeerInfo)
        return _enter(decision, context)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details)
        gate = self._gate
        mesh = self._mesh
        if handler.unary_unary is not None or handler.stream_unary is not None:
            field = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            behavior = getattr(handler, field)

            async def unary(request: Any, context: Any) -> Any:
                observed = _observe(mesh, method, context)
                error: BaseException | None = None
                try:
                    tokens = await gate(method, context)
                    if observed is not None:
                        observed.peer = _peer_id()
                    try:
                        result = behavior(request, context)
                        return await result if inspect.isawaitable(result) else result
                    finally:
                        _exit(tokens)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    if observed is not None:
                        observed.end(context, error)

            return handler._replace(**{field: unary})
        field = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        streaming_behavior = getattr(handler, field)

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            observed = _observe(mesh, method, context)
            try:
                async for item in _gated_stream(
                    gate, method, request, context, streaming_behavior, observed
                ):
                    yield item
            except BaseException as exc:
                if observed is not None:
                    observed.end(context, exc)
                raise
            if observed is not None:
                observed.end(context, None)

        return handler._replace(**{field: streaming})


async def _gated_stream(
    gate: Callable[[str, Any], Awaitable[Any]],
    method: str,
    request: Any,
    context: Any,
    streaming_behavior: Callable[[Any, Any], Any],
    observed: _Observed | None,
) -> AsyncIterator[Any]:
    """Admit the call, then pass the handler's stream through."""
    tokens = await gate(method, context)
    if observed is not None:
        observed.peer = _peer_id()
    try:
        result = streaming_behavior(request, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):
            await result  # the handler writes with context.write()
        elif result is not None:
            for item in result:
                yield item
    finally:
        _exit(tokens)


def _peer_id() -> str | None:
    peer = _PEER.get()
    return peer.peer if peer is not None else None


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


# --------------------------------------------------------------------- credentials


def _configuration(svid: SVID) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(svid.key_pem, svid.cert_chain_pem)], root_certificates=svid.bundle_pem
    )


def server_credentials(tls: TLSContexts) -> grpc.ServerCredentials:
    """mTLS server credentials that follow every rotation of *tls*, without a restart.

    gRPC calls the fetcher on each new handshake; it answers None (keep the current
    configuration) unless the SVID's serial or trust bundle changed since the last one.
    Client certificates are required and verified against the current bundle.
    """
    served = [tls.svid]

    def fetch() -> Any:
        try:
            svid = tls.svid
            last = served[0]
            if svid.serial == last.serial and svid.bundle_pem == last.bundle_pem:
                return None
            served[0] = svid
            return _configuration(svid)
        except Exception:  # never break a handshake: keep serving the last good config
            log.exception("could not build the rotated gRPC server configuration")
            return None

    return grpc.dynamic_ssl_server_credentials(
        _configuration(served[0]), fetch, require_client_authentication=True
    )


def add_secure_port(server: Any, address: str, *, mesh: MeshLike) -> int:
    """Listen on *address* (``host:port``, port 0 for any) with the mesh's mTLS; return the port.

    Works for ``grpc.server`` and ``grpc.aio.server``. Register the instance afterwards with
    ``mesh.set_endpoint(host, port)`` once the server has started.
    """
    return int(server.add_secure_port(address, server_credentials(mesh.tls)))
