"""Pure ASGI middleware: the HTTP adapter of the inbound admission.

The peer certificate arrives as the ASGI TLS extension (``scope["extensions"]["tls"]``),
which :func:`meshlib.serve` provides; meshlib adds one key to it, ``spiffe_id``, computed
once per connection. Another server's extension (``client_cert_chain``, no ``spiffe_id``)
has its leaf validated here. A request with no TLS extension came over plaintext; a
PLAINTEXT_REFUSED then names why the app saw no TLS (docs/run.md). The decision —
identity, PeerAuthentication, authorization, rate limit, deadline — is
:meth:`meshlib.inbound.Admission.decide`; this module only reads the scope, renders the
refusal and runs the app.

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

import dataclasses
import ssl
import time
from typing import Any, Protocol

from meshlib.errors import IdentityError
from meshlib.inbound.cache import AdmissionSource
from meshlib.inbound.peer import PeerInfo
from meshlib.inbound.refusal import FLAG_HEADER, PLAINTEXT_REFUSED, Refusal
from meshlib.policy.engine import PolicyEngine
from meshlib.resilience.deadline import DEADLINE_HEADER, current_deadline, parse_deadline_header
from meshlib.telemetry.server import ServerCall, propagation_keys, start_server_call

__all__ = ["FLAG_HEADER", "XFCC_HEADER", "MeshMiddleware", "PeerInfo", "set_xfcc"]

XFCC_HEADER = b"x-forwarded-client-cert"
_DEADLINE_KEY = DEADLINE_HEADER.encode()
_JSON = (b"content-type", b"application/json")
_EMPTY: dict[str, Any] = {}
_NO_KEYS: frozenset[bytes] = frozenset()

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


def set_xfcc(scope: Scope, own: str | None, peer: str | None) -> None:
    """Replace any caller-sent XFCC in *scope* with the mesh's own (none for plaintext)."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != XFCC_HEADER]
    if peer is not None:
        headers.append((XFCC_HEADER, _xfcc_value(own, peer)))
    scope["headers"] = headers


def _xfcc_value(own: str | None, peer: str) -> bytes:
    return (f"By={own};URI={peer}" if own else f"URI={peer}").encode("latin-1")


async def _refuse(scope: Scope, send: Send, refusal: Refusal) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.message[:120]})
        return
    body = refusal.body
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                _JSON,
                (b"content-length", str(len(body)).encode()),
                (FLAG_HEADER, refusal.flag.encode()),
                *refusal.http_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
        self._admission = AdmissionSource(mesh)
        self._own: str | None = None
        self._xfcc: dict[str, bytes] = {}

    def _xfcc_for(self, peer: str) -> bytes:
        value = self._xfcc.get(peer)
        if value is None:
            own = self._own
            if own is None:
                own = self._own = _own_id(self.mesh)
            value = _xfcc_value(own, peer)
            if own is not None:  # cache only once this workload's ID is known
                if len(self._xfcc) >= 1024:
                    self._xfcc.clear()
                self._xfcc[peer] = value
        return value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            return await self.app(scope, receive, send)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        elif "mesh" in state:
            return await self.app(scope, receive, send)
        # One pass over the headers: the deadline, a caller-sent XFCC, propagation fields.
        deadline_value: bytes | None = None
        forged = False
        carrier: dict[str, str] | None = None
        telemetry = getattr(self.mesh, "telemetry", None) if kind == "http" else None
        fields = propagation_keys() if telemetry is not None else _NO_KEYS
        headers = scope.get("headers", ())
        for key, value in headers:
            if key == _DEADLINE_KEY:
                deadline_value = value
            elif key == XFCC_HEADER:
                forged = True
            elif key in fields:
                if carrier is None:
                    carrier = {}
                carrier[key.decode("latin-1")] = value.decode("latin-1")
        call: ServerCall | None = None
        if telemetry is not None:
            call = start_server_call(
                telemetry,
                protocol="http",
                method=scope["method"],
                path=scope["path"],
                scheme=scope.get("scheme", "http"),
                carrier=carrier,
                scope=scope,
            )
        if call is None:
            await self._admit(scope, receive, send, state, headers, deadline_value, forged)
            return
        seen: list[Any] = [500, None]  # the status sent, and the flag of a refusal

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen[0] = message["status"]
            await send(message)

        try:
            seen[1] = await self._admit(
                scope, receive, observing_send, state, headers, deadline_value, forged
            )
        finally:
            info = state.get("mesh")
            if isinstance(info, PeerInfo):
                peer = info.peer
            else:
                tls = scope.get("extensions", _EMPTY).get("tls")
                peer = tls.get("spiffe_id") if tls is not None else None
            call.finish(status=seen[0], peer=peer, flag=seen[1])

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: dict[str, Any],
        headers: Any,
        deadline_value: bytes | None,
        forged: bool,
    ) -> str | None:
        """Decide with the admission of the active snapshot; then refuse or run the app.

        Returns the refusal's flag (``AUTHZ_DENIED``, …), or None once the app has run.
        """
        admission = self._admission.get()
        tls = scope.get("extensions", _EMPTY).get("tls")
        deadline = None
        if deadline_value is not None:
            deadline = parse_deadline_header(deadline_value.decode("latin-1"), time.monotonic())
        if tls is not None:
            peer, peer_error = tls.get("spiffe_id"), tls.get("client_cert_error")
            if "spiffe_id" not in tls:  # another server's extension: validate its chain here
                peer, peer_error = _peer_of_chain(self.mesh, tls.get("client_cert_chain"))
            decision = admission.decide(
                secure=True,
                peer=peer,
                method=scope.get("method", "GET"),
                path=scope["path"],
                peer_error=None if peer is not None else peer_error,
                deadline=deadline,
                headers=headers,
                query=scope.get("query_string", b""),
            )
        else:
            peer = None
            decision = admission.decide(
                secure=False,
                peer=None,
                method=scope.get("method", "GET"),
                path=scope["path"],
                deadline=deadline,
                headers=headers,
                query=scope.get("query_string", b""),
            )
        if isinstance(decision, Refusal):
            if tls is None and decision.flag == PLAINTEXT_REFUSED:
                decision = _no_tls_refusal(decision, scope.get("scheme") in ("https", "wss"))
            await _refuse(scope, send, decision)
            return decision.flag
        # XFCC is the mesh's: drop a caller-sent one, add ours for an mTLS caller.
        if forged:
            headers = [(k, v) for k, v in headers if k != XFCC_HEADER]
            scope["headers"] = headers
        if peer is not None:
            if not isinstance(headers, list):
                headers = scope["headers"] = list(headers)
            headers.append((XFCC_HEADER, self._xfcc_for(peer)))
        if admission.jwt is not None:  # RequestAuthentication: token and claim headers
            headers = scope["headers"] = admission.jwt.rewrite(headers, decision.auth)
        state["mesh"] = decision
        if deadline is None:
            await self.app(scope, receive, send)
            return None
        token = current_deadline.set(deadline)
        try:
            await self.app(scope, receive, send)
        finally:
            current_deadline.reset(token)
        return None


def _peer_of_chain(mesh: object, chain: Any) -> tuple[str | None, str | None]:
    """``(spiffe_id, error)`` of the leaf of an ASGI ``client_cert_chain`` (PEM strings)."""
    if not chain:
        return None, "no client certificate"
    try:
        validator = mesh.tls.peer_validator  # type: ignore[attr-defined]
        return str(validator.validate_der(ssl.PEM_cert_to_DER_cert(chain[0]))), None
    except (IdentityError, ValueError, AttributeError) as exc:
        return None, str(exc) or type(exc).__name__


def _no_tls_refusal(refusal: Refusal, server_tls: bool) -> Refusal:
    """PLAINTEXT_REFUSED naming why the app saw no TLS (docs/run.md, "Other servers")."""
    if server_tls:
        message = (
            f"{refusal.message}; the server terminated TLS but does not report the peer "
            "certificate (no ASGI TLS extension in the scope): serve the app with "
            "meshlib.serve or meshctl run, or under a server that reports the peer "
            "certificate as the ASGI TLS extension"
        )
    else:  # a plaintext listener: meshlib.serve's own plaintext port, or a plain server
        message = (
            f"{refusal.message}; the request reached the app without TLS (no ASGI TLS "
            "extension in the scope): call the service over the mesh (mTLS); if this "
            "listener was meant to terminate mesh mTLS, serve the app with meshlib.serve "
            "or meshctl run"
        )
    return dataclasses.replace(refusal, message=message, grpc_details=message)


def _own_id(mesh: object) -> str | None:
    try:
        own = getattr(mesh, "spiffe_id", None)
    except Exception:  # no SVID yet: XFCC then names only the caller
        return None
    return own if isinstance(own, str) else None
