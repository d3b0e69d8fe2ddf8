"""An ordinary synchronous gRPC service: no meshlib import (``meshctl run -- python -m …``).

``grpc.server`` with a thread pool and ``add_insecure_port``; ``GetItemVia`` asks
``request.service`` over ``grpc.insecure_channel("<service>:50051")``. Ends on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent import futures
from typing import Any

import grpc

from examples.generated import inventory_pb2 as pb
from examples.generated import inventory_pb2_grpc as pb_grpc


class Inventory(pb_grpc.InventoryServicer):  # type: ignore[misc]
    def GetItem(self, request: Any, context: Any) -> Any:
        identities = context.peer_identities() or []
        caller = next((i.decode() for i in identities if i.startswith(b"spiffe://")), "")
        return pb.Item(item=request.item, stock=3, service=os.environ.get("MESH_SERVICE", ""),
                       caller=caller)  # fmt: skip

    def GetItemVia(self, request: Any, context: Any) -> Any:
        local = self.GetItem(pb.ItemRequest(item=request.item), context)
        with grpc.insecure_channel(f"{request.service}:50051") as channel:
            upstream = pb_grpc.InventoryStub(channel).GetItem(
                pb.ItemRequest(item=request.item), timeout=5
            )
        return pb.ViaReply(local=local, upstream=upstream)


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_InventoryServicer_to_server(Inventory(), server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"grpc_sync listening on {os.environ['PORT']}", flush=True)
    stop.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
