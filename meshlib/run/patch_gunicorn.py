"""gunicorn under ``meshctl run``: one mesh instance per pod, one mesh per worker process.

The master (arbiter) joins the mesh before it listens, refuses what it cannot mesh (a
worker class other than uvicorn's, gunicorn's own TLS, a Unix socket), and once the shared
socket is bound registers that one endpoint; it withdraws it first on shutdown. Each
worker, before it serves, starts its own mesh from the identity the master cached in
``MESH_DATA_DIR`` (no second join: a token is used once); it keeps its own snapshot and
SVID rotation, serves on the master's socket through the uvicorn patch, and registers no
endpoint. See docs/run.md for why one endpoint per pod rather than one per worker.
"""

from __future__ import annotations

import functools
import socket
from types import ModuleType
from typing import Any

from meshlib.run import state

__all__ = ["patch_arbiter", "patch_worker"]


def _is_uvicorn_worker(worker_class: Any) -> bool:
    return any(
        klass.__module__.split(".")[0] in ("uvicorn", "uvicorn_worker")
        for klass in getattr(worker_class, "__mro__", ())
    )


def patch_arbiter(module: ModuleType) -> None:
    """Patch ``gunicorn.arbiter.Arbiter`` (start registers, stop withdraws)."""
    arbiter_cls: Any = module.Arbiter
    start, stop = arbiter_cls.start, arbiter_cls.stop

    @functools.wraps(start)
    def meshed_start(self: Any) -> None:
        if not _is_uvicorn_worker(self.worker_class):
            state.fail(
                f"gunicorn worker class {self.cfg.worker_class_str} is not supported under "
                "meshctl run: use -k uvicorn.workers.UvicornWorker (an ASGI app)"
            )
        if self.cfg.is_ssl:
            state.fail(
                "the app configures TLS itself (gunicorn --certfile/--keyfile); under "
                "meshctl run the mesh terminates mTLS with the workload's SVID: remove them"
            )
        state.set_role("gunicorn-master")
        mesh = state.current()
        start(self)
        addresses = [lnr.sock.getsockname() for lnr in self.LISTENERS]
        if not addresses or self.LISTENERS[0].sock.family not in (socket.AF_INET, socket.AF_INET6):
            state.fail("gunicorn must listen on a TCP address under meshctl run (--bind host:port)")
        host, port = addresses[0][:2]
        mesh.set_endpoint(state.advertised(mesh, host), int(port))

    @functools.wraps(stop)
    def meshed_stop(self: Any, graceful: bool = True) -> None:
        mesh = state.active()
        if mesh is not None and state.role() == "gunicorn-master":
            mesh.clear_endpoint()
        stop(self, graceful)

    arbiter_cls.start = meshed_start
    arbiter_cls.stop = meshed_stop


def patch_worker(module: ModuleType) -> None:
    """Patch ``gunicorn.workers.base.Worker.init_process``: the forked process is a worker."""
    worker_cls: Any = module.Worker
    init_process = worker_cls.init_process

    @functools.wraps(init_process)
    def meshed_init_process(self: Any) -> None:
        # The fork's own mesh starts in the uvicorn patch, once the worker has its own
        # signal handling: a SIGTERM from the master while it starts is not lost.
        state.set_role("gunicorn-worker")
        init_process(self)

    worker_cls.init_process = meshed_init_process
