"""orders: ``GET /orders/{item}`` asks inventory over the mesh, by gRPC, and reports both answers.

The call is ``GetItem`` of ``examples/protos/inventory.proto`` on a meshed ``grpc.aio``
channel (:class:`examples.grpc_inventory.InventoryClient`): mTLS with inventory's identity
checked, the TrafficPolicy's v1/v2 weights, retries and deadlines, as for an HTTP call.

Run: ``python -m examples.services.orders --port 0 --plaintext-port 0`` with ``MESH_*`` set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import meshlib
from examples.grpc_inventory import GET_ITEM, InventoryClient
from examples.services._runtime import caller_of, make_app, run

SERVICE = "orders"


def build(mesh: meshlib.Mesh) -> FastAPI:
    @asynccontextmanager
    async def inventory_channel(app: FastAPI) -> AsyncIterator[None]:
        # One meshed aio channel for the app's lifetime, made on the server's event loop.
        inventory = InventoryClient(mesh)
        app.state.inventory = inventory
        try:
            yield
        finally:
            await inventory.aclose()

    app = make_app(SERVICE, mesh, upstreams=inventory_channel)

    @app.get("/orders/{item}")
    async def order(item: str, request: Request) -> JSONResponse:
        me = {"service": SERVICE, "item": item, "caller": caller_of(request), "rpc": GET_ITEM}
        inventory: InventoryClient = request.app.state.inventory
        answer = await inventory.get_item(item)
        if "error" in answer:
            body = {**me, "upstream_error": answer["error"], "upstream_flag": answer["flag"]}
            return JSONResponse(body, status_code=502)
        return JSONResponse({**me, "upstream": answer})

    return app


if __name__ == "__main__":
    run(SERVICE, build)
