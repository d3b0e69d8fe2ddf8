"""Prometheus finds a sidecar-mode instance through the same discovery and scrapes Envoy.

A plain app behind the real agent and Envoy registers the agent's admin port; the target
list hands it to Debian's ``prometheus``, which reads Envoy's inbound request counter (the
agent's ``/metrics`` is Envoy's ``/stats/prometheus`` plus its own gauges).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Control, wait_endpoints, wait_for
from tests.integration.sidecars import SidecarService, envoy_available, xds_control
from tests.integration.test_prometheus_sd import Prometheus, needs_prometheus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed ([sidecar])"),
]
REQUESTS = 9


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A control service with ADS (overrides conftest's, so workloads use it)."""
    plane = xds_control(tmp_path / "control")
    plane.start()
    yield plane
    plane.stop()


@needs_prometheus
def test_prometheus_scrapes_a_sidecar_through_http_sd(tmp_path, control, workload):
    """The sidecar's target has mesh_mode=sidecar and Prometheus reads Envoy's inbound
    request count for it: exactly what the library caller sent."""
    orders = SidecarService(control, "orders", tmp_path).start()
    server = Prometheus(tmp_path, control)
    try:
        server.wait_ready()
        frontend = workload("frontend")
        wait_endpoints(frontend, "orders")
        with frontend.client() as http:
            for i in range(REQUESTS):
                assert http.get(f"http://orders/items/{i}").status_code == 200

        def sidecar_up() -> dict[str, Any] | None:
            active = server.api("targets", state="active")["activeTargets"]
            for target in active:
                labels = target["labels"]
                if labels.get("mesh_service") == "orders" and target["health"] == "up":
                    return dict(target)
            return None

        target = wait_for(sidecar_up, 12, "the sidecar's target up in prometheus", interval=0.3)
        assert target["labels"]["mesh_mode"] == "sidecar"
        assert target["labels"]["instance"] == f"127.0.0.1:{orders.sidecar.admin_port}"
        served = (
            'sum(envoy_http_downstream_rq_completed{mesh_service="orders",'
            'envoy_http_conn_manager_prefix="inbound"})'
        )

        def count() -> float | None:
            rows = server.query(served)
            return float(rows[0]["value"][1]) if len(rows) == 1 else None

        wait_for(lambda: count() == REQUESTS, 12, f"{REQUESTS} requests in Envoy's counter")
        expiry = server.query('mesh_certificate_expiry_seconds{mesh_service="orders"}')
        assert len(expiry) == 1 and float(expiry[0]["value"][1]) > 0
    finally:
        server.stop()
        orders.stop()
