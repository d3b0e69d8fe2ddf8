"""`meshctl stat`, `meshctl check` and `meshctl explain` against a running mesh."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib.integrations.httpx import IdentityTransport
from meshlib_control.cli import AdminClient
from tests.integration.harness import Control, Service, wait_endpoints, wait_for

pytestmark = pytest.mark.integration

POLICIES = """
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: default}
spec:
  service: orders
  loadBalancer: ROUND_ROBIN
---
apiVersion: meshlib.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-allow, namespace: default}
spec:
  service: orders
  action: ALLOW
  rules:
  - name: frontend-reads
    from: {principals: ["spiffe://mesh.local/ns/default/sa/frontend"]}
"""


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A control service scraping every second (overrides conftest's, so workloads use it)."""
    plane = Control(tmp_path / "control", "--instance-ttl", "5s", "--scrape-interval", "1")
    plane.start()
    yield plane
    plane.stop()


def _stat(control: Control) -> dict[str, Any]:
    return dict(json.loads(control.ok("stat", "-o", "json")))


def _edge(control: Control) -> dict[str, Any] | None:
    for edge in _stat(control)["edges"]:
        if edge["source"] == "frontend" and edge["service"] == "orders":
            return dict(edge)
    return None


def test_stat_counts_known_traffic(tmp_path, control, workload):
    """Requests, failures, rate and percentiles of frontend -> orders match what was sent."""
    orders = Service(control, "orders", tmp_path, app="tests.integration.obs_app").start()
    try:
        client = workload("frontend")
        wait_endpoints(client, "orders")
        stop = threading.Event()

        def steady() -> None:
            with client.client() as http:
                for i in range(2000):  # bounded; ~20/s until stopped
                    if stop.wait(0.05):
                        return
                    http.get(f"http://orders/ok/{i}")

        thread = threading.Thread(target=steady, daemon=True)
        thread.start()
        try:
            edge = wait_for(
                lambda: (e := _edge(control)) and e["rps"] > 0 and e["p99Ms"] is not None and e,
                20,
                "a window with traffic",
                interval=0.3,
            )
            assert edge["successRate"] == 1.0 and edge["totalFailures"] == 0
            assert 0 < edge["p50Ms"] <= edge["p95Ms"] <= edge["p99Ms"]
            table = control.ok("stat")
            assert table.splitlines()[0].split() == [
                "SERVICE/EDGE", "RPS", "SUCCESS", "P50", "P95", "P99", "TOTAL"
            ]  # fmt: skip
            row = next(line for line in table.splitlines() if "frontend -> orders" in line)
            assert "100.00%" in row and row.count("ms") == 3
        finally:
            stop.set()
            thread.join(10)

        # Quiet: two scrapes in a row count the same total, so nothing is in flight.
        seen: list[int] = []

        def quiet() -> bool:
            seen.append(_edge(control)["totalRequests"])
            return len(seen) >= 2 and seen[-1] == seen[-2]

        wait_for(quiet, 15, "no request in flight", interval=1.2)
        before = seen[-1]
        with client.client() as http:
            for i in range(20):
                assert http.get(f"http://orders/ok/{i}").status_code == 200
            for _ in range(5):  # POST: not retried, so exactly five failed requests
                assert http.post("http://orders/status/500").status_code == 500
        # Poll the admin API in-process (fast) so that no one-second window goes unseen:
        # some window holds the failures, and its success rate is below 100 %.
        admin = AdminClient(control.data_dir)
        rates: list[float] = []

        def counted() -> dict[str, Any] | None:
            stats = admin.call("GET", "/v1/admin/stats", params={"service": "orders"})
            edge = next(e for e in stats["edges"] if e["source"] == "frontend")
            if edge["successRate"] is not None:
                rates.append(edge["successRate"])
            done = edge["totalRequests"] >= before + 25 and any(r < 1.0 for r in rates)
            return dict(edge) if done else None

        try:
            edge = wait_for(counted, 15, "25 more requests and a failing window", interval=0.1)
        finally:
            admin.close()
        assert edge["totalRequests"] == before + 25
        assert edge["totalFailures"] == 5
        only_orders = _stat(control)
        assert {s["service"] for s in only_orders["services"]} >= {"orders", "frontend"}
        filtered = json.loads(control.ok("stat", "orders", "-o", "json"))
        assert [s["service"] for s in filtered["services"]] == ["orders"]
    finally:
        orders.stop()


def test_check_passes_then_reports_a_rejected_snapshot(tmp_path, control, workload):
    """`meshctl check` is clean on a healthy mesh and exits 1 naming a rejection's reason."""
    orders = Service(control, "orders", tmp_path).start()
    try:
        client = workload("frontend")
        wait_endpoints(client, "orders")
        healthy = control.meshctl("check")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        lines = healthy.stdout.splitlines()
        for name in ("control service", "CA root", "instance certificates", "snapshots"):
            assert any(line.startswith(f"\u2714 {name}") for line in lines), healthy.stdout
        assert "2 checked, 0 close to expiry" in healthy.stdout

        transport = IdentityTransport(
            expected="spiffe://mesh.local/control", tls=client.tls.client_context
        )
        with httpx.Client(transport=transport, base_url=control.url) as http:
            response = http.post(
                f"/v1/instances/{client.instance_id}/report",
                json={"version": "deadbeef", "error": "spec.routes[0]: boom"},
            )
            assert response.status_code == 200, response.text
        failing = control.meshctl("check")
        assert failing.returncode == 1, failing.stdout
        expected = (
            f"\u2718 snapshot default/frontend/{client.instance_id}: rejected version "
            "deadbeef: spec.routes[0]: boom"
        )
        assert expected in failing.stdout
        assert "\u2718 snapshots:" in failing.stdout
        checks = json.loads(control.meshctl("check", "-o", "json").stdout)
        assert {c["status"] for c in checks} >= {"ok", "fail"}
    finally:
        orders.stop()


def test_explain_shows_applied_version_and_policy(tmp_path, control, workload):
    """`meshctl explain orders` shows each instance's version, its age and its policy."""
    control.apply(POLICIES)
    orders = Service(control, "orders", tmp_path).start()
    try:
        client = workload("frontend")
        wait_endpoints(client, "orders")

        def explained() -> dict[str, Any] | None:
            answer = json.loads(control.ok("explain", "orders", "-o", "json"))
            (item,) = answer["instances"]
            ok = item["appliedVersion"] in answer["expectedVersions"]
            return answer if ok and item["snapshotVersion"] == item["appliedVersion"] else None

        answer = wait_for(explained, 15, "orders on the current snapshot", interval=0.3)
        (item,) = answer["instances"]
        assert item["mode"] == "library" and item["appliedAgoSeconds"] >= 0
        inbound = item["policy"]["inbound"]
        assert inbound["peerMode"] == "STRICT"
        assert [p["metadata"]["name"] for p in inbound["authorization"]] == ["orders-allow"]
        (traffic,) = item["policy"]["traffic"]
        assert traffic["service"] == "orders.default"
        assert traffic["trafficPolicy"]["spec"]["loadBalancer"] == "ROUND_ROBIN"

        text = control.ok("explain", "orders")
        assert f"appliedVersion: {item['appliedVersion']}" in text
        assert "orders-allow" in text and "ROUND_ROBIN" in text

        # The caller's explanation shows the TrafficPolicy it applies to its calls.
        frontend = json.loads(control.ok("explain", "frontend", "-o", "json"))
        assert any(
            t["service"] == "orders.default" for t in frontend["instances"][0]["policy"]["traffic"]
        )
        missing = control.meshctl("explain", "nothing")
        assert missing.returncode == 1 and "no live instances" in missing.stderr
    finally:
        orders.stop()
