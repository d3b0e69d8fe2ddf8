"""Pure ASGI middleware: identity, PeerAuthentication, authorization, rate limit, deadline.

The peer certificate arrives as the ASGI TLS extension (``scope["extensions"]["tls"]``),
which :func:`meshlib.serve` provides; meshlib adds one key to it, ``spiffe_id``, computed
once per connection. A request with no TLS extension came over plaintext.

The caller's identity and remaining deadline reach the app as ``scope["state"]["mesh"]``
— in FastAPI, ``request.state.mesh`` — a :class:`PeerInfo`. While the app runs, the
deadline is also the ambient one (:data:`meshlib.resilience.deadline.current_deadline`), so
the app's own meshed calls never outlive their caller.

``x-forwarded-client-cert`` (XFCC) is the mesh's to set, as Envoy's ``SANITIZE_SET`` does
in sidecar mode: whatever the caller sent under that name is dropped, and an mTLS caller's
request gets ``By=<this workload's ID>;URI=<the caller's verified ID>``. A plaintext
caller's request (PERMISSIVE) carries no XFCC at all, so an app that reads the caller from
``URI=`` reads the same thing behind a sidecar and in library mode.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract

from meshlib.policy.engine import PolicyEngine
from meshlib.policy.model import Resource
from meshlib.resilience.deadline import DEADLINE_HEADER, current_deadline, parse_deadline_header
from meshlib.resilience.ratelimit import RateLimiter, retry_after_header
from meshlib.telemetry.metrics import MeshTelemetry

__all__ = ["FLAG_HEADER", "XFCC_HEADER", "MeshMiddleware", "PeerInfo", "set_xfcc"]

FLAG_HEADER = b"x-mesh-flag"
XFCC_HEADER = b"x-forwarded-client-cert"
_DEADLINE_KEY = DEADLINE_HEADER.encode()

Scope = dict[str, Any]
Message = dict[str, Any]


class Receive(Protocol):
    async def __call__(self) -> Message: ...


class Send(Protocol):
    async def __call__(self, message: Message, /) -> None: ...


class ASGIApp(Protocol):
    async def __call__(self, scope: Scope, receive: Receive, send: Send, /) -> None: ...


class EngineHolder(Protocol):
    """Anything with the active policy engine, such as :class:`meshlib.Mesh`."""

    @property
    def engine(self) -> PolicyEngine: ...


def _peer_of(scope: Scope) -> str | None:
    tls = scope.get("extensions", {}).get("tls")
    return tls.get("spiffe_id") if tls is not None else None


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who called, and how long they will wait.

    Attributes:
        peer: the caller's SPIFFE ID, None for a plaintext caller.
        authenticated: True when the caller presented a valid SVID.
        policy_version: version of the snapshot that admitted the request.
        deadline: the caller's deadline on this process's monotonic clock, or None.
    """

    peer: str | None
    authenticated: bool
    policy_version: str
    deadline: float | None = None

    def remaining(self) -> float | None:
        """Seconds left of the caller's budget (None when the caller set none)."""
        return None if self.deadline is None else self.deadline - time.monotonic()


def set_xfcc(scope: Scope, own: str | None, peer: str | None) -> None:
    """Replace any caller-sent XFCC in *scope* with the mesh's own (none for plaintext)."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != XFCC_HEADER]
    if peer is not None:
        value = f"By={own};URI={peer}" if own else f"URI={peer}"
        headers.append((XFCC_HEADER, value.encode("latin-1")))
    scope["headers"] = headers


def _own_id(mesh: object) -> str | None:
    try:
        own = getattr(mesh, "spiffe_id", None)
    except Exception:  # no SVID yet: XFCC then names only the caller
        return None
    return own if isinstance(own, str) else None


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    flag: str,
    body: dict[str, Any],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": body["error"][:120]})
        return
    payload = json.dumps({**body, "flag": flag}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (FLAG_HEADER, flag.encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class MeshMiddleware:
    """Enforce the inbound policy of the active snapshot on every HTTP request.

    Args:
        app: the ASGI app to protect.
        mesh: holds the active policy engine (normally the :class:`meshlib.Mesh`).

    Applying it twice is harmless: the inner copy sees the request already admitted.
    """

    def __init__(self, app: ASGIApp, *, mesh: EngineHolder) -> None:
        self.app = app
        self.mesh = mesh
        self._limit: tuple[Resource | None, RateLimiter | None] = (None, None)

    def _limiter(self, engine: PolicyEngine) -> RateLimiter | None:
        spec = engine.snapshot.inbound.rate_limit
        current, limiter = self._limit
        if spec is current or spec == current:  # same policy: keep the buckets' state
            return limiter
        limiter = RateLimiter(spec.spec) if spec is not None else None  # type: ignore[arg-type]
        self._limit = (spec, limiter)
        return limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        if "mesh" in state:
            return await self.app(scope, receive, send)
        telemetry: MeshTelemetry | None = getattr(self.mesh, "telemetry", None)
        if telemetry is None or scope["type"] != "http":
            return await self._admit(scope, receive, send, state)
        await self._observed(telemetry, scope, receive, send, state)

    async def _observed(
        self,
        telemetry: MeshTelemetry,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: dict[str, Any],
    ) -> None:
        """Serve one request inside a SERVER span, then record its metrics."""
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "flag": None}
        span: trace.Span | None = None
        token = None
        try:
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            incoming = extract(carrier)  # the caller's span context and its baggage
            span = telemetry.tracer.start_span(
                scope["method"],
                context=incoming,
                kind=trace.SpanKind.SERVER,
                attributes={
                    "http.request.method": scope["method"],
                    "url.path": scope["path"],
                    "url.scheme": scope.get("scheme", "http"),
                },
            )
            token = otel_context.attach(trace.set_span_in_context(span, incoming))
        except Exception:  # telemetry never fails a request
            span = None

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", ()):
                    if key == FLAG_HEADER:
                        seen["flag"] = value.decode("latin-1")
            await send(message)

        try:
            await self._admit(scope, receive, observing_send, state)
        finally:
            info = state.get("mesh")
            peer = info.peer if isinstance(info, PeerInfo) else _peer_of(scope)
            trace_id = None
            try:
                if token is not None:
                    otel_context.detach(token)
                if span is not None:
                    span.set_attribute("http.response.status_code", seen["status"])
                    if peer is not None:
                        span.set_attribute("mesh.peer.spiffe_id", peer)
                    if seen["flag"] is not None:
                        span.set_attribute("mesh.flag", seen["flag"])
                    if seen["status"] >= 500:
                        span.set_status(trace.StatusCode.ERROR)
                    context = span.get_span_context()
                    trace_id = format(context.trace_id, "032x") if context.is_valid else None
                    span.end()
            except Exception:
                trace_id = None
            telemetry.http_server_done(
                method=scope["method"],
                status=seen["status"],
                duration=time.perf_counter() - started,
                peer=peer,
                flag=seen["flag"],
                path=scope["path"],
                trace_id=trace_id,
            )

    async def _admit(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]
    ) -> None:
        """Identity, PeerAuthentication, authorization, rate limit, deadline; then the app."""
        engine = self.mesh.engine
        tls = scope.get("extensions", {}).get("tls")
        peer: str | None = None
        if tls is not None:
            peer = tls.get("spiffe_id")
            if peer is None:
                reason = tls.get("client_cert_error") or "no client certificate"
                return await _refuse(
                    scope,
                    send,
                    403,
                    "INVALID_PEER_CERT",
                    {"error": f"peer certificate is not a valid X.509-SVID: {reason}"},
                )
        elif engine.peer_mode == "STRICT":
            return await _refuse(
                scope,
                send,
                403,
                "PLAINTEXT_REFUSED",
                {
                    "error": "plaintext request refused: PeerAuthentication mode is STRICT, "
                    "mutual TLS is required",
                    "mechanism": "PeerAuthentication",
                },
            )
        verdict = engine.authorize(peer, scope.get("method", "GET"), scope["path"])
        if not verdict.allowed:
            return await _refuse(
                scope,
                send,
                403,
                "AUTHZ_DENIED",
                {
                    "error": "RBAC: access denied",
                    "mechanism": "AuthorizationPolicy",
                    "policy": verdict.policy,
                    "rule": verdict.rule,
                    "reason": verdict.reason,
                    "peer": peer,
                },
            )
        limiter = self._limiter(engine)
        if limiter is not None:
            wait = limiter.check(peer)
            if wait > 0:
                after = retry_after_header(wait)
                return await _refuse(
                    scope,
                    send,
                    429,
                    "RATE_LIMITED",
                    {"error": "rate limited by RateLimit policy", "mechanism": "RateLimit",
                     "retryAfter": int(after)},
                    ((b"retry-after", after.encode()),),
                )  # fmt: skip
        deadline = None
        for key, value in scope.get("headers", ()):
            if key == _DEADLINE_KEY:
                now = time.monotonic()
                deadline = parse_deadline_header(value.decode("latin-1"), now)
                if deadline is not None and deadline <= now:
                    return await _refuse(
                        scope,
                        send,
                        504,
                        "DEADLINE_EXCEEDED",
                        {"error": "the caller's deadline had passed on arrival"},
                    )
                break
        set_xfcc(scope, _own_id(self.mesh), peer)
        state["mesh"] = PeerInfo(peer, peer is not None, engine.version, deadline)
        if deadline is None:
            return await self.app(scope, receive, send)
        token = current_deadline.set(deadline)
        try:
            await self.app(scope, receive, send)
        finally:
            current_deadline.reset(token)
