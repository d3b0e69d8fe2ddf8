"""A meshed FastAPI service for the integration tests (run as a subprocess).

Environment: the MESH_* variables, plus PORT and optionally PLAINTEXT_PORT.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request

import meshlib

app = FastAPI()
served = {"count": 0}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return served


@app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
async def echo(path: str, request: Request) -> dict[str, object]:
    served["count"] += 1
    info = request.state.mesh
    tls = request.scope.get("extensions", {}).get("tls")
    return {
        "service": os.environ["MESH_SERVICE"],
        "labels": os.environ.get("MESH_LABELS", ""),
        "path": "/" + path,
        "peer": info.peer,
        "authenticated": info.authenticated,
        "tls_version": tls["tls_version"] if tls else None,
    }


def main() -> None:
    mesh = meshlib.Mesh.from_env()
    plaintext = os.environ.get("PLAINTEXT_PORT")
    meshlib.serve(
        app,
        mesh=mesh,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        plaintext_port=int(plaintext) if plaintext else None,
    )


if __name__ == "__main__":
    main()
