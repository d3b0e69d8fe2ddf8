"""frontend: ``GET /shop/{item}`` asks orders over the mesh; open to every mesh identity.

Run: ``python -m examples.services.frontend --port 0 --plaintext-port 0`` with ``MESH_*`` set.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import meshlib
from examples.services._runtime import call_upstream, caller_of, make_app, run

SERVICE = "frontend"


def build(mesh: meshlib.Mesh) -> FastAPI:
    app = make_app(SERVICE, mesh)

    @app.get("/shop/{item}")
    async def shop(item: str, request: Request) -> JSONResponse:
        me = {"service": SERVICE, "item": item, "caller": caller_of(request)}
        return await call_upstream(request, f"http://orders/orders/{item}", me)

    return app


if __name__ == "__main__":
    run(SERVICE, build)
