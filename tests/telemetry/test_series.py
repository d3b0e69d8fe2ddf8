"""Series at 0 from the first snapshot; no unbounded label values on /metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.telemetry.series import BREAKER_STATES, FLAGS


@dataclass(frozen=True)
class _Endpoint:
    authority: str


@dataclass(frozen=True)
class _Service:
    """The fields of a CompiledService that declare_services reads."""

    name: str
    namespace: str
    endpoints: tuple[_Endpoint, ...]
    circuit_breaker: object | None = None
    outlier_detection: object | None = None

    @property
    def key(self) -> str:
        return f"{self.name}.{self.namespace}"


def _samples(page: str, family: str) -> dict[str, float]:
    rows = re.findall(rf"^{family}(\{{.*\}})? (\S+)$", page, re.M)
    return {labels: float(value) for labels, value in rows}


def test_declared_services_have_zero_series_and_leaving_endpoints_are_dropped():
    """Retry, budget and failure counters per service, breaker and ejection counters per
    endpoint of a service with that policy, all at 0; an endpoint that left is gone."""
    telemetry = MeshTelemetry(service="frontend", namespace="default")
    orders = _Service(
        "orders", "default", (_Endpoint("10.0.0.1:8443"), _Endpoint("10.0.0.2:8443")),
        circuit_breaker=object(), outlier_detection=object(),
    )  # fmt: skip
    plain = _Service("stock", "shop", (_Endpoint("10.0.1.1:8443"),))
    telemetry.declare([orders, plain])  # type: ignore[list-item]
    page = telemetry.prometheus()
    retries = _samples(page, "mesh_client_retries_total")
    assert retries == {
        '{mesh_destination_service="orders",mesh_destination_namespace="default"}': 0.0,
        '{mesh_destination_service="stock",mesh_destination_namespace="shop"}': 0.0,
    }
    assert set(_samples(page, "mesh_client_retry_budget_exhausted_total").values()) == {0.0}
    assert len(_samples(page, "mesh_client_failures_total")) == 2 * len(FLAGS)
    transitions = _samples(page, "mesh_client_breaker_transitions_total")
    assert len(transitions) == 2 * len(BREAKER_STATES)  # stock has no breaker
    assert all('mesh_destination_service="orders"' in k for k in transitions)
    assert len(_samples(page, "mesh_client_outlier_ejections_total")) == 2
    # a real transition adds to the declared series instead of making a new one
    telemetry.breaker_transition("orders.default", "10.0.0.1:8443", "closed", "open")
    page = telemetry.prometheus()
    opened = _samples(page, "mesh_client_breaker_transitions_total")
    assert len(opened) == 6 and sorted(opened.values()) == [0.0] * 5 + [1.0]
    # 10.0.0.1 left the snapshot: its per-endpoint series go; the service's stay
    telemetry.declare([_Service("orders", "default", (_Endpoint("10.0.0.2:8443"),), object())])  # type: ignore[list-item]
    page = telemetry.prometheus()
    transitions = _samples(page, "mesh_client_breaker_transitions_total")
    assert len(transitions) == 3 and not any("10.0.0.1" in k for k in transitions)
    assert not any("10.0.0.1" in k for k in _samples(page, "mesh_client_outlier_ejections_total"))
    assert len(_samples(page, "mesh_client_retries_total")) == 2


def test_declare_creates_the_series_in_an_sdk_meter_too():
    """With the app's MeterProvider the same 0 points are exported."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = MeshTelemetry(service="frontend", namespace="default", meter_provider=provider)
    telemetry.declare([_Service("orders", "default", (_Endpoint("10.0.0.1:8443"),))])  # type: ignore[list-item]
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: [p.value for p in m.data.data_points]
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
    }
    assert points["mesh.client.retries"] == [0]
    assert points["mesh.client.retry_budget.exhausted"] == [0]
    provider.shutdown()


def test_snapshot_version_is_an_info_gauge_not_a_label_of_the_age():
    """mesh_snapshot_age_seconds has no labels; mesh_snapshot_info carries the version."""
    telemetry = MeshTelemetry(service="frontend", namespace="default")
    versions = iter(["v1", "v2"])
    telemetry.gauge_source(
        "mesh.snapshot.age", lambda: (1.5, {"mesh.snapshot.version": next(versions)})
    )
    page = telemetry.prometheus()
    assert _samples(page, "mesh_snapshot_age_seconds") == {"": 1.5}
    info = _samples(page, "mesh_snapshot_info")
    assert info == {'{mesh_snapshot_version="v2"}': 1.0}


def test_paths_and_methods_are_never_unbounded_labels():
    """Served paths never reach a label; unknown methods are _OTHER."""
    telemetry = MeshTelemetry(service="orders", namespace="default")
    for i in range(50):
        telemetry.http_server_done(
            method=f"M{i}", status=200, duration=0.001, peer=None, flag=None,
            path=f"/items/{i}", trace_id=None, route="/items/{id}",
        )  # fmt: skip
    page = telemetry.prometheus()
    counts = _samples(page, "http_server_request_duration_seconds_count")
    assert len(counts) == 1 and list(counts.values()) == [50.0]
    (labels,) = counts
    assert 'http_request_method="_OTHER"' in labels and 'http_route="/items/{id}"' in labels
    assert "/items/1" not in page
