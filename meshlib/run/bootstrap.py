"""What the child of ``meshctl run`` does at interpreter start (from ``sitecustomize``).

1. Claim the run (``MESH_RUN=claimed:<pid>``), so Python processes this one starts later
   (a ``subprocess`` of the app) stay out of it.
2. Register the post-import patches: httpx, uvicorn, grpc, grpc.aio, gunicorn.
3. Join the mesh — identity and first snapshot — before the app's code runs. A failure
   (no token and no cached identity, the control service not answering within
   ``MESH_START_TIMEOUT``, a refused token) is one ``meshctl run: …`` line and exit code 1:
   the app never starts serving.
"""

from __future__ import annotations

import os

from meshlib.run import hooks, state

__all__ = ["install"]


def _patches() -> None:
    from meshlib.run import patch_grpc, patch_gunicorn, patch_httpx, patch_uvicorn

    hooks.when_imported("httpx", patch_httpx.patch)
    hooks.when_imported("uvicorn.server", patch_uvicorn.patch_server)
    hooks.when_imported("uvicorn.main", patch_uvicorn.patch_main)
    hooks.when_imported("grpc", patch_grpc.patch_sync)
    hooks.when_imported("grpc.aio", patch_grpc.patch_aio)
    hooks.when_imported("gunicorn.arbiter", patch_gunicorn.patch_arbiter)
    hooks.when_imported("gunicorn.workers.base", patch_gunicorn.patch_worker)


def install() -> None:
    """Patch, then start the process's mesh (or exit 1 with the reason)."""
    os.environ["MESH_RUN"] = f"claimed:{os.getpid()}"
    try:
        _patches()
    except ImportError as exc:  # meshlib installed without an extra the patches need
        state.fail(f"cannot install the mesh: {exc}")
    state.start()
