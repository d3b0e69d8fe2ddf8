"""An ordinary ``grpc.aio`` service: no meshlib import (``meshctl run -- python -m …``).

Serves ``Inventory.GetItem`` (the caller's identity from ``context.peer_identities()``) and
``GetItemVia``, which asks ``request.service`` over ``grpc.aio.insecure_channel`` — by
name and the port the app believes in, as it would on a plain network. Listens with
``add_insecure_port`` on ``127.0.0.1:$PORT``; ends on SIGTERM with exit code 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import grpc
import grpc.aio

from examples.generated import inventory_pb2 as pb
from examples.generated import inventory_pb2_grpc as pb_grpc


class Inventory(pb_grpc.InventoryServicer):  # type: ignore[misc]
    async def GetItem(self, request: Any, context: Any) -> Any:
        identities = context.peer_identities() or []
        caller = next((i.decode() for i in identities if i.startswith(b"spiffe://")), "")
        return pb.Item(
            item=request.item,
            stock=7,
            service=os.environ.get("MESH_SERVICE", ""),
            port=int(os.environ["PORT"]),
            caller=caller,
        )

    async def GetItemVia(self, request: Any, context: Any) -> Any:
        local = await self.GetItem(pb.ItemRequest(item=request.item), context)
        async with grpc.aio.insecure_channel(f"{request.service}:50051") as channel:
            upstream = await pb_grpc.InventoryStub(channel).GetItem(
                pb.ItemRequest(item=request.item), timeout=5
            )
        return pb.ViaReply(local=local, upstream=upstream)


async def main() -> None:
    server = grpc.aio.server()
    pb_grpc.add_InventoryServicer_to_server(Inventory(), server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"grpc_pair listening on {os.environ['PORT']}", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())
