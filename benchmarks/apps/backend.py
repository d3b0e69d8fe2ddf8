"""The benchmark's backend: ``GET /work`` over HTTP, or ``Inventory.GetItem`` over gRPC.

Run: ``python -m benchmarks.apps.backend --mode MODE --protocol http|grpc --port P``
(``--tls-dir`` for mode ``tls``; ``MESH_*`` variables for ``mesh`` and ``traced``).
The handlers do no work of their own, so what is measured is the hop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from benchmarks.apps.common import MODES, make_tracer_provider, run_plain_uvicorn, stats_on_exit

__all__ = ["http_app", "main"]

BODY = {"service": "backend", "ok": True, "items": [1, 2, 3]}


def http_app() -> FastAPI:
    """The HTTP backend: a fixed small JSON answer."""
    app = FastAPI()

    @app.get("/work")
    async def work() -> dict[str, Any]:
        return BODY

    return app


def _traced(mode: str) -> TracerProvider | None:
    """Mode ``traced``: a recording SDK provider, its span count written at exit."""
    if mode != "traced":
        return None
    provider, exporter = make_tracer_provider()
    stats_on_exit(lambda: {"spans_exported": exporter.spans}, provider)
    return provider


def serve_http(mode: str, port: int, tls_dir: Path | None) -> None:
    if mode in ("plain", "app", "run"):  # run: meshctl run meshes this very uvicorn
        run_plain_uvicorn(http_app(), port)
    elif mode == "tls":
        assert tls_dir is not None, "--tls-dir is required for mode tls"
        run_plain_uvicorn(
            http_app(),
            port,
            ssl_certfile=str(tls_dir / "server.pem"),
            ssl_keyfile=str(tls_dir / "server-key.pem"),
            ssl_ca_certs=str(tls_dir / "ca.pem"),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
        )
    else:
        import meshlib

        mesh = meshlib.Mesh.from_env(tracer_provider=_traced(mode))
        meshlib.serve(http_app(), mesh=mesh, host="127.0.0.1", port=port)


async def serve_grpc(mode: str, port: int, tls_dir: Path | None) -> None:
    import grpc
    import grpc.aio

    from examples.generated import inventory_pb2 as pb
    from examples.generated import inventory_pb2_grpc as pb_grpc

    class Inventory(pb_grpc.InventoryServicer):
        async def GetItem(self, request: Any, context: Any) -> Any:
            return pb.Item(item=request.item, stock=7, service="backend", version="v1")

    mesh: Any = None
    address = f"127.0.0.1:{port}"
    if mode in ("mesh", "traced"):
        import meshlib

        mesh = meshlib.Mesh.from_env(tracer_provider=_traced(mode))
        await mesh.astart()
        server = grpc.aio.server(interceptors=mesh.grpc_aio_server_interceptors())
        mesh.add_secure_port(server, address)
    else:
        server = grpc.aio.server()
        if mode == "tls":
            assert tls_dir is not None, "--tls-dir is required for mode tls"
            credentials = grpc.ssl_server_credentials(
                [
                    (
                        (tls_dir / "server-key.pem").read_bytes(),
                        (tls_dir / "server.pem").read_bytes(),
                    )
                ],
                root_certificates=(tls_dir / "ca.pem").read_bytes(),
                require_client_auth=True,
            )
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    pb_grpc.add_InventoryServicer_to_server(Inventory(), server)  # type: ignore[no-untyped-call]
    await server.start()
    if mesh is not None:
        await asyncio.to_thread(mesh.set_endpoint, "127.0.0.1", port)
    print(f"backend (gRPC, {mode}) serving on {address}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    if mesh is not None:
        await asyncio.to_thread(mesh.clear_endpoint)
    await server.stop(1)
    if mesh is not None:
        await mesh.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.apps.backend")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.protocol == "grpc":
        asyncio.run(serve_grpc(args.mode, args.port, args.tls_dir))
    else:
        serve_http(args.mode, args.port, args.tls_dir)


if __name__ == "__main__":
    main()
