"""MeshMiddleware as a pure ASGI app: identity, PeerAuthentication, authorization."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from meshlib.integrations.asgi import MeshMiddleware, PeerInfo
from meshlib.policy.decode import decode_documents
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import InboundPolicy, Snapshot

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


def engine(mode: str = "STRICT", authz: str = "") -> PolicyEngine:
    policies = decode_documents(authz) if authz else ()
    return PolicyEngine.compile(
        Snapshot("v1", "mesh.local", "inventory", "default", InboundPolicy(mode, policies), ())
    )


class Holder:
    def __init__(self, e: PolicyEngine) -> None:
        self.engine = e


def call(e: PolicyEngine, tls: dict[str, Any] | None, path: str = "/items/1") -> tuple[int, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["info"] = scope["state"]["mesh"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path}
    if tls is not None:
        scope["extensions"] = {"tls": tls}
    asyncio.run(MeshMiddleware(app, mesh=Holder(e))(scope, receive, send))
    status = sent[0]["status"]
    body = sent[1]["body"]
    return status, seen.get("info") if status == 200 else json.loads(body)


def test_peer_identity_reaches_the_app() -> None:
    """The caller's SPIFFE ID is exposed as scope['state']['mesh']."""
    status, info = call(engine(), {"spiffe_id": ORDERS, "client_cert_error": None})
    assert status == 200
    assert info == PeerInfo(ORDERS, True, "v1")


def test_strict_refuses_plaintext_and_permissive_admits() -> None:
    """No TLS extension means plaintext: refused under STRICT, unauthenticated otherwise."""
    status, body = call(engine("STRICT"), None)
    assert status == 403 and body["flag"] == "PLAINTEXT_REFUSED"
    status, info = call(engine("PERMISSIVE"), None)
    assert status == 200 and info.peer is None and info.authenticated is False


def test_invalid_peer_certificate_is_refused() -> None:
    """A TLS peer whose certificate is not a valid SVID is refused with the reason."""
    status, body = call(engine(), {"spiffe_id": None, "client_cert_error": "2 URI SANs"})
    assert status == 403
    assert body["flag"] == "INVALID_PEER_CERT" and "2 URI SANs" in body["error"]


def test_authorization_denial_names_the_rule() -> None:
    """A denied request gets 403 with the policy and rule in the JSON body."""
    policy = """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: only-orders}
spec:
  service: inventory
  rules: [{name: orders-only, from: {principals: ["spiffe://mesh.local/ns/default/sa/orders"]}}]
"""
    other = "spiffe://mesh.local/ns/default/sa/frontend"
    status, body = call(engine(authz=policy), {"spiffe_id": other})
    assert status == 403
    assert body["mechanism"] == "AuthorizationPolicy" and body["peer"] == other
    status, _ = call(engine(authz=policy), {"spiffe_id": ORDERS})
    assert status == 200


def test_lifespan_passes_through() -> None:
    """Non-HTTP scopes reach the app untouched."""
    got: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(scope["type"])

    asyncio.run(MeshMiddleware(app, mesh=Holder(engine()))({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert got == ["lifespan"]


def test_caller_trace_context_reaches_the_app_with_telemetry_on() -> None:
    """With telemetry, the caller's traceparent is the trace the app runs in (no SDK needed)."""
    from opentelemetry import trace

    from meshlib.telemetry.metrics import MeshTelemetry

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["trace"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    holder = Holder(engine())
    holder.telemetry = MeshTelemetry(service="inventory", namespace="default")  # type: ignore[attr-defined]

    async def send(message: dict[str, Any]) -> None:
        pass

    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"traceparent", f"00-{trace_id}-b7ad6b7169203331-01".encode())],
        "extensions": {"tls": {"spiffe_id": ORDERS}},
    }
    asyncio.run(MeshMiddleware(app, mesh=holder)(scope, None, send))  # type: ignore[arg-type]
    assert seen["trace"] == trace_id


def test_forged_xfcc_is_replaced_by_the_mesh() -> None:
    """A caller-sent XFCC never reaches the app; an mTLS caller's request gets URI=<peer>."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["xfcc"] = [v for k, v in scope["headers"] if k == b"x-forwarded-client-cert"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict[str, Any]) -> None:
        pass

    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-forwarded-client-cert", b"URI=spiffe://evil/ns/x/sa/y")],
        "extensions": {"tls": {"spiffe_id": ORDERS}},
    }
    asyncio.run(MeshMiddleware(app, mesh=Holder(engine()))(scope, None, send))  # type: ignore[arg-type]
    assert seen["xfcc"] == [f"URI={ORDERS}".encode()]
