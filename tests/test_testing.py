"""meshlib.testing: a team tests its own meshed app in-process, with no control service."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import meshlib
from meshlib.testing import Instance, TestMesh

HEADER = "apiVersion: meshlib.io/v1\n"

AUTHZ = (
    HEADER
    + """kind: AuthorizationPolicy
metadata: {name: orders-callers}
spec:
  service: orders
  action: ALLOW
  rules:
  - from: {principals: ["spiffe://mesh.test/ns/default/sa/frontend"]}
"""
)

TRAFFIC = (
    HEADER
    + """kind: TrafficPolicy
metadata: {name: inventory}
spec:
  service: inventory
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  routes:
  - name: canary
    match: {headers: [{name: x-canary, exact: "yes"}]}
    backends: [{subset: v2}]
  - name: default
    backends: [{subset: v1}]
    retries: {attempts: 3, retryOn: [5xx]}
"""
)


def orders_app(mesh: meshlib.Mesh) -> FastAPI:
    """The app under test: orders, which calls inventory through the mesh."""
    app = FastAPI()
    app.add_middleware(meshlib.MeshMiddleware, mesh=mesh)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        return {"peer": request.state.mesh.peer}

    @app.get("/stock")
    async def stock(request: Request) -> JSONResponse:
        headers = {"x-canary": request.headers["x-canary"]} if "x-canary" in request.headers else {}
        async with mesh.async_client() as http:
            answer = await http.get("http://inventory/stock", headers=headers)
        return JSONResponse(answer.json(), status_code=answer.status_code)

    return app


def inventory_app(version: str, *, failures: int = 0) -> FastAPI:
    """inventory: answers with its version; the first *failures* requests get a 503."""
    app = FastAPI()
    seen = {"n": 0}
    lock = threading.Lock()

    @app.get("/stock")
    async def stock(request: Request) -> JSONResponse:
        with lock:
            seen["n"] += 1
            n = seen["n"]
        if n <= failures:
            return JSONResponse({"version": version, "try": n}, status_code=503)
        return JSONResponse({"version": version, "try": n, "peer": request.state.mesh.peer})

    return app


@pytest.fixture
def mesh() -> Any:
    services = {
        "inventory": [
            Instance(inventory_app("v1", failures=2), labels={"version": "v1"}),
            Instance(inventory_app("v2"), labels={"version": "v2"}),
        ]
    }
    with TestMesh(policies=AUTHZ + "---\n" + TRAFFIC, services=services) as tm:
        yield tm


def test_authorization_allows_the_listed_caller(mesh: TestMesh) -> None:
    """frontend is allowed by the AuthorizationPolicy and seen as its SPIFFE ID."""
    client = mesh.client_for(orders_app(mesh.mesh("orders")), as_="frontend")
    answer = client.get("/whoami")
    assert answer.status_code == 200
    assert answer.json() == {"peer": "spiffe://mesh.test/ns/default/sa/frontend"}


def test_authorization_denies_other_callers_and_plaintext(mesh: TestMesh) -> None:
    """Another workload gets 403 from the policy; a plaintext call is refused (STRICT)."""
    app = orders_app(mesh.mesh("orders"))
    assert mesh.client_for(app, as_="intruder").get("/whoami").status_code == 403
    assert mesh.client_for(app, as_=None).get("/whoami").status_code == 403


def test_route_sends_canary_requests_to_the_v2_subset(mesh: TestMesh) -> None:
    """A header-matched route reaches only the v2 instance, over real mTLS as orders."""
    client = mesh.client_for(orders_app(mesh.mesh("orders")), as_="frontend")
    versions = {
        client.get("/stock", headers={"x-canary": "yes"}).json()["version"] for _ in range(4)
    }
    assert versions == {"v2"}
    body = client.get("/stock", headers={"x-canary": "yes"}).json()
    assert body["peer"] == mesh.spiffe_id("orders")


def test_default_route_retries_5xx_until_the_v1_instance_answers(mesh: TestMesh) -> None:
    """The default route's retries (attempts 3, retryOn 5xx) hide two 503s from the caller."""
    client = mesh.client_for(orders_app(mesh.mesh("orders")), as_="frontend")
    answer = client.get("/stock")
    assert answer.status_code == 200
    assert answer.json()["version"] == "v1" and answer.json()["try"] == 3


def test_apply_replaces_the_policy_for_every_workload(mesh: TestMesh) -> None:
    """After apply() without the AuthorizationPolicy, a previously denied caller gets in."""
    app = orders_app(mesh.mesh("orders"))
    assert mesh.client_for(app, as_="intruder").get("/whoami").status_code == 403
    mesh.apply(TRAFFIC)
    assert mesh.client_for(app, as_="intruder").get("/whoami").status_code == 200


def test_service_wraps_a_plain_app_in_the_middleware() -> None:
    """client_for(service=...) enforces the policy on an app without MeshMiddleware."""
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    with TestMesh(policies=AUTHZ) as tm:
        assert tm.client_for(app, as_="frontend", service="orders").get("/").status_code == 200
        assert tm.client_for(app, as_="intruder", service="orders").get("/").status_code == 403
