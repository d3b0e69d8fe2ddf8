"""Out-of-range numbers are refused at apply time; a service outlives any policy it accepts."""

from __future__ import annotations

import json

import pytest

from meshlib.policy.model import MAX_BURST
from meshlib_control.cli import AdminClient
from tests.integration.harness import wait_endpoints, wait_for

pytestmark = pytest.mark.integration

HUGE = "1" + "0" * 400  # 10^400: an integer no float can hold

RATE_LIMIT = """
apiVersion: meshlib.io/v1
kind: RateLimit
metadata: {{name: orders-limit, namespace: default}}
spec: {{service: orders, requestsPerSecond: {rps}, burst: {burst}}}
"""


def _get(mesh, path="/items/1"):
    with mesh.client() as http:
        return http.get(f"http://orders{path}")


def _post(admin, body, content_type):
    # The raw response (AdminClient.call raises on >= 400): the status and error body matter.
    return admin._http.post(
        f"{admin.url}/v1/admin/resources",
        content=body.encode(),
        headers={"content-type": content_type},
    )


def test_rate_limit_burst_of_ten_to_the_400_is_refused_and_the_service_keeps_serving(
    services, workload, control
):
    """burst 10^400 (YAML, JSON) gets 400 naming spec.burst; nothing stored; orders answers 200."""
    services("orders")
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    assert _get(frontend).status_code == 200
    json_doc = json.dumps(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "RateLimit",
            "metadata": {"name": "orders-limit"},
            "spec": {"service": "orders", "requestsPerSecond": 10, "burst": 10**400},
        }
    )
    admin = AdminClient(control.data_dir)
    try:
        for body, content_type in (
            (RATE_LIMIT.format(rps=10, burst=HUGE), "application/yaml"),
            (json_doc, "application/json"),
        ):
            response = _post(admin, body, content_type)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["path"] == "documents[0].spec.burst"
            assert f"must be <= {MAX_BURST}" in error["message"]
        # A rate of 10^400 is refused too (it used to overflow float() in the decoder).
        response = _post(admin, RATE_LIMIT.format(rps=HUGE, burst=1), "application/yaml")
        assert response.status_code == 400, response.text
        assert response.json()["error"]["path"] == "documents[0].spec.requestsPerSecond"
    finally:
        admin.close()
    assert json.loads(control.ok("get", "RateLimit", "-o", "json")) == []
    assert [_get(frontend).status_code for _ in range(5)] == [200] * 5


def test_highest_accepted_burst_is_enforced_without_errors(services, workload, control):
    """The largest burst and rate the decoder accepts reach the service, which keeps serving."""
    services("orders")
    frontend = workload("frontend")
    wait_endpoints(frontend, "orders")
    before = {i["id"]: i.get("appliedVersion") for i in control.instances()}
    control.apply(RATE_LIMIT.format(rps=1_000_000, burst=MAX_BURST))

    def applied() -> bool:
        for record in control.instances():
            if record["service"] == "orders" and record.get("appliedVersion") not in (
                None,
                before.get(record["id"]),
            ):
                assert record.get("rejectedVersion") is None, record
                return True
        return False

    wait_for(applied, 20, "orders to apply the RateLimit", interval=0.3)
    assert [_get(frontend).status_code for _ in range(5)] == [200] * 5
