"""Prometheus finds the whole mesh through the control service's HTTP service discovery.

Debian's real ``prometheus`` is started with one generated scrape config whose
``http_sd_configs`` points at ``/v1/admin/prometheus/targets`` (the dashboard token as its
bearer credential, the mesh bundle as its CA); the test then reads golden metrics back
through Prometheus's own HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib_control.admin_client import AdminClient
from meshlib_control.api.discovery import TARGETS_PATH
from meshlib_control.observe.discovery import scrape_targets
from meshlib_control.store.records import InstanceRecord
from tests.integration.harness import Control, Service, free_port, wait_endpoints, wait_for
from tests.records import instance_record

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)"
)
REQUESTS = 17


class Prometheus:
    """``prometheus`` on a free loopback port, scraping what the control service lists."""

    def __init__(self, workdir: Path, control: Control) -> None:
        assert PROMETHEUS is not None
        admin = control.data_dir / "admin"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "mesh",
                    "http_sd_configs": [
                        {
                            "url": control.url + TARGETS_PATH,
                            "refresh_interval": "1s",
                            # type is spelled out: Debian's 2.42 http_sd otherwise sends
                            # the credentials with no scheme at all
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": str(admin / "dashboard.token"),
                            },
                            "tls_config": {"ca_file": str(admin / "bundle.pem")},
                        }
                    ],
                }
            ],
        }
        path = workdir / "prometheus.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        self.log = workdir / "prometheus.log"
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 10, "prometheus ready")

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["result"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        finally:
            self._out.close()


@pytest.fixture
def prometheus(tmp_path: Path, control: Control) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, control)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _value(rows: list[dict[str, Any]]) -> float | None:
    return float(rows[0]["value"][1]) if len(rows) == 1 else None


@needs_prometheus
def test_prometheus_scrapes_the_mesh_through_http_sd(tmp_path, control, workload, prometheus):
    """Both instances are found and scraped; the served-request count is what was sent,
    and the retry and retry-budget series of the caller read 0, not nothing."""
    orders = Service(control, "orders", tmp_path, app="tests.integration.obs_app").start()
    try:
        frontend = workload("frontend")
        wait_endpoints(frontend, "orders")
        with frontend.client() as http:
            for i in range(REQUESTS):
                assert http.get(f"http://orders/items/{i}").status_code == 200

        def targets_up() -> list[dict[str, Any]] | None:
            active = prometheus.api("targets", state="active")["activeTargets"]
            services = {t["labels"].get("mesh_service") for t in active if t["health"] == "up"}
            return active if services >= {"orders", "frontend"} else None

        active = wait_for(targets_up, 12, "both instances up in prometheus", interval=0.3)
        by_service = {t["labels"]["mesh_service"]: t for t in active}
        assert by_service["orders"]["labels"]["mesh_mode"] == "library"
        assert by_service["orders"]["labels"]["mesh_namespace"] == "default"
        assert by_service["orders"]["scrapeUrl"].endswith("/metrics")
        admin_ports = {i["adminPort"] for i in control.instances()}
        assert {int(t["labels"]["instance"].rpartition(":")[2]) for t in active} <= admin_ports

        served = (
            'sum(http_server_request_duration_seconds_count{job="mesh",mesh_service="orders",'
            'mesh_source_workload="frontend",http_response_status_code="200"})'
        )
        count = wait_for(
            lambda: _value(prometheus.query(served)) == REQUESTS,
            12,
            f"{REQUESTS} served requests in prometheus (last {prometheus.query(served)})",
            interval=0.3,
        )
        assert count
        called = (
            'sum(http_client_request_duration_seconds_count{mesh_service="frontend",'
            'mesh_destination_service="orders"})'
        )
        assert _value(prometheus.query(called)) == REQUESTS
        # The docs' retry and budget queries answer 0 for a destination never retried.
        for metric in ("mesh_client_retries_total", "mesh_client_retry_budget_exhausted_total"):
            rows = prometheus.query(
                f'sum by (mesh_destination_service) ({metric}{{mesh_service="frontend",'
                'mesh_destination_service="orders"})'
            )
            assert _value(rows) == 0.0, (metric, rows)
    finally:
        orders.stop()


def test_discovery_needs_the_dashboard_token_or_the_admin_svid(control):
    """No token or a wrong one: 401 with the error envelope; the token or the admin SVID:
    the target list."""
    token = (control.data_dir / "admin" / "dashboard.token").read_text().strip()
    with httpx.Client(base_url=control.url, verify=False, timeout=10) as http:
        missing = http.get(TARGETS_PATH)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthenticated"
        wrong = http.get(TARGETS_PATH, headers={"authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert "dashboard token" in wrong.json()["error"]["message"]
        good = http.get(TARGETS_PATH, headers={"authorization": f"Bearer {token}"})
        assert good.status_code == 200
        assert good.json() == []  # nothing registered yet
        assert good.headers["cache-control"] == "no-store"
    # the admin SVID (what meshctl authenticates with) reads it too
    admin = AdminClient(control.data_dir)
    try:
        assert admin.call("GET", TARGETS_PATH) == []
    finally:
        admin.close()


def _record(iid: str, **changes: Any) -> InstanceRecord:
    base = instance_record(iid, changes.pop("service", "orders"), **changes.pop("kw", {}))
    return replace(base, **changes)


def test_targets_list_only_what_the_observer_would_scrape():
    """One group per instance with an admin port at its own address (the registration's
    source, or loopback from loopback); labels name the instance; the rest is left out."""
    records = [
        _record("b-lib", admin_port=40001, source="127.0.0.1", kw={"labels": {"version": "v1"}}),
        _record("a-car", admin_port=15020, source="127.0.0.1", kw={"mode": "sidecar"}),
        _record("c-v6", admin_port=40003, source="::1", kw={"address": "::1"}),
        _record("d-noadmin", source="127.0.0.1"),
        _record("e-foreign", admin_port=40005, source="10.0.0.9", kw={"address": "10.0.0.8"}),
        _record("f-name", admin_port=40006, source="10.0.0.9", kw={"address": "db.internal"}),
        _record("g-remote", admin_port=40007, source="10.0.0.9", kw={"address": "10.0.0.9"}),
    ]
    groups = scrape_targets(records)
    by_id = {g["labels"]["mesh_instance"]: g for g in groups}
    assert list(by_id) == ["a-car", "b-lib", "c-v6", "g-remote"]  # sorted, refused ones out
    assert by_id["b-lib"] == {
        "targets": ["127.0.0.1:40001"],
        "labels": {
            "__metrics_path__": "/metrics",
            "__scheme__": "http",
            "mesh_service": "orders",
            "mesh_namespace": "default",
            "mesh_instance": "b-lib",
            "mesh_mode": "library",
            "__meta_mesh_label_version": "v1",
        },
    }
    assert by_id["a-car"]["labels"]["mesh_mode"] == "sidecar"
    assert by_id["a-car"]["targets"] == ["127.0.0.1:15020"]
    assert by_id["c-v6"]["targets"] == ["[::1]:40003"]
    assert by_id["g-remote"]["targets"] == ["10.0.0.9:40007"]
