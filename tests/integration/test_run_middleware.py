"""MeshMiddleware outside meshlib's own server: the ASGI TLS extension of another server.

A server that terminates TLS itself (here uvicorn with its own SSLContext and a protocol of
its own, no meshlib protocol) and reports the peer chain the ASGI way
(``client_cert_chain``, no meshlib ``spiffe_id``) gets the chain validated by the
middleware; one that terminates TLS without reporting it, or plaintext under STRICT, is
refused with PLAINTEXT_REFUSED naming the cause.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

import meshlib
from meshlib.integrations.asgi import MeshMiddleware
from tests.integration.harness import Control, free_port

pytestmark = pytest.mark.integration

TD = "spiffe://mesh.local/ns/default/sa"
STRICT = """\
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec: {mode: STRICT}
"""


def _call(middleware: MeshMiddleware, scope: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


async def _app(scope: dict[str, Any], _receive: Any, send: Any) -> None:
    info = scope["state"]["mesh"]
    body = json.dumps({"peer": info.peer}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _scope(scheme: str, tls: dict[str, Any] | None) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "scheme": scheme,
        "headers": [],
        "query_string": b"",
    }
    if tls is not None:
        scope["extensions"] = {"tls": tls}
    return scope


def test_other_servers_tls_extension(
    control: Control, workload: Callable[..., meshlib.Mesh]
) -> None:
    control.apply(STRICT)
    server = workload("plainserver")
    caller = workload("somecaller")
    middleware = MeshMiddleware(_app, mesh=server)
    leaf = ssl.DER_cert_to_PEM_cert(
        ssl.PEM_cert_to_DER_cert(caller.tls.svid.cert_chain_pem.decode())
    )
    # The standard extension: the chain, no spiffe_id. The middleware validates the leaf.
    tls = {"client_cert_chain": [leaf], "tls_version": 0x0304}
    status, body = _call(middleware, _scope("https", tls))
    assert (status, body) == (200, {"peer": f"{TD}/somecaller"})
    # A chain that is no SVID of this mesh is refused, naming why.
    own_ca = server.tls.svid.bundle_pem.decode()
    status, body = _call(middleware, _scope("https", {"client_cert_chain": [own_ca]}))
    assert status == 403 and body["flag"] == "INVALID_PEER_CERT", body
    assert "trust domain's own ID, not a workload's" in body["error"], body
    # No certificate reported at all.
    status, body = _call(middleware, _scope("https", {"client_cert_chain": []}))
    assert status == 403 and "no client certificate" in body["error"], body
    # TLS terminated, nothing reported (uvicorn --ssl-certfile without meshlib's protocol).
    status, body = _call(middleware, _scope("https", None))
    assert status == 403
    assert "does not report the peer certificate (no ASGI TLS extension" in body["error"]
    assert "meshctl run" in body["error"]
    # Plaintext under STRICT: still PLAINTEXT_REFUSED, now with the cause.
    status, body = _call(middleware, _scope("http", None))
    assert status == 403
    assert body["error"].startswith("plaintext request refused: PeerAuthentication mode is STRICT")
    assert "reached the app without TLS" in body["error"]


class _StandardTLSProtocol(H11Protocol):  # type: ignore[misc]
    """A server that reports the peer the ASGI way: ``client_cert_chain`` only (no meshlib)."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        extension = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else []}
        inner = self.app

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = extension
            await inner(scope, receive, send)

        self.app = app


def _serve_in_thread(config: uvicorn.Config) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    return server, thread


@pytest.mark.parametrize("reports", [True, False], ids=["standard-extension", "no-extension"])
def test_a_real_tls_server_of_another_kind(
    control: Control, workload: Callable[..., meshlib.Mesh], reports: bool
) -> None:
    """uvicorn terminating mTLS itself (no meshlib protocol): with the standard extension the
    caller is admitted by its SVID; without it STRICT refuses, naming the cause."""
    control.apply(STRICT)
    server_mesh = workload("plainserver")
    caller = workload("somecaller")
    port = free_port()
    config = uvicorn.Config(
        MeshMiddleware(_app, mesh=server_mesh),
        host="127.0.0.1",
        port=port,
        http=_StandardTLSProtocol if reports else "h11",
        ssl_context_factory=lambda _c, _d: server_mesh.tls.server_context(),
        log_level="warning",
        lifespan="off",
    )
    server, thread = _serve_in_thread(config)
    try:
        with httpx.Client(verify=caller.tls.client_context(), timeout=5) as client:
            reply = client.get(f"https://127.0.0.1:{port}/x")
    finally:
        server.should_exit = True
        thread.join(10)
    if reports:
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"peer": f"{TD}/somecaller"}
    else:
        assert reply.status_code == 403
        assert reply.headers["x-mesh-flag"] == "PLAINTEXT_REFUSED"
        assert "does not report the peer certificate" in reply.json()["error"]
