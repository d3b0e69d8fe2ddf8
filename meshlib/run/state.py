"""The process's one :class:`~meshlib.Mesh` under ``meshctl run``, and its role.

Roles: ``process`` (uvicorn, gRPC or a plain script: the process registers its own
endpoint), ``gunicorn-master`` (registers the endpoint of the shared listening socket) and
``gunicorn-worker`` (serves on the master's socket with its own mesh, registers no
endpoint). A forked worker never touches the master's mesh object: its agent thread did
not survive the fork.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from meshlib.errors import MeshError

if TYPE_CHECKING:
    from meshlib.mesh import Mesh

__all__ = [
    "PREFIX",
    "RunError",
    "active",
    "advertised",
    "current",
    "fail",
    "role",
    "serves",
    "set_role",
    "start",
]

PREFIX = "meshctl run"

_mesh: Mesh | None = None
_owner = 0  # the pid that started _mesh
_role = "process"


class RunError(MeshError):
    """The app does something ``meshctl run`` cannot mesh (it configures TLS, …)."""


def serves() -> bool:
    """False under ``--clients-only`` (``MESH_RUN_SERVE=0``): servers are left alone."""
    return os.environ.get("MESH_RUN_SERVE", "1") != "0"


def role() -> str:
    return _role


def set_role(value: str) -> None:
    global _role
    _role = value


WORKER_BOOT_ERROR = 3  # gunicorn's: a worker exiting with it makes the master stop


def fail(message: str) -> NoReturn:
    """One ``meshctl run: …`` line on stderr, then exit code 1 (nothing served).

    A gunicorn worker exits with gunicorn's boot-error code instead, so that the master
    stops rather than respawning it.
    """
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)
    os._exit(WORKER_BOOT_ERROR if _role == "gunicorn-worker" else 1)


def start() -> Mesh:
    """Build the mesh from ``MESH_*`` and start it: identity and first snapshot, or fail."""
    global _mesh, _owner
    from meshlib.mesh import Mesh

    service = os.environ.get("MESH_SERVICE", "?")
    try:
        mesh = Mesh.from_env()
        mesh.start()
    except MeshError as exc:
        fail(f"{service}: cannot join the mesh: {exc}")
    _mesh, _owner = mesh, os.getpid()
    return mesh


def active() -> Mesh | None:
    """This process's mesh once started (None before, and in a fork until it starts its own)."""
    return _mesh if _owner == os.getpid() else None


def current() -> Mesh:
    """This process's started mesh (a forked process starts its own first)."""
    mesh = _mesh
    if mesh is None or _owner != os.getpid():
        mesh = start()
    return mesh


def _close() -> None:
    if _mesh is not None and _owner == os.getpid():
        _mesh.close()


atexit.register(_close)


def advertised(mesh: Mesh, host: str) -> str:
    """The address registered for a listener on *host* (``MESH_ADVERTISE`` first)."""
    if mesh.config.advertise:
        return mesh.config.advertise
    host = host.strip("[]")
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host
