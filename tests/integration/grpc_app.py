"""A meshed gRPC inventory server for the integration tests (run as a subprocess).

Environment: the MESH_* variables, PORT, GRPC_MODE (``sync`` or ``aio``), optionally
PLAINTEXT_PORT (an insecure port too; PeerAuthentication decides who gets in).

``GetItem`` understands a few item names that tests use to provoke the client::

    flaky:<key>:<n>   UNAVAILABLE for the first n calls with that key, then an answer
    down:<key>        always UNAVAILABLE
    fail-at:<port>    UNAVAILABLE from the instance serving on that port, an answer elsewhere
    sleep:<seconds>   answer after sleeping that long
    hits:<name>       an answer whose ``stock`` is how many GetItem(<name>) this instance got

Every other GetItem is counted under its item name before it is answered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

import meshlib
from meshlib.integrations import grpc as meshgrpc

ROOT = Path(__file__).resolve().parents[2]


def load_protos() -> tuple[Any, Any]:
    """``inventory_pb2``, ``inventory_pb2_grpc``; compiled into examples/generated if missing."""
    try:
        from examples.generated import inventory_pb2, inventory_pb2_grpc
    except ImportError:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-Iexamples/generated=examples/protos",
                "--python_out=.",
                "--grpc_python_out=.",
                "examples/protos/inventory.proto",
            ],
            cwd=ROOT,
            check=True,
            timeout=60,
        )
        from examples.generated import inventory_pb2, inventory_pb2_grpc
    return inventory_pb2, inventory_pb2_grpc


pb, pb_grpc = load_protos()
SERVICE = os.environ.get("MESH_SERVICE", "inventory")
LABELS = dict(p.split("=", 1) for p in os.environ.get("MESH_LABELS", "").split(",") if "=" in p)
PORT = int(os.environ.get("PORT", "0"))
IDEMPOTENT = ["/meshlib.demo.inventory.v1.Inventory/GetItem"]
_failures: dict[str, int] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()


def item(name: str) -> Any:
    """The answer for *name*, as this instance sees the current call."""
    peer = meshgrpc.current_peer()
    deadline = meshgrpc.current_deadline()
    return pb.Item(
        item=name,
        stock=zlib.crc32(name.encode()) % 100,
        service=SERVICE,
        version=LABELS.get("version", ""),
        port=PORT,
        caller=(peer.peer or "") if peer is not None else "",
        deadline_ms=-1 if deadline is None else int((deadline - time.monotonic()) * 1000),
    )


def get_item(name: str) -> Any:
    """The answer of GetItem(*name*) (``hits:`` queries answered from the counts)."""
    if name.startswith("hits:"):
        with _lock:
            seen = _hits.get(name[5:], 0)
        return pb.Item(item=name, stock=seen, service=SERVICE, port=PORT)
    return item(name)


def failure(name: str) -> str | None:
    """Why GetItem(*name*) must fail now, or None (counted as a hit either way)."""
    if name.startswith("hits:"):
        return None
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
    if name.startswith("down:"):
        return "down on purpose"
    if name.startswith("fail-at:"):
        return "failing on purpose here" if name[8:] == str(PORT) else None
    if name.startswith("flaky:"):
        _, key, n = name.split(":")
        with _lock:
            seen = _failures.get(key, 0)
            _failures[key] = seen + 1
        if seen < int(n):
            return f"flaky failure {seen + 1} of {n}"
    return None


def delay(name: str) -> float:
    return float(name.split(":")[1]) if name.startswith("sleep:") else 0.0


class SyncInventory(pb_grpc.InventoryServicer):  # type: ignore[misc]
    def __init__(self, mesh: meshlib.Mesh) -> None:
        self.mesh = mesh
        self.channels: dict[str, Any] = {}

    def GetItem(self, request: Any, context: Any) -> Any:
        why = failure(request.item)
        if why is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, why)
        time.sleep(delay(request.item))
        return get_item(request.item)

    def WatchStock(self, request: Any, context: Any) -> Any:
        for _ in range(request.count):
            yield item(request.item)
            time.sleep(0.02)

    def Reserve(self, request_iterator: Any, context: Any) -> Any:
        names = [r.item for r in request_iterator]
        peer = meshgrpc.current_peer()
        return pb.Reservation(items=names, caller=peer.peer if peer and peer.peer else "")

    def Exchange(self, request_iterator: Any, context: Any) -> Any:
        for request in request_iterator:
            yield item(request.item)

    def GetItemVia(self, request: Any, context: Any) -> Any:
        local = item(request.item)
        channel = self.channels.get(request.service)
        if channel is None:
            channel = self.channels[request.service] = meshgrpc.MeshChannel(
                request.service, mesh=self.mesh
            )
        upstream = pb_grpc.InventoryStub(channel).GetItem(pb.ItemRequest(item=request.item))
        return pb.ViaReply(local=local, upstream=upstream)


class AioInventory(pb_grpc.InventoryServicer):  # type: ignore[misc]
    def __init__(self, mesh: meshlib.Mesh) -> None:
        self.mesh = mesh
        self.channels: dict[str, Any] = {}

    async def GetItem(self, request: Any, context: Any) -> Any:
        why = failure(request.item)
        if why is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, why)
        await asyncio.sleep(delay(request.item))
        return get_item(request.item)

    async def WatchStock(self, request: Any, context: Any) -> Any:
        for _ in range(request.count):
            yield item(request.item)
            await asyncio.sleep(0.02)

    async def Reserve(self, request_iterator: Any, context: Any) -> Any:
        names = [r.item async for r in request_iterator]
        peer = meshgrpc.current_peer()
        return pb.Reservation(items=names, caller=peer.peer if peer and peer.peer else "")

    async def Exchange(self, request_iterator: Any, context: Any) -> Any:
        async for request in request_iterator:
            yield item(request.item)

    async def GetItemVia(self, request: Any, context: Any) -> Any:
        local = item(request.item)
        channel = self.channels.get(request.service)
        if channel is None:
            channel = self.channels[request.service] = meshgrpc.AsyncMeshChannel(
                request.service, mesh=self.mesh
            )
        stub = pb_grpc.InventoryStub(channel)
        upstream = await stub.GetItem(pb.ItemRequest(item=request.item))
        return pb.ViaReply(local=local, upstream=upstream)


def _announce_rotations(mesh: meshlib.Mesh) -> None:
    mesh.tls.on_update(lambda svid: print(f"svid rotated serial={svid.serial:x}", flush=True))


def run_sync(mesh: meshlib.Mesh) -> None:
    mesh.start()
    _announce_rotations(mesh)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        interceptors=meshgrpc.server_interceptors(mesh),
    )
    pb_grpc.add_InventoryServicer_to_server(SyncInventory(mesh), server)
    port = meshgrpc.add_secure_port(server, f"127.0.0.1:{PORT}", mesh=mesh)
    plaintext = os.environ.get("PLAINTEXT_PORT")
    if plaintext:
        server.add_insecure_port(f"127.0.0.1:{plaintext}")
    server.start()
    mesh.set_endpoint("127.0.0.1", port)
    print(f"serving grpc (sync) on {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    mesh.clear_endpoint()
    server.stop(1).wait(5)
    mesh.close()


async def run_aio(mesh: meshlib.Mesh) -> None:
    await mesh.astart()
    _announce_rotations(mesh)
    server = grpc.aio.server(interceptors=meshgrpc.aio_server_interceptors(mesh))
    pb_grpc.add_InventoryServicer_to_server(AioInventory(mesh), server)
    port = meshgrpc.add_secure_port(server, f"127.0.0.1:{PORT}", mesh=mesh)
    plaintext = os.environ.get("PLAINTEXT_PORT")
    if plaintext:
        server.add_insecure_port(f"127.0.0.1:{plaintext}")
    await server.start()
    await asyncio.to_thread(mesh.set_endpoint, "127.0.0.1", port)
    print(f"serving grpc (aio) on {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.to_thread(mesh.clear_endpoint)
    await server.stop(1)
    await mesh.aclose()


class GrpcService:
    """This module as one meshed instance, for the tests (the launcher side)."""

    def __init__(
        self,
        control: Any,
        service: str,
        workdir: Path,
        *,
        mode: str = "sync",
        labels: str = "",
        port: int | None = None,
        plaintext: bool = False,
        token: str | None = None,
    ) -> None:
        from tests.integration.harness import Process, free_port

        self.service = service
        self.port = port or free_port()
        self.plaintext_port = free_port() if plaintext else None
        env = {
            "MESH_CONTROL_URL": control.url,
            "MESH_SERVICE": service,
            "MESH_TOKEN": control.token(service) if token is None else token,
            "MESH_DATA_DIR": str(workdir / f"grpc-{service}-{self.port}"),
            "MESH_LABELS": labels,
            "PORT": str(self.port),
            "GRPC_MODE": mode,
            "PYTHONUNBUFFERED": "1",
        }
        if self.plaintext_port:
            env["PLAINTEXT_PORT"] = str(self.plaintext_port)
        self.process = Process(
            [sys.executable, "-m", "tests.integration.grpc_app"],
            workdir / f"grpc-{service}-{self.port}.log",
            env,
        )

    def start(self) -> GrpcService:
        return self.launch().wait()

    def launch(self) -> GrpcService:
        """Start the process without waiting (several start faster together)."""
        self.process.start()
        return self

    def wait(self) -> GrpcService:
        """Wait until the launched server is serving (at most 30 s)."""
        from tests.integration.harness import wait_for

        wait_for(self._serving, 30, f"gRPC {self.service} serving")
        return self

    def _serving(self) -> bool:
        assert self.process.alive(), self.process.output()
        return "serving grpc" in self.process.output()

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        if self.process.proc is not None:
            self.process.proc.kill()
            self.process.proc.wait(5)


def started_services(control: Any, workdir: Path) -> Iterator[Callable[..., GrpcService]]:
    """Body of a fixture: yields ``start(name, **kwargs)``; stops every server afterwards."""
    started: list[GrpcService] = []

    def start(name: str, **kwargs: Any) -> GrpcService:
        service = GrpcService(control, name, workdir, **kwargs)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


def main() -> None:
    mesh = meshlib.Mesh.from_env()
    if os.environ.get("GRPC_MODE", "sync") == "aio":
        asyncio.run(run_aio(mesh))
    else:
        run_sync(mesh)


if __name__ == "__main__":
    main()
