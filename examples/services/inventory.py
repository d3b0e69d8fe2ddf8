"""inventory: ``GET /items/{item}`` answers the stock, its own version and who asked.

Run: ``python -m examples.services.inventory --port 0 --plaintext-port 0`` with ``MESH_*`` set
(``MESH_LABELS=version=v1`` or ``version=v2`` picks the TrafficPolicy subset).
"""

from __future__ import annotations

import os
import zlib

from fastapi import FastAPI, Request

import meshlib
from examples.services._runtime import caller_of, make_app, run

SERVICE = "inventory"


def build(mesh: meshlib.Mesh) -> FastAPI:
    app = make_app(SERVICE, mesh)
    version = mesh.config.labels.get("version", "unversioned")

    @app.get("/items/{item}")
    async def item(item: str, request: Request) -> dict[str, object]:
        return {
            "service": SERVICE,
            "version": version,
            "pid": os.getpid(),
            "item": item,
            "stock": zlib.crc32(item.encode()) % 100,
            "caller": caller_of(request),
        }

    return app


if __name__ == "__main__":
    run(SERVICE, build)
