"""ConsulStatus: failures classified, counted in the metric, shown by `meshctl check`."""

from __future__ import annotations

import json

import consul
import requests
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib_control.consul.status import ConsulStatus, classify


def test_classify_names_each_failure():
    """403 is acl_denied, a refused connection unreachable, bad JSON malformed."""
    assert classify(consul.ACLPermissionDenied("Permission denied")) == "acl_denied"
    assert classify(requests.ConnectionError("refused")) == "unreachable"
    assert classify(json.JSONDecodeError("Expecting value", "{x", 1)) == "malformed"
    assert classify(consul.ConsulException("500 boom")) == "error"
    wrapped = consul.ConsulException("Failed to decode JSON")
    wrapped.__cause__ = json.JSONDecodeError("Expecting value", "{x", 1)
    assert classify(wrapped) == "malformed"  # how py-consul reports an undecodable body


def test_failures_count_in_the_metric_and_the_check():
    """Each failure adds 1 to meshlib.control.consul.errors{direction,error.type}; the
    check fails until a success, then warns while the last call failed."""
    reader = InMemoryMetricReader()
    status = ConsulStatus("http://c:8500", meter_provider=MeterProvider(metric_readers=[reader]))
    status.failed("import", consul.ACLPermissionDenied("denied"), "health legacy-billing")
    status.failed("import", consul.ACLPermissionDenied("denied"), "health legacy-billing")
    (check,) = status.checks()
    assert check["name"] == "consul import"
    assert check["status"] == "fail"
    assert "health legacy-billing: acl_denied: denied" in check["message"]
    assert "errors so far: 2 acl_denied" in check["message"]
    status.succeeded("import")
    assert status.checks()[0]["status"] == "ok"
    status.failed("import", requests.ConnectionError("refused"), "health legacy-billing")
    assert status.checks()[0]["status"] == "warn"
    data = reader.get_metrics_data()
    points = {
        (p.attributes["consul.direction"], p.attributes["error.type"]): p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "meshlib.control.consul.errors"
        for p in m.data.data_points
    }
    assert points == {("import", "acl_denied"): 2, ("import", "unreachable"): 1}
