"""meshlib: a service mesh whose data plane lives inside the Python process.

Public surface (see docs/concepts.md)::

    mesh = meshlib.Mesh.from_env(); mesh.start()
    mesh.client() / mesh.async_client()          # httpx clients over mTLS, by policy
    app.add_middleware(meshlib.MeshMiddleware, mesh=mesh)
    meshlib.serve(app, mesh=mesh, host=..., port=...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshlib.config import MeshConfig
from meshlib.errors import (
    CircuitOpen,
    ConfigError,
    ControlPlaneError,
    DeadlineExceeded,
    FaultInjected,
    IdentityError,
    MeshError,
    NoHealthyEndpoint,
    PeerIdentityError,
    PolicyError,
    PoolOverflow,
    RequestError,
    RetryBudgetExhausted,
    StartTimeout,
    UnknownServiceError,
)
from meshlib.mesh import Mesh

if TYPE_CHECKING:
    from meshlib.integrations.asgi import MeshMiddleware, PeerInfo
    from meshlib.integrations.uvicorn import MeshServer, aserve, serve

__all__ = [
    "CircuitOpen",
    "ConfigError",
    "ControlPlaneError",
    "DeadlineExceeded",
    "FaultInjected",
    "IdentityError",
    "Mesh",
    "MeshConfig",
    "MeshError",
    "MeshMiddleware",
    "MeshServer",
    "NoHealthyEndpoint",
    "PeerIdentityError",
    "PeerInfo",
    "PolicyError",
    "PoolOverflow",
    "RequestError",
    "RetryBudgetExhausted",
    "StartTimeout",
    "UnknownServiceError",
    "aserve",
    "serve",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Server-side names are imported on first use: a client-only service never loads them,
    # and uvicorn is an optional extra.
    if name in ("serve", "aserve", "MeshServer"):
        from meshlib.integrations import uvicorn as _uvicorn

        return getattr(_uvicorn, name)
    if name in ("MeshMiddleware", "PeerInfo"):
        from meshlib.integrations import asgi as _asgi

        return getattr(_asgi, name)
    raise AttributeError(f"module 'meshlib' has no attribute {name!r}")
