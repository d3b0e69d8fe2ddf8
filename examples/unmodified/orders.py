"""An ordinary FastAPI service calling another by name with httpx: no meshlib import.

``/order/{name}`` asks ``http://$UPSTREAM/item/{name}`` (``/flaky/{name}`` with
``?flaky=1``) and answers with the upstream's status and body; ``/order-sync/{name}`` does
the same with a sync ``httpx.Client``; ``/outside`` fetches
``$OUTSIDE_URL`` — a host that is not a mesh service, which must go out unchanged.
"""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/order/{name}")
async def order(name: str, flaky: int = 0) -> JSONResponse:
    path = f"/flaky/{name}" if flaky else f"/item/{name}"
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.get(f"http://{os.environ['UPSTREAM']}{path}")
    return JSONResponse(
        {
            "status": reply.status_code,
            "body": reply.json(),
            "flag": reply.headers.get("x-mesh-flag"),
        }
    )


@app.get("/order-sync/{name}")
def order_sync(name: str) -> dict[str, object]:
    with httpx.Client(timeout=5) as client:  # sync client, in FastAPI's thread pool
        reply = client.get(f"http://{os.environ['UPSTREAM']}/item/{name}")
    return {"status": reply.status_code, "body": reply.json()}


@app.get("/outside")
def outside() -> dict[str, object]:
    with httpx.Client(timeout=5) as client:  # sync client, in FastAPI's thread pool
        reply = client.get(os.environ["OUTSIDE_URL"])
    return {"status": reply.status_code, "body": reply.text}
