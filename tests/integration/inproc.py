"""Meshed FastAPI services served from threads of the test process.

Used where the test must see inside every hop (spans in one in-memory exporter); the
servers are real uvicorn listeners with real mTLS on 127.0.0.1, only in-process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry import baggage

import meshlib
from tests.integration.harness import free_port, wait_for


class ThreadServer:
    """``meshlib.MeshServer`` running in a daemon thread with its own event loop."""

    def __init__(self, app: Any, mesh: meshlib.Mesh) -> None:
        self.port = free_port()
        self.server = meshlib.MeshServer(app, mesh=mesh, host="127.0.0.1", port=self.port)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve()), name="test-server", daemon=True
        )

    def start(self) -> ThreadServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "in-process server listening")
        return self

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)


def chain_app(mesh: meshlib.Mesh, name: str, downstream: str | None) -> Any:
    """A FastAPI app answering /hop: it calls *downstream*'s /hop first, if any."""
    app = FastAPI()

    @app.get("/hop")
    async def hop(request: Request) -> dict[str, Any]:
        below: Any = None
        if downstream is not None:
            async with mesh.async_client() as http:
                below = (await http.get(f"http://{downstream}/hop")).json()
        return {
            "service": name,
            "peer": request.state.mesh.peer,
            "baggage": dict(baggage.get_all()),
            "below": below,
        }

    return app


def start_chain(
    make_mesh: Callable[[str], meshlib.Mesh], names: list[str]
) -> list[tuple[meshlib.Mesh, ThreadServer]]:
    """Serve names[0] → names[1] → … in threads; returns (mesh, server) per hop."""
    started = []
    for index, name in enumerate(names):
        downstream = names[index + 1] if index + 1 < len(names) else None
        mesh = make_mesh(name)
        server = ThreadServer(chain_app(mesh, name, downstream), mesh).start()
        started.append((mesh, server))
    return started
