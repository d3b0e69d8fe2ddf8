"""An ordinary FastAPI service: no meshlib import (``meshctl run -- uvicorn …:app``).

``/item/{name}`` answers with what the request carried (the caller's identity as the
``x-forwarded-client-cert`` header, the ``traceparent``); ``/flaky/{key}`` fails with 503
the first ``FLAKY_FAILURES`` times a key is asked (default 2), then answers 200.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()
_asked: dict[str, int] = {}


@app.get("/item/{name}")
async def item(name: str, request: Request) -> dict[str, object]:
    return {
        "item": name,
        "pid": os.getpid(),
        "scheme": request.url.scheme,
        "xfcc": request.headers.get("x-forwarded-client-cert"),
        "traceparent": request.headers.get("traceparent"),
    }


@app.get("/flaky/{key}")
async def flaky(key: str) -> JSONResponse:
    _asked[key] = _asked.get(key, 0) + 1
    if _asked[key] <= int(os.environ.get("FLAKY_FAILURES", "2")):
        return JSONResponse({"asked": _asked[key]}, status_code=503)
    return JSONResponse({"asked": _asked[key]})
