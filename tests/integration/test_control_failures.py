"""The data plane outlives the control plane; a control restart loses nothing."""

from __future__ import annotations

import json

import httpx
import pytest

import meshlib
from tests.integration.harness import Service, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

POLICY = """
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-allow, namespace: default}
spec:
  service: orders
  rules:
  - from: {principals: ["spiffe://mesh.local/ns/default/sa/frontend"]}
---
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  loadBalancer: ROUND_ROBIN
  subsets: [{name: v1, labels: {version: v1}}]
"""


def test_services_keep_serving_with_control_down(services, workload, control):
    """With the control service stopped, cached identity and policy keep traffic flowing."""
    services("orders")
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    control.stop()
    with frontend.client() as http:
        for i in range(20):
            assert http.get(f"http://orders/items/{i}").status_code == 200
    with httpx.Client(transport=frontend.transport(own_pools=True)) as http:  # new handshakes
        assert http.get("http://orders/items/x").json()["peer"].endswith("/sa/frontend")


def test_service_restarted_while_control_down_starts_from_cache(
    services, workload, control, tmp_path
):
    """A service restarted while control is down comes back from its on-disk cache."""
    orders = services("orders")
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    control.stop()
    orders.stop()
    # No token: the cache is all it has.
    again = Service(
        control, "orders", tmp_path, port=orders.port, data_dir=orders.data_dir, token=""
    )
    again.start()
    try:
        assert "starting from cache" in again.process.output()
        with frontend.client() as http:
            assert http.get("http://orders/items/1").status_code == 200
    finally:
        again.stop()


def test_client_restarted_while_control_down_starts_from_cache(services, control, tmp_path):
    """A client Mesh with a cached SVID and snapshot starts without the control service."""
    services("orders")
    first = meshlib.Mesh(
        service="frontend",
        control_url=control.url,
        token=control.token("frontend"),
        data_dir=tmp_path / "fe",
    ).start()
    wait_endpoints(first, "orders")
    first.close()
    control.stop()
    second = meshlib.Mesh(
        service="frontend", control_url=control.url, data_dir=tmp_path / "fe", start_timeout=15
    ).start()
    try:
        with second.client() as http:
            assert http.get("http://orders/items/1").status_code == 200
    finally:
        second.close()


def test_control_restart_loses_nothing(services, workload, control):
    """Resources, registry, CA and tokens survive a restart; snapshots keep their version."""
    services("orders", labels="version=v1")
    control.apply(POLICY)
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    spare_token = control.token("inventory", "--uses", "2")
    before = {
        "resources": control.ok("get", "TrafficPolicy", "-o", "json")
        + control.ok("get", "AuthorizationPolicy", "-o", "json"),
        "ca": (control.data_dir / "ca.pem").read_bytes(),
        "instances": {i["id"] for i in control.instances()},
        "tokens": json.loads(control.ok("get", "tokens", "-o", "json")),
    }
    version = frontend.engine.version

    control.stop()
    control.start()

    assert (
        control.ok("get", "TrafficPolicy", "-o", "json")
        + control.ok("get", "AuthorizationPolicy", "-o", "json")
        == before["resources"]
    )
    assert (control.data_dir / "ca.pem").read_bytes() == before["ca"]
    assert {i["id"] for i in control.instances()} >= before["instances"]
    assert json.loads(control.ok("get", "tokens", "-o", "json")) == before["tokens"]
    # The same state gives the same snapshot: nothing rolls back or churns.
    instance = wait_for(
        lambda: next((i for i in control.instances() if i["id"] == frontend.instance_id), None),
        10,
        "frontend re-registered",
    )
    assert instance["appliedVersion"] == version
    assert frontend.engine.version == version
    # A token issued before the restart still works after it.
    inventory = meshlib.Mesh(
        service="inventory",
        control_url=control.url,
        token=spare_token,
        data_dir=control.data_dir.parent / "inv",
    ).start()
    inventory.close()
