"""What the demo's HTTP services share: the command line, the mesh, and the upstream call."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import meshlib

__all__ = ["call_upstream", "caller_of", "make_app", "run"]


def caller_of(request: Request) -> str | None:
    """The caller's SPIFFE ID as the mesh authenticated it (None for a plaintext caller)."""
    info = getattr(request.state, "mesh", None)
    return info.peer if info is not None else None


def make_app(
    service: str,
    mesh: meshlib.Mesh,
    *,
    upstreams: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    """A FastAPI app whose ``app.state.http`` is a meshed ``httpx.AsyncClient``.

    *upstreams*, if given, is entered for the app's lifetime after the HTTP client is made,
    on the server's event loop: the place to open other meshed clients (a gRPC channel)
    and to close them on shutdown.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mesh.async_client(timeout=10.0) as http:
            app.state.http = http
            if upstreams is None:
                yield
            else:
                async with upstreams(app):
                    yield

    app = FastAPI(title=f"meshlib demo: {service}", lifespan=lifespan)
    app.state.mesh = mesh
    return app


async def call_upstream(request: Request, url: str, me: dict[str, Any]) -> JSONResponse:
    """GET *url* over the mesh; answer 200 with both views, or 502 naming what went wrong."""
    http: httpx.AsyncClient = request.app.state.http
    try:
        response = await http.get(url)
    except (httpx.HTTPError, meshlib.MeshError) as exc:
        body = {**me, "upstream_error": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=502)
    try:
        upstream: Any = response.json()
    except ValueError:
        upstream = response.text
    if response.status_code != 200:
        body = {**me, "upstream_status": response.status_code, "upstream": upstream}
        return JSONResponse(body, status_code=502)
    return JSONResponse({**me, "upstream": upstream})


def run(service: str, build: Any) -> None:
    """Parse the command line, join the mesh as *service* and serve ``build(mesh)`` until a signal.

    The mesh settings come from ``MESH_*`` variables (``MESH_CONTROL_URL``, ``MESH_TOKEN``,
    ``MESH_DATA_DIR``, ``MESH_LABELS``…); ``MESH_SERVICE`` defaults to *service*.
    """
    parser = argparse.ArgumentParser(prog=f"python -m examples.services.{service}")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="mTLS port (0: any free port)")
    parser.add_argument(
        "--plaintext-port",
        type=int,
        default=None,
        help="also listen without TLS here (0: any free port); PeerAuthentication decides",
    )
    args = parser.parse_args()
    mesh = meshlib.Mesh.from_env(service=os.environ.get("MESH_SERVICE") or service)
    meshlib.serve(
        build(mesh),
        mesh=mesh,
        host=args.host,
        port=args.port,
        plaintext_port=args.plaintext_port,
    )
