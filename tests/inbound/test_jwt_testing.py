"""meshlib.testing.TestMesh with a RequestAuthentication: an app tests its end-user rules."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request

import meshlib
from meshlib.testing import TestMesh
from tests.jwt_tokens import ISSUER, Signer, jwks

SIGNER = Signer("ES256", "t1")
URI = "https://issuer.test/jwks"
POLICIES = f"""
apiVersion: meshlib.io/v1
kind: RequestAuthentication
metadata: {{name: users}}
spec:
  service: orders
  jwtRules: [{{issuer: "{ISSUER}", jwksUri: "{URI}"}}]
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-users}}
spec:
  service: orders
  rules:
  - from: {{requestPrincipals: ["*"]}}
"""


def app(mesh: meshlib.Mesh) -> FastAPI:
    api = FastAPI()
    api.add_middleware(meshlib.MeshMiddleware, mesh=mesh)

    @api.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        auth = request.state.mesh.auth
        return {"principal": auth.principal, "peer": request.state.mesh.peer}

    return api


def test_test_mesh_verifies_tokens_with_the_given_key_set() -> None:
    """jwks= stands in for the control service's fetch: valid 200, invalid 401, none 403."""
    with TestMesh(policies=POLICIES, jwks={URI: json.dumps(jwks(SIGNER))}) as tm:
        client = tm.client_for(app(tm.mesh("orders")), as_="frontend")
        ok = client.get("/me", headers={"authorization": f"Bearer {SIGNER.token('ann')}"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"principal": f"{ISSUER}/ann", "peer": tm.spiffe_id("frontend")}
        expired = client.get(
            "/me", headers={"authorization": f"Bearer {SIGNER.token(lifetime=-120)}"}
        )
        assert expired.status_code == 401
        assert expired.json()["reason"] == "Jwt is expired"
        assert client.get("/me").status_code == 403
