"""gRPC in the mesh (grpcio, sync and grpc.aio): the one module users import.

Server::

    server = grpc.aio.server(interceptors=aio_server_interceptors(mesh))
    port = add_secure_port(server, "127.0.0.1:0", mesh=mesh)
    await server.start()
    mesh.set_endpoint("127.0.0.1", port)

Client::

    async with AsyncMeshChannel("inventory", mesh=mesh) as channel:
        reply = await InventoryStub(channel).GetItem(request, timeout=2)

:class:`meshlib.Mesh` exposes the same as ``mesh.grpc_channel(service)``,
``mesh.grpc_aio_channel(service)``, ``mesh.grpc_server_interceptors()``,
``mesh.grpc_aio_server_interceptors()`` and ``mesh.add_secure_port(server, address)``.
See docs/grpc.md.
"""

from __future__ import annotations

from typing import Any

from meshlib.integrations.grpc_client import (
    DEFAULT_GRACE,
    AsyncMeshChannel,
    BudgetExhaustedRpcError,
    MeshChannel,
    MeshRpcError,
    current_deadline,
    outcome_of,
)
from meshlib.integrations.grpc_server import (
    FLAG_METADATA,
    AsyncMeshServerInterceptor,
    MeshServerInterceptor,
    Refusal,
    add_secure_port,
    admit,
    current_peer,
    server_credentials,
)

__all__ = [
    "DEFAULT_GRACE",
    "FLAG_METADATA",
    "AsyncMeshChannel",
    "AsyncMeshServerInterceptor",
    "BudgetExhaustedRpcError",
    "MeshChannel",
    "MeshRpcError",
    "MeshServerInterceptor",
    "Refusal",
    "add_secure_port",
    "admit",
    "aio_server_interceptors",
    "current_deadline",
    "current_peer",
    "outcome_of",
    "server_credentials",
    "server_interceptors",
]


def server_interceptors(mesh: Any) -> list[MeshServerInterceptor]:
    """Interceptors for ``grpc.server(executor, interceptors=...)``."""
    return [MeshServerInterceptor(mesh)]


def aio_server_interceptors(mesh: Any) -> list[AsyncMeshServerInterceptor]:
    """Interceptors for ``grpc.aio.server(interceptors=...)``."""
    return [AsyncMeshServerInterceptor(mesh)]
