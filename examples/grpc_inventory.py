"""inventory over gRPC: the demo's orders -> inventory hop, with the same mesh as HTTP.

Server (``examples/protos/inventory.proto``, compiled by ``make protos``); the demo starts two,
with ``MESH_LABELS=version=v1`` and ``version=v2`` (the TrafficPolicy's subsets)::

    MESH_SERVICE=inventory MESH_TOKEN=... python -m examples.grpc_inventory --port 0

Client side, inside orders (a FastAPI handler)::

    from examples.grpc_inventory import InventoryClient
    inventory = InventoryClient(mesh)          # once, in the app's lifespan
    item = await inventory.get_item("apple")   # mTLS, policy, retries, deadline

The server answers ``GetItem`` with the stock, its ``version`` label, and the caller's
SPIFFE ID as the mesh authenticated it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import zlib
from typing import Any

import grpc
import grpc.aio

import meshlib
from examples.generated import inventory_pb2 as pb
from examples.generated import inventory_pb2_grpc as pb_grpc
from meshlib.integrations import grpc as meshgrpc

SERVICE = "inventory"
GET_ITEM = "/meshlib.demo.inventory.v1.Inventory/GetItem"


class Inventory(pb_grpc.InventoryServicer):  # type: ignore[misc]
    """The demo inventory: stock is a hash of the item name."""

    def __init__(self, version: str, port: int) -> None:
        self.version = version
        self.port = port

    def _item(self, name: str) -> Any:
        peer = meshgrpc.current_peer()
        deadline = meshgrpc.current_deadline()
        return pb.Item(
            item=name,
            stock=zlib.crc32(name.encode()) % 100,
            service=SERVICE,
            version=self.version,
            port=self.port,
            caller=(peer.peer or "") if peer else "",
            deadline_ms=-1 if deadline is None else int((deadline - time.monotonic()) * 1000),
        )

    async def GetItem(self, request: Any, context: Any) -> Any:
        return self._item(request.item)

    async def WatchStock(self, request: Any, context: Any) -> Any:
        for _ in range(request.count):
            yield self._item(request.item)
            await asyncio.sleep(0.5)


class InventoryClient:
    """orders' view of inventory: a meshed aio channel and a stub, made once."""

    def __init__(self, mesh: meshlib.Mesh) -> None:
        # GetItem only reads: marking it idempotent lets the route's retries apply to it.
        self.channel = meshgrpc.AsyncMeshChannel(SERVICE, mesh=mesh, idempotent_methods=[GET_ITEM])
        self.stub = pb_grpc.InventoryStub(self.channel)

    async def get_item(self, item: str, timeout: float = 5.0) -> dict[str, Any]:
        """GetItem as a dict, or ``{"error": ..., "flag": ...}`` naming the gRPC status.

        ``caller`` is None for a plaintext caller, as in the HTTP services' answers; ``flag``
        is the ``x-mesh-flag`` trailing metadata when the mesh refused the call.
        """
        try:
            reply = await self.stub.GetItem(pb.ItemRequest(item=item), timeout=timeout)
        except grpc.RpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}", "flag": mesh_flag(exc)}
        return item_dict(reply)

    async def aclose(self) -> None:
        await self.channel.close()


def item_dict(reply: Any) -> dict[str, Any]:
    """An ``Item`` reply as the JSON the demo's services answer."""
    return {
        "service": reply.service,
        "version": reply.version,
        "port": reply.port,
        "item": reply.item,
        "stock": reply.stock,
        "caller": reply.caller or None,
    }


def trailing_metadata(exc: grpc.RpcError) -> dict[str, str]:
    """The trailing metadata of a failed call (where the mesh puts ``x-mesh-flag``)."""
    try:
        metadata = exc.trailing_metadata() or ()
    except Exception:  # an error raised before any call was made has none
        return {}
    return {str(key): str(value) for key, value in metadata}


def mesh_flag(exc: grpc.RpcError) -> str | None:
    """The ``x-mesh-flag`` of a call the mesh refused (AUTHZ_DENIED, …), else None."""
    return trailing_metadata(exc).get(meshgrpc.FLAG_METADATA)


async def serve(mesh: meshlib.Mesh, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; the endpoint is withdrawn before the port closes."""
    await mesh.astart()
    server = grpc.aio.server(interceptors=meshgrpc.aio_server_interceptors(mesh))
    bound = meshgrpc.add_secure_port(server, f"{host}:{port}", mesh=mesh)
    pb_grpc.add_InventoryServicer_to_server(
        Inventory(mesh.config.labels.get("version", "unversioned"), bound), server
    )
    await server.start()
    await asyncio.to_thread(mesh.set_endpoint, host, bound)
    print(f"inventory (gRPC) serving on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.to_thread(mesh.clear_endpoint)
    await server.stop(2)
    await mesh.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.grpc_inventory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="mTLS port (0: any free port)")
    args = parser.parse_args()
    mesh = meshlib.Mesh.from_env(service=os.environ.get("MESH_SERVICE") or SERVICE)
    asyncio.run(serve(mesh, args.host, args.port))


if __name__ == "__main__":
    main()
