"""httpx under ``meshctl run``: every ``Client``/``AsyncClient`` routes mesh services.

After the client's own ``__init__``, its transport is wrapped: a request whose host is a
service of the active snapshot goes through a mesh transport (made on first use, closed
with the client); any other host goes to the client's own transport, unchanged — proxies,
``verify`` and mounts included. A client built on a mesh transport is left alone.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httpx

from meshlib.errors import MeshError
from meshlib.integrations.httpx_mesh import AsyncMeshTransport, MeshTransport
from meshlib.run import state

__all__ = ["AsyncRunTransport", "RunTransport", "is_mesh_service", "patch"]


def is_mesh_service(host: str) -> bool:
    """True when *host* names a service of this process's active snapshot."""
    mesh = state.active()
    if mesh is None or not host or ":" in host or host == "localhost":
        return False  # an IPv4 address is one dictionary miss in resolve()
    try:
        return mesh.view.resolve(host) is not None
    except MeshError:  # not started yet
        return False


class RunTransport(httpx.BaseTransport):
    """Mesh services through the mesh, everything else through *base*."""

    def __init__(self, base: httpx.BaseTransport) -> None:
        self._base = base
        self._meshed: MeshTransport | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if is_mesh_service(request.url.host):
            if self._meshed is None:
                self._meshed = state.current().transport()
            return self._meshed.handle_request(request)
        return self._base.handle_request(request)

    def close(self) -> None:
        self._base.close()
        if self._meshed is not None:
            self._meshed.close()


class AsyncRunTransport(httpx.AsyncBaseTransport):
    """Async twin of :class:`RunTransport`."""

    def __init__(self, base: httpx.AsyncBaseTransport) -> None:
        self._base = base
        self._meshed: AsyncMeshTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if is_mesh_service(request.url.host):
            if self._meshed is None:
                self._meshed = state.current().async_transport()
            return await self._meshed.handle_async_request(request)
        return await self._base.handle_async_request(request)

    async def aclose(self) -> None:
        await self._base.aclose()
        if self._meshed is not None:
            await self._meshed.aclose()


def patch(module: ModuleType) -> None:
    """Wrap the transport of every ``httpx.Client`` and ``httpx.AsyncClient`` made from now."""
    client_cls: Any = module.Client
    async_cls: Any = module.AsyncClient
    if getattr(client_cls, "__meshlib_run__", False):
        return
    sync_init, async_init = client_cls.__init__, async_cls.__init__

    def client_init(self: Any, *args: Any, **kwargs: Any) -> None:
        sync_init(self, *args, **kwargs)
        if not isinstance(self._transport, MeshTransport | RunTransport):
            self._transport = RunTransport(self._transport)

    def async_client_init(self: Any, *args: Any, **kwargs: Any) -> None:
        async_init(self, *args, **kwargs)
        if not isinstance(self._transport, AsyncMeshTransport | AsyncRunTransport):
            self._transport = AsyncRunTransport(self._transport)

    client_cls.__init__ = client_init
    async_cls.__init__ = async_client_init
    client_cls.__meshlib_run__ = True
