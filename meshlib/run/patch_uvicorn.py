"""uvicorn under ``meshctl run``: its servers terminate mesh mTLS and enforce the policy.

``uvicorn.Server.serve`` — what ``uvicorn app:app``, ``uvicorn.run`` and gunicorn's
``UvicornWorker`` all end in — loads the config, then, before anything listens:

* refuses a config that sets up TLS itself (``--ssl-certfile``, ``ssl_context_factory``…):
  the mesh owns the listener's TLS;
* wraps the loaded app in :class:`~meshlib.integrations.asgi.MeshMiddleware`;
* swaps the HTTP protocol for meshlib's TLS protocol (the ASGI TLS extension with the
  peer's SPIFFE ID) and the listener's SSLContext for the mesh's front context, which
  follows every SVID rotation without a restart.

Once listening the instance registers its endpoint (not in a gunicorn worker: the master
registers the shared socket), withdraws it first thing on shutdown, and deregisters once
the server has stopped (the process leaves the mesh). ``uvicorn.run``
with ``workers`` > 1 or ``reload`` is refused: those start fresh interpreters that would
serve outside the mesh.
"""

from __future__ import annotations

import asyncio
import functools
from types import ModuleType
from typing import Any

from meshlib.integrations.asgi import MeshMiddleware
from meshlib.run import state

__all__ = ["patch_main", "patch_server"]

_MESHED = "_meshlib_run"


def _tls_setting(config: Any) -> str | None:
    for name in ("ssl_certfile", "ssl_keyfile", "ssl_context_factory"):
        if getattr(config, name, None):
            return name
    return None


def _mesh_config(config: Any) -> Any:
    """Mesh *config* in place (once); returns the mesh, or None for meshlib's own servers."""
    if getattr(config, _MESHED, False) or isinstance(config.app, MeshMiddleware):
        return None
    if not state.serves():  # --clients-only
        return None  # meshlib.serve / MeshServer inside a meshctl run: already meshed
    setting = _tls_setting(config)
    if setting is not None:
        raise state.RunError(
            f"the app configures TLS itself (uvicorn {setting}); under meshctl run the mesh "
            "terminates mTLS with the workload's SVID: remove the app's TLS settings"
        )
    from meshlib.integrations.uvicorn import tls_protocol  # uvicorn is imported by now

    mesh = state.current()
    if not config.loaded:
        config.load()
    config.loaded_app = MeshMiddleware(config.loaded_app, mesh=mesh)
    config.http_protocol_class = tls_protocol(
        config.http_protocol_class, validator=lambda: mesh.tls.peer_validator
    )
    config.ssl = mesh.tls.server_context()
    setattr(config, _MESHED, mesh)
    return mesh


def _bound_port(server: Any) -> int | None:
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return None


def patch_server(module: ModuleType) -> None:
    """Patch ``uvicorn.server.Server`` (serve, startup, shutdown)."""
    server_cls: Any = module.Server
    serve, startup, shutdown = server_cls.serve, server_cls.startup, server_cls.shutdown

    @functools.wraps(serve)
    async def meshed_serve(self: Any, sockets: Any = None) -> None:
        try:
            _mesh_config(self.config)
        except state.RunError as exc:
            state.fail(str(exc))
        await serve(self, sockets=sockets)

    @functools.wraps(startup)
    async def meshed_startup(self: Any, sockets: Any = None) -> None:
        await startup(self, sockets=sockets)
        mesh = getattr(self.config, _MESHED, None)
        port = _bound_port(self)
        if mesh is None or not self.started or port is None:
            return
        if state.role() != "gunicorn-worker":
            mesh.set_endpoint(state.advertised(mesh, self.config.host), port)

    @functools.wraps(shutdown)
    async def meshed_shutdown(self: Any, sockets: Any = None) -> None:
        mesh = getattr(self.config, _MESHED, None)
        if mesh is not None and state.role() != "gunicorn-worker":
            # Withdraw first, so callers stop picking this instance, then drain and close.
            await asyncio.to_thread(mesh.clear_endpoint)
        await shutdown(self, sockets=sockets)
        if mesh is not None and state.role() == "process":
            # uvicorn re-raises SIGTERM/SIGINT once serve() returns, so no atexit handler
            # would run: the process leaves the mesh (deregisters) here.
            await asyncio.to_thread(mesh.close)

    server_cls.serve = meshed_serve
    server_cls.startup = meshed_startup
    server_cls.shutdown = meshed_shutdown


def patch_main(module: ModuleType) -> None:
    """Refuse ``uvicorn.run(workers>1)`` and ``reload``: their processes would be unmeshed."""
    run: Any = module.__dict__["run"]

    @functools.wraps(run)
    def meshed_run(app: Any, **kwargs: Any) -> None:
        if (kwargs.get("workers") or 1) > 1 or kwargs.get("reload"):
            what = "--reload" if kwargs.get("reload") else f"--workers {kwargs['workers']}"
            state.fail(
                f"uvicorn {what} is not supported under meshctl run (its processes would "
                "serve outside the mesh); run one uvicorn per instance, or gunicorn with "
                "-k uvicorn.workers.UvicornWorker for several workers"
            )
        run(app, **kwargs)

    module.run = meshed_run  # type: ignore[attr-defined]
