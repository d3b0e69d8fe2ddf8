"""reviews: an app that knows nothing of the mesh, put into it by an Envoy sidecar.

It imports neither meshlib nor any TLS code: it serves plain HTTP on 127.0.0.1 and calls
orders as plain HTTP through its sidecar's outbound port, naming the service in ``Host``.
``meshctl sidecar --service reviews --app-port P`` gives it an identity, mTLS both ways,
authorization, retries and metrics — the same policy the library-mode services apply.

``GET /reviews/{item}``: asks orders for the item and answers with both views, including who
called reviews (from the ``x-forwarded-client-cert`` header its sidecar sets).

Run: ``python -m examples.services.reviews --port P --outbound-port O``.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SERVICE = "reviews"


def caller_of(request: Request) -> str | None:
    """The caller's SPIFFE ID as the sidecar authenticated it: ``URI=`` of its XFCC header."""
    xfcc = request.headers.get("x-forwarded-client-cert", "")
    uris = [part[4:] for part in xfcc.split(";") if part.startswith("URI=")]
    return uris[0] if uris else None


def build(outbound_port: int) -> FastAPI:
    app = FastAPI(title="meshlib demo: reviews (sidecar mode)")
    sidecar = f"http://127.0.0.1:{outbound_port}"

    @app.get("/reviews/{item}")
    async def reviews(item: str, request: Request) -> JSONResponse:
        me: dict[str, Any] = {"service": SERVICE, "item": item, "caller": caller_of(request)}
        async with httpx.AsyncClient(base_url=sidecar, timeout=10.0) as http:
            try:
                response = await http.get(f"/orders/{item}", headers={"host": "orders"})
            except httpx.HTTPError as exc:
                return JSONResponse({**me, "upstream_error": repr(exc)}, status_code=502)
        try:
            upstream: Any = response.json()
        except ValueError:
            upstream = response.text
        status = 200 if response.status_code == 200 else 502
        return JSONResponse(
            {**me, "upstream_status": response.status_code, "upstream": upstream},
            status_code=status,
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.services.reviews")
    parser.add_argument("--port", type=int, required=True, help="plaintext port on 127.0.0.1")
    parser.add_argument("--outbound-port", type=int, required=True, help="the sidecar's")
    args = parser.parse_args()
    uvicorn.run(build(args.outbound_port), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
