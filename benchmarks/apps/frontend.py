"""The benchmark's frontend: ``GET /call`` makes one call to the backend and answers.

The load generator reaches it over plain HTTP in every mode; only its call to the backend
(the hop under test) changes with ``--mode``:

* ``plain``: ``http://127.0.0.1:UPSTREAM`` (gRPC: an insecure channel);
* ``tls``: ``https://127.0.0.1:UPSTREAM`` with a client certificate (gRPC: SSL credentials);
* ``mesh`` / ``traced``: ``mesh.async_client()`` to ``http://SERVICE/work``
  (gRPC: ``mesh.grpc_aio_channel(SERVICE)``);
* ``app``: the local sidecar's outbound port, ``Host: SERVICE`` (gRPC: that authority).

Run: ``python -m benchmarks.apps.frontend --mode MODE --protocol P --port P --upstream PORT
--service NAME``.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.sdk.trace import TracerProvider

from benchmarks.apps.common import (
    MODES,
    CountingExporter,
    make_tracer_provider,
    run_plain_uvicorn,
    write_stats,
)

__all__ = ["build", "main"]

TIMEOUT = 10.0
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=30)

Call = Callable[[], Awaitable[tuple[int, Any]]]


def _client_context(tls_dir: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    context.load_cert_chain(str(tls_dir / "client.pem"), str(tls_dir / "client-key.pem"))
    return context


@asynccontextmanager
async def http_caller(args: argparse.Namespace, mesh: Any) -> AsyncIterator[Call]:
    if args.mode in ("mesh", "traced"):
        client = mesh.async_client(timeout=TIMEOUT)
        url = f"http://{args.service}/work"
    elif args.mode == "tls":
        client = httpx.AsyncClient(
            verify=_client_context(args.tls_dir), timeout=TIMEOUT, limits=LIMITS
        )
        url = f"https://127.0.0.1:{args.upstream}/work"
    elif args.mode == "run":  # an ordinary client, by name: meshctl run routes it
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS)
        url = f"http://{args.service}/work"
    elif args.mode == "app":
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, headers={"Host": args.service})
        url = f"http://127.0.0.1:{args.upstream}/work"
    else:
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS)
        url = f"http://127.0.0.1:{args.upstream}/work"

    async def call() -> tuple[int, Any]:
        response = await client.get(url)
        return response.status_code, response.json() if response.status_code == 200 else None

    async with client:
        yield call


@asynccontextmanager
async def grpc_caller(args: argparse.Namespace, mesh: Any) -> AsyncIterator[Call]:
    import grpc
    import grpc.aio

    from examples.generated import inventory_pb2 as pb
    from examples.generated import inventory_pb2_grpc as pb_grpc

    target = f"127.0.0.1:{args.upstream}"
    if args.mode in ("mesh", "traced"):
        channel = mesh.grpc_aio_channel(args.service)
    elif args.mode == "tls":
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(args.tls_dir / "ca.pem").read_bytes(),
            private_key=(args.tls_dir / "client-key.pem").read_bytes(),
            certificate_chain=(args.tls_dir / "client.pem").read_bytes(),
        )
        channel = grpc.aio.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "backend")]
        )
    elif args.mode == "run":  # by name: meshctl run makes it the mesh channel
        channel = grpc.aio.insecure_channel(f"{args.service}:{args.upstream}")
    elif args.mode == "app":
        channel = grpc.aio.insecure_channel(
            target, options=[("grpc.default_authority", args.service)]
        )
    else:
        channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.InventoryStub(channel)  # type: ignore[no-untyped-call]
    request = pb.ItemRequest(item="apple")

    async def call() -> tuple[int, Any]:
        try:
            reply = await stub.GetItem(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return 502, {"grpc": str(exc.code())}
        return 200, {"item": reply.item, "stock": reply.stock, "service": reply.service}

    try:
        yield call
    finally:
        await channel.close()


def build(args: argparse.Namespace) -> FastAPI:
    """The frontend app for *args* (mode, protocol, upstream, service)."""
    mesh: Any = None
    calls = {"ok": 0, "failed": 0}
    exporter: CountingExporter | None = None
    provider: TracerProvider | None = None
    if args.mode in ("mesh", "traced"):
        import meshlib

        if args.mode == "traced":
            provider, exporter = make_tracer_provider()
        mesh = meshlib.Mesh.from_env(tracer_provider=provider)
    caller = grpc_caller if args.protocol == "grpc" else http_caller

    def stats() -> dict[str, int]:
        return {**calls, **({"spans_exported": exporter.spans} if exporter else {})}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if mesh is not None:
            await mesh.astart()
        try:
            async with caller(args, mesh) as call:
                app.state.call = call
                yield
        finally:
            if mesh is not None:
                await mesh.aclose()
            # Here, not at exit: uvicorn.run re-raises SIGTERM after shutdown (no atexit).
            write_stats(stats, provider)

    app = FastAPI(lifespan=lifespan)

    @app.get("/call")
    async def call_backend() -> JSONResponse:
        try:
            status, body = await app.state.call()
        except Exception as exc:  # counted and answered: the load generator sees a 502
            calls["failed"] += 1
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        if status != 200:
            calls["failed"] += 1
            return JSONResponse({"upstream_status": status, "upstream": body}, status_code=502)
        calls["ok"] += 1
        return JSONResponse({"service": "frontend", "upstream": body})

    @app.get("/bench/stats")
    async def bench_stats() -> dict[str, int]:
        return stats()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.apps.frontend")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, default=0, help="backend or sidecar port")
    parser.add_argument("--service", default="backend", help="the backend's mesh name")
    parser.add_argument("--tls-dir", type=Path, default=None)
    args = parser.parse_args()
    run_plain_uvicorn(build(args), args.port)


if __name__ == "__main__":
    main()
