"""AuthorizationPolicy and PeerAuthentication enforced by real services, changed live."""

from __future__ import annotations

import pytest

from tests.integration.harness import wait_endpoints, wait_for

pytestmark = pytest.mark.integration

ALLOW_FRONTEND = """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-allow, namespace: default}
spec:
  service: orders
  action: ALLOW
  rules:
  - name: frontend-reads
    from: {principals: ["spiffe://mesh.local/ns/default/sa/frontend"]}
    to: {methods: [GET], paths: ["/items/*"]}
"""

DENY_ADMIN_PATHS = """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-no-admin, namespace: default}
spec:
  service: orders
  action: DENY
  rules:
  - name: no-admin
    to: {paths: ["/items/admin*"]}
"""

PERMISSIVE = """
apiVersion: meshlib.io/v1
kind: PeerAuthentication
metadata: {name: orders-permissive, namespace: default}
spec: {service: orders, mode: PERMISSIVE}
"""


def _status(mesh, path, method="GET"):
    with mesh.client() as http:
        return http.request(method, f"http://orders{path}")


def test_no_policy_allows_any_mesh_identity(services, workload):
    """Without an AuthorizationPolicy every authenticated caller is admitted."""
    services("orders")
    stranger = workload("stranger")
    wait_endpoints(stranger, "orders")
    assert _status(stranger, "/anything").status_code == 200


def test_authorization_allow_and_deny(services, workload, control):
    """ALLOW admits only the named principal/method/path; DENY wins over ALLOW."""
    services("orders")
    frontend = workload("frontend")
    intruder = workload("intruder")
    wait_endpoints(frontend, "orders")
    wait_endpoints(intruder, "orders")
    control.apply(ALLOW_FRONTEND)
    wait_for(lambda: _status(intruder, "/items/1").status_code == 403, 10, "policy applied")

    denied = _status(intruder, "/items/1")
    body = denied.json()
    assert denied.headers["x-mesh-flag"] == "AUTHZ_DENIED"
    assert body["mechanism"] == "AuthorizationPolicy"
    assert body["peer"] == "spiffe://mesh.local/ns/default/sa/intruder"
    assert "default/orders-allow" in body["reason"]

    assert _status(frontend, "/items/1").status_code == 200
    assert _status(frontend, "/items/1", "DELETE").status_code == 403  # method not allowed
    assert _status(frontend, "/orders/1").status_code == 403  # path not allowed

    control.apply(DENY_ADMIN_PATHS)
    wait_for(lambda: _status(frontend, "/items/admin").status_code == 403, 10, "deny applied")
    deny = _status(frontend, "/items/admin").json()
    assert deny["policy"] == "default/orders-no-admin"
    assert deny["rule"] == "no-admin"
    assert _status(frontend, "/items/2").status_code == 200

    control.ok("delete", "AuthorizationPolicy", "orders-allow")
    control.ok("delete", "AuthorizationPolicy", "orders-no-admin")
    wait_for(lambda: _status(intruder, "/items/1").status_code == 200, 10, "policies removed")


def test_strict_and_permissive_switched_live(services, control):
    """STRICT refuses plaintext; PERMISSIVE admits it unauthenticated; back to STRICT refuses."""
    orders = services("orders", plaintext=True)
    refused = orders.plain_get("/items/1")
    assert refused.status_code == 403
    assert refused.headers["x-mesh-flag"] == "PLAINTEXT_REFUSED"
    assert "STRICT" in refused.json()["error"]

    control.apply(PERMISSIVE)
    admitted = wait_for(
        lambda: (r := orders.plain_get("/items/1")).status_code == 200 and r, 10, "PERMISSIVE"
    )
    assert admitted.json()["peer"] is None
    assert admitted.json()["authenticated"] is False

    control.ok("delete", "PeerAuthentication", "orders-permissive")
    wait_for(lambda: orders.plain_get("/items/1").status_code == 403, 10, "back to STRICT")


def test_plaintext_caller_cannot_pass_allow_rules_with_principals(services, control):
    """Under PERMISSIVE a plaintext caller never matches a principal-based ALLOW rule."""
    orders = services("orders", plaintext=True)
    control.apply(PERMISSIVE + "---\n" + ALLOW_FRONTEND)
    wait_for(lambda: orders.plain_get("/items/1").status_code == 403, 10, "policies applied")
    body = orders.plain_get("/items/1").json()
    assert body["flag"] == "AUTHZ_DENIED"
