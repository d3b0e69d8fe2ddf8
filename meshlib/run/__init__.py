"""Zero-code-change onboarding: ``meshctl run -- <server command>`` (docs/run.md).

:mod:`meshlib.run.launch` is the launcher; :mod:`meshlib.run.bootstrap` is what the child
runs at interpreter start; the ``patch_*`` modules mesh uvicorn, gunicorn, grpcio and httpx.
"""

from __future__ import annotations

from meshlib.run.launch import main

__all__ = ["main"]
