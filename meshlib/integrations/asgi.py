"""Pure ASGI middleware: peer identity, PeerAuthentication and AuthorizationPolicy.

The peer certificate arrives as the ASGI TLS extension (``scope["extensions"]["tls"]``),
which :func:`meshlib.serve` provides; meshlib adds one key to it, ``spiffe_id``, computed
once per connection. A request with no TLS extension came over plaintext.

The caller's identity reaches the app as ``scope["state"]["mesh"]`` — in FastAPI,
``request.state.mesh`` — a :class:`PeerInfo`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from meshlib.policy.engine import PolicyEngine

__all__ = ["FLAG_HEADER", "MeshMiddleware", "PeerInfo"]

FLAG_HEADER = b"x-mesh-flag"

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


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who called: ``peer`` is the caller's SPIFFE ID, None for a plaintext caller."""

    peer: str | None
    authenticated: bool
    policy_version: str


async def _refuse(scope: Scope, send: Send, status: int, flag: str, body: dict[str, Any]) -> None:
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        if "mesh" in state:
            return await self.app(scope, receive, send)
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
        state["mesh"] = PeerInfo(peer, peer is not None, engine.version)
        await self.app(scope, receive, send)
