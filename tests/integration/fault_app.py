"""A meshed service with deterministic failures, for the resilience tests (run as a subprocess).

Run as ``python -m tests.integration.fault_app`` with the ``MESH_*`` variables and ``PORT``.
``MODE`` picks the behaviour of the whole instance:

* unset: the endpoints below;
* ``always503``: every request except ``/count/...`` is counted and answered 503;
* ``reset``: no HTTP at all — a raw TLS server with the mesh certificate that completes
  the handshake, reads the request and aborts the connection without answering.

Every request except ``/count/...`` is counted under its *key*, the last path segment,
before it is handled. Endpoints:

* ``/fail/{n}/{key}[?status=503]``: *status* for the first *n* requests of *key*, then 200;
* ``/stall/{n}/{ms}/{key}``: the first *n* requests of *key* sleep *ms* first;
* ``/status/{code}``: answers *code*;
* ``/slow/{ms}`` and ``/slow/{ms}/{key}``: sleeps *ms* (at most 10 s); reports the caller's
  remaining deadline on arrival and after the sleep;
* ``/chain?to=svc&path=/p``: calls ``http://svc/p`` with this instance's own mesh client
  (inheriting the deadline of the request being served) and reports what it saw;
* ``/count/{key}``: how many requests of *key* this instance got (any method);
* ``/whoami/...``: the end user: the ``x-user`` header, whether a token reached the app,
  and (library mode) the verified principal;
* anything else: an echo of method, path and labels.

Every JSON answer carries the instance's ``labels`` (``MESH_LABELS``), so tests can tell
instances apart.

With ``PLAIN=1`` the same app runs without meshlib, on plaintext 127.0.0.1:PORT, as an
unmodified app behind an Envoy sidecar: the caller's identity is read from the
``x-forwarded-client-cert`` header Envoy sets (``URI=spiffe://…``), and ``remaining()`` from
``x-envoy-expected-rq-timeout-ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import Counter
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import meshlib
from meshlib.errors import MeshError

MODE = os.environ.get("MODE", "")
LABELS = os.environ.get("MESH_LABELS", "")
MAX_SLEEP_MS = 10_000

HITS: Counter[str] = Counter()
_state: dict[str, Any] = {}  # "mesh": this instance's Mesh

api = FastAPI()


def _key(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class Counting:
    """Counts every request by key before the app sees it; answers 503 in ``always503``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/count/"):
            HITS[_key(scope["path"])] += 1
            if MODE == "always503":
                body = json.dumps({"labels": LABELS, "error": "always503"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


app = Counting(api)


@api.get("/count/{key}")
async def count(key: str) -> dict[str, Any]:
    return {"labels": LABELS, "key": key, "count": HITS[key]}


@api.api_route("/fail/{n}/{key}", methods=["GET", "POST", "PUT", "DELETE"])
async def fail(n: int, key: str, status: int = 503) -> JSONResponse:
    seen = HITS[key]
    code = status if seen <= n else 200
    return JSONResponse({"labels": LABELS, "key": key, "seen": seen}, status_code=code)


@api.get("/stall/{n}/{ms}/{key}")
async def stall(n: int, ms: int, key: str) -> dict[str, Any]:
    seen = HITS[key]
    if seen <= n:
        await asyncio.sleep(min(ms, MAX_SLEEP_MS) / 1000)
    return {"labels": LABELS, "key": key, "seen": seen}


@api.get("/status/{code}")
async def status(code: int) -> JSONResponse:
    return JSONResponse({"labels": LABELS, "status": code}, status_code=code)


@api.get("/slow/{ms}")
@api.get("/slow/{ms}/{key}")
async def slow(ms: int, request: Request) -> dict[str, Any]:
    info = request.state.mesh
    arrival = info.remaining()
    await asyncio.sleep(min(ms, MAX_SLEEP_MS) / 1000)
    return {"labels": LABELS, "remaining_on_arrival": arrival, "remaining": info.remaining()}


@api.get("/chain")
async def chain(to: str, path: str, request: Request) -> dict[str, Any]:
    arrival = request.state.mesh.remaining()
    seen: dict[str, Any] = {"labels": LABELS, "remaining_on_arrival": arrival}
    # A client with pools of its own per request: no idle keep-alive connection to the
    # callee outlives the call (the mesh's shared pools would keep one).
    transport = _state["mesh"].async_transport(own_pools=True)
    async with httpx.AsyncClient(transport=transport) as client:
        try:
            response = await client.get(f"http://{to}{path}")
        except (MeshError, httpx.HTTPError) as exc:
            return seen | {"error": type(exc).__name__, "message": str(exc)}
    return seen | {"status": response.status_code, "body": response.json()}


@api.get("/whoami/{rest:path}")
async def whoami(rest: str, request: Request) -> dict[str, Any]:
    """The end user as the app sees it (RequestAuthentication): claim header and token."""
    auth = getattr(request.state.mesh, "auth", None)
    return {
        "labels": LABELS,
        "user": request.headers.get("x-user"),
        "token": "authorization" in request.headers,
        "principal": auth.principal if auth is not None else None,
    }


@api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def echo(path: str, request: Request) -> dict[str, Any]:
    return {
        "labels": LABELS,
        "method": request.method,
        "path": "/" + path,
        "peer": request.state.mesh.peer,
    }


async def serve_resets(mesh: meshlib.Mesh, port: int) -> None:
    """The ``reset`` mode: handshake, read the request, abort; registered like a server."""
    await mesh.astart()

    async def abort(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(65536), 5)
        writer.transport.abort()  # RST, no response

    server = await asyncio.start_server(
        abort, "127.0.0.1", port, ssl=mesh.tls.server_context(), ssl_handshake_timeout=5
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mesh.set_endpoint("127.0.0.1", port)
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(mesh.clear_endpoint)
        server.close()
        await mesh.aclose()


class PlainInfo:
    """``request.state.mesh`` for the PLAIN app: what the sidecar told it in headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        xfcc = headers.get("x-forwarded-client-cert", "")
        uris = [p[4:] for p in xfcc.split(";") if p.startswith("URI=")]
        self.peer = uris[0] if uris else None
        self.authenticated = self.peer is not None
        timeout = headers.get("x-envoy-expected-rq-timeout-ms")
        self._remaining = int(timeout) / 1000 if timeout else None

    def remaining(self) -> float | None:
        return self._remaining


class Plain:
    """Sets ``request.state.mesh`` from the sidecar's headers (the app has no mesh)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            scope.setdefault("state", {})["mesh"] = PlainInfo(headers)
        await self.inner(scope, receive, send)


def main() -> None:
    if os.environ.get("PLAIN"):
        import uvicorn

        uvicorn.run(Plain(app), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
        return
    mesh = meshlib.Mesh.from_env()
    _state["mesh"] = mesh
    port = int(os.environ["PORT"])
    if MODE == "reset":
        asyncio.run(serve_resets(mesh, port))
        return
    meshlib.serve(app, mesh=mesh, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
