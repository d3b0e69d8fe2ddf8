"""A meshed FastAPI service for the observability tests (run as a subprocess).

``/status/{code}`` answers with that status; ``/slow/{ms}`` sleeps first; anything else
answers 200. Environment: the MESH_* variables and PORT.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import meshlib

app = FastAPI()


@app.api_route("/status/{code}", methods=["GET", "POST"])
async def status(code: int) -> JSONResponse:
    return JSONResponse({"status": code}, status_code=code)


@app.get("/slow/{ms}")
async def slow(ms: int) -> dict[str, int]:
    await asyncio.sleep(min(ms, 2000) / 1000.0)
    return {"slept": ms}


@app.get("/{path:path}")
async def ok(path: str) -> dict[str, str]:
    return {"service": os.environ["MESH_SERVICE"], "path": "/" + path}


def main() -> None:
    mesh = meshlib.Mesh.from_env()
    meshlib.serve(app, mesh=mesh, host="127.0.0.1", port=int(os.environ["PORT"]))


if __name__ == "__main__":
    main()
