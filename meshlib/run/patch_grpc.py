"""grpcio under ``meshctl run``: meshed servers and channels, sync and ``grpc.aio``.

* ``grpc.server`` / ``grpc.aio.server``: the mesh's interceptors come first (the inbound
  policy is decided before the app's own interceptors run); the server is wrapped so that
  ``add_insecure_port`` listens with the mesh's rotating mTLS credentials instead (the port
  the app opens becomes the mesh's secure port), ``start`` registers that port and
  ``stop`` withdraws it first. ``add_secure_port`` (the app configuring TLS) is refused.
* ``grpc.insecure_channel("<service>:<port>")`` and its aio twin return the mesh channel
  of a service of the active snapshot (the port is the registry's, not the one named),
  or of a single-label name that neither the snapshot nor DNS knows yet (see
  :func:`mesh_service_of`); any other target gets the channel the app asked for.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import socket
from types import ModuleType
from typing import Any

from meshlib.run import state
from meshlib.run.patch_httpx import is_mesh_service

__all__ = ["mesh_service_of", "patch_aio", "patch_sync"]

_log = logging.getLogger("meshlib.run")
_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def mesh_service_of(target: str) -> str | None:
    """The mesh service a channel target names (``orders:50051``, ``dns:///orders``).

    A service of the active snapshot; or a single-label name the mesh does not know yet
    (its first instance still starting) that DNS does not resolve either — a plain
    channel to it could never connect, a mesh channel resolves the service per call.
    """
    host = target.removeprefix("dns:///").removeprefix("dns:")
    if host.startswith("[") or host.startswith("unix:"):
        return None
    host = host.rpartition(":")[0] if ":" in host else host
    if is_mesh_service(host):
        return host
    if state.active() is None or not _LABEL.match(host) or host == "localhost":
        return None
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return host
    return None


def _secure_port_refused(_address: str, _credentials: Any = None) -> int:
    state.fail(
        "the app configures TLS itself (grpc add_secure_port); under meshctl run the mesh "
        "terminates mTLS with the workload's SVID: use add_insecure_port"
    )


class _Server:
    """A gRPC server whose insecure ports are the mesh's secure ports."""

    def __init__(self, inner: Any, mesh: Any) -> None:
        self._inner = inner
        self._mesh = mesh
        self._endpoint: tuple[str, int] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_insecure_port(self, address: str) -> int:
        port = int(self._mesh.add_secure_port(self._inner, address))
        if self._endpoint is None and port:
            self._endpoint = (state.advertised(self._mesh, address.rpartition(":")[0]), port)
        return port

    add_secure_port = staticmethod(_secure_port_refused)

    def _register(self) -> None:
        if self._endpoint is not None:
            self._mesh.set_endpoint(*self._endpoint)


class _SyncServer(_Server):
    def start(self) -> None:
        self._inner.start()
        self._register()

    def stop(self, grace: float | None) -> Any:
        if self._endpoint is not None:
            self._mesh.clear_endpoint()
        return self._inner.stop(grace)


class _AsyncServer(_Server):
    async def start(self) -> None:
        await self._inner.start()
        self._register()

    async def stop(self, grace: float | None) -> None:
        if self._endpoint is not None:
            await asyncio.to_thread(self._mesh.clear_endpoint)
        await self._inner.stop(grace)


def _server_factory(original: Any, wrapper: type[_Server], aio: bool) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def server(*args: Any, **kwargs: Any) -> Any:
        if not state.serves():  # --clients-only
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        mesh = state.current()
        ours = mesh.grpc_aio_server_interceptors() if aio else mesh.grpc_server_interceptors()
        bound.arguments["interceptors"] = [*ours, *(bound.arguments.get("interceptors") or ())]
        return wrapper(original(*bound.args, **bound.kwargs), mesh)

    return server


def patch_sync(module: ModuleType) -> None:
    """Patch ``grpc.server`` and ``grpc.insecure_channel``."""
    insecure = module.insecure_channel
    module.server = _server_factory(module.server, _SyncServer, aio=False)  # type: ignore[attr-defined]

    @functools.wraps(insecure)
    def insecure_channel(target: str, options: Any = None, compression: Any = None) -> Any:
        service = mesh_service_of(target)
        if service is None:
            return insecure(target, options, compression)
        return state.current().grpc_channel(service, options=tuple(options or ()))

    module.insecure_channel = insecure_channel  # type: ignore[attr-defined]


def patch_aio(module: ModuleType) -> None:
    """Patch ``grpc.aio.server`` and ``grpc.aio.insecure_channel``."""
    insecure = module.insecure_channel
    module.server = _server_factory(module.server, _AsyncServer, aio=True)  # type: ignore[attr-defined]

    @functools.wraps(insecure)
    def insecure_channel(
        target: str, options: Any = None, compression: Any = None, interceptors: Any = None
    ) -> Any:
        service = mesh_service_of(target)
        if service is None:
            return insecure(target, options, compression, interceptors)
        if interceptors:
            _log.warning(
                "meshctl run: the client interceptors of the channel to %s are not applied "
                "(mesh channels take none)",
                service,
            )
        return state.current().grpc_aio_channel(service, options=tuple(options or ()))

    module.insecure_channel = insecure_channel  # type: ignore[attr-defined]
