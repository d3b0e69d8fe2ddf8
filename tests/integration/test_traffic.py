"""Load balancing and subsets by policy; registry expiry; start-up and reports."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

import meshlib
from meshlib.errors import StartTimeout
from meshlib.integrations.httpx import IdentityTransport
from tests.integration.harness import free_port, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

SPLIT = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  loadBalancer: LB
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  routes:
  - name: canary
    backends: [{subset: v1, weight: 80}, {subset: v2, weight: 20}]
"""


def _versions(mesh, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    with mesh.client() as http:
        for i in range(n):
            seen[http.get(f"http://orders/items/{i}").json()["labels"]] += 1
    return seen


def test_weighted_subsets_split_traffic(services, workload, control):
    """An 80/20 split over v1/v2 subsets lands within statistical tolerance."""
    services("orders", labels="version=v1")
    services("orders", labels="version=v2")
    control.apply(SPLIT.replace("LB", "P2C_EWMA"))
    client = workload("frontend")
    wait_endpoints(client, "orders", 2)
    wait_for(lambda: client.engine.resolve("orders").load_balancer == "P2C_EWMA", 10, "policy")
    seen = _versions(client, 400)
    # Binomial(400, 0.2): mean 80, sd 8; 48..112 is four standard deviations.
    assert 48 <= seen["version=v2"] <= 112, seen
    assert seen["version=v1"] + seen["version=v2"] == 400


def test_round_robin_spreads_evenly(services, workload, control):
    """ROUND_ROBIN over two endpoints alternates between them."""
    services("orders", labels="version=v1")
    services("orders", labels="version=v2")
    control.apply(
        "apiVersion: meshlib.io/v1\nkind: TrafficPolicy\nmetadata: {name: orders}\n"
        "spec: {service: orders, loadBalancer: ROUND_ROBIN}\n"
    )
    client = workload("frontend")
    wait_endpoints(client, "orders", 2)
    wait_for(lambda: client.engine.resolve("orders").load_balancer == "ROUND_ROBIN", 10, "policy")
    seen = _versions(client, 40)
    assert seen == Counter({"version=v1": 20, "version=v2": 20})


def test_dead_instance_expires_from_registry_and_snapshots(services, workload, control):
    """An instance that stops heartbeating leaves the registry and callers' snapshots."""
    orders = services("orders")
    client = workload("frontend")
    wait_endpoints(client, "orders")
    orders.process.proc.kill()
    wait_for(
        lambda: not [i for i in control.instances() if i["service"] == "orders"],
        15,
        "registration expired",
        interval=0.5,
    )
    wait_for(lambda: client.engine.resolve("orders") is None, 10, "snapshot updated")


def test_start_times_out_with_a_clear_error(tmp_path, control):
    """start() against an unreachable control service fails after its timeout, saying why."""
    mesh = meshlib.Mesh(
        service="orders",
        control_url=f"https://127.0.0.1:{free_port()}",
        token=control.token("orders"),
        data_dir=tmp_path / "w",
    )
    began = time.monotonic()
    with pytest.raises(StartTimeout, match="unreachable"):
        mesh.start(timeout=2)
    assert time.monotonic() - began < 10


def test_rejection_report_is_recorded(workload, control):
    """An instance's report of a rejected snapshot shows up in the registry."""
    mesh = workload("orders")
    transport = IdentityTransport(
        expected="spiffe://mesh.local/control", tls=mesh.tls.client_context
    )
    with httpx.Client(transport=transport, base_url=control.url) as http:
        response = http.post(
            f"/v1/instances/{mesh.instance_id}/report",
            json={"version": "deadbeef", "error": "spec.routes[0]: boom"},
        )
        assert response.status_code == 200, response.text
        other = http.post("/v1/instances/nope/report", json={"version": "x"})
        assert other.status_code == 404
    record = next(i for i in control.instances() if i["id"] == mesh.instance_id)
    assert record["rejectedVersion"] == "deadbeef"
    assert record["rejection"] == "spec.routes[0]: boom"
    assert record["appliedVersion"] == mesh.engine.version


def test_stopped_service_deregisters_at_once(services, workload, control):
    """SIGTERM to a meshlib.serve process drops it from snapshots before its lease ends."""
    orders = services("orders")
    client = workload("frontend")
    wait_endpoints(client, "orders")
    began = time.monotonic()
    orders.stop()
    wait_for(lambda: client.engine.resolve("orders") is None, 10, "deregistered")
    assert time.monotonic() - began < 5  # the lease is 5 s; deregistration is immediate
