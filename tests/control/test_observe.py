"""Observability math: Prometheus-text parsing, deltas, percentiles, golden metrics, checks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlib.telemetry.metrics import MeshTelemetry
from meshlib_control.observe.checks import certificate_status, root_checks
from meshlib_control.observe.golden import (
    InstanceWindow,
    delta,
    golden_stats,
    is_failure,
    quantile,
)
from meshlib_control.observe.prom import HistogramSeries, parse_metrics

HIST = "http_server_request_duration_seconds"


def _page(series: dict[tuple[str, int], list[float]]) -> str:
    """A /metrics page with one server histogram series per (source, status)."""
    bounds = (0.01, 0.1, 1.0)
    lines = [f"# TYPE {HIST} histogram"]
    for (source, status), values in series.items():
        labels = (
            f'http_request_method="GET",http_response_status_code="{status}",'
            f'mesh_source_workload="{source}",mesh_source_namespace="default"'
        )
        for le in (*bounds, math.inf):
            count = sum(1 for v in values if v <= le)
            shown = "+Inf" if math.isinf(le) else repr(le)
            lines.append(f'{HIST}_bucket{{{labels},le="{shown}"}} {count}')
        lines.append(f"{HIST}_sum{{{labels}}} {sum(values)}")
        lines.append(f"{HIST}_count{{{labels}}} {len(values)}")
    return "\n".join(lines) + "\n"


def test_parses_what_meshlib_renders():
    """A real MeshTelemetry page parses into its histogram series and gauges."""
    telemetry = MeshTelemetry(service="orders", namespace="default")
    for duration in (0.0004, 0.003, 0.003, 0.2):
        telemetry.http_server_done(
            method="GET",
            status=200,
            duration=duration,
            peer="spiffe://mesh.local/ns/default/sa/frontend",
            flag=None,
            path="/x",
            trace_id=None,
        )
    telemetry.gauge_source("mesh.certificate.expiry", lambda: (3600.0, {"mesh.spiffe_id": "x"}))
    scrape = parse_metrics(telemetry.prometheus())
    (series,) = scrape.histograms[HIST].values()
    assert series.label("mesh_source_workload") == "frontend"
    assert series.label("http_response_status_code") == "200"
    assert series.count == 4
    assert series.sum == pytest.approx(0.2064)
    assert series.buckets[-1] == (math.inf, 4)
    assert dict(series.buckets)[0.0005] == 1 and dict(series.buckets)[0.005] == 3
    gauge = scrape.gauge("mesh_certificate_expiry_seconds")
    assert gauge is not None and gauge.value == 3600.0
    telemetry.shutdown()


def test_parser_handles_escapes_and_skips_garbage():
    """Escaped label values, comments and malformed lines are survived; +Inf, NaN and absurd
    sample values are dropped (golden metrics must stay finite: JSON has no infinity)."""
    text = (
        "# HELP g a gauge\n# TYPE g gauge\n"
        'g{a="x\\"y",b="1\\\\2\\nz"} 7\n'
        "plain 3.5 1700000000\n"
        "broken{a=unquoted} 1\n"
        "noval\n"
        'weird{a="1"} +Inf\n'
        "nan NaN\n"
        "huge 1e300\n"
        'h_bucket{le="+Inf"} 4\n'
    )
    scrape = parse_metrics(text)
    (g,) = scrape.samples["g"]
    assert dict(g.labels) == {"a": 'x"y', "b": "1\\2\nz"}
    assert g.value == 7
    assert scrape.samples["plain"][0].value == 3.5
    assert not {"weird", "nan", "huge", "broken", "noval"} & set(scrape.samples)
    assert scrape.samples["h_bucket"][0].value == 4  # an +Inf *bucket bound* is fine


def test_quantile_interpolates_within_buckets():
    """Percentiles interpolate linearly inside the bucket holding the rank."""
    buckets = [(0.1, 10.0), (0.2, 20.0), (math.inf, 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.25, buckets) == pytest.approx(0.05)
    assert quantile(0.99, buckets) == pytest.approx(0.198)


def test_quantile_edge_cases():
    """No observations give None; a rank in +Inf gives the highest finite bound."""
    assert quantile(0.5, []) is None
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(0.1, 5.0), (math.inf, 10.0)]) == pytest.approx(0.1)
    # Empty buckets before the rank are skipped, not interpolated into.
    assert quantile(0.5, [(0.1, 0.0), (0.2, 0.0), (0.4, 4.0), (math.inf, 4.0)]) == pytest.approx(
        0.3
    )


def test_delta_subtracts_and_survives_a_reset():
    """Deltas are per bucket; a counter that went down counts from zero."""
    before = HistogramSeries((), ((0.1, 5.0), (math.inf, 6.0)), 1.0, 6.0)
    after = HistogramSeries((), ((0.1, 8.0), (math.inf, 10.0)), 2.5, 10.0)
    moved = delta(before, after)
    assert moved.buckets == ((0.1, 3.0), (math.inf, 4.0))
    assert moved.count == 4 and moved.sum == pytest.approx(1.5)
    assert delta(after, before) is before
    assert delta(None, after) is after


def test_failures_are_5xx_and_grpc_server_errors():
    """HTTP 5xx and server-side gRPC codes fail; 4xx and OK do not."""
    assert is_failure(HIST, (("http_response_status_code", "503"),))
    assert not is_failure(HIST, (("http_response_status_code", "404"),))
    assert is_failure(
        "rpc_server_call_duration_seconds", (("rpc_grpc_status_code", "UNAVAILABLE"),)
    )
    assert not is_failure("rpc_server_call_duration_seconds", (("rpc_grpc_status_code", "OK"),))


def test_golden_stats_per_service_and_edge():
    """Two scrapes of two instances give rps, success rate and percentiles per service/edge."""
    first = parse_metrics(_page({("frontend", 200): [0.005] * 10}))
    second = parse_metrics(
        _page(
            {
                ("frontend", 200): [0.005] * 10 + [0.05] * 16,
                ("frontend", 500): [0.5] * 4,
                ("billing", 200): [0.005] * 10,
            }
        )
    )
    windows = [
        InstanceWindow("a", "orders", "default", second, 110.0, first, 100.0),
        InstanceWindow("b", "orders", "default", second, 205.0, first, 200.0),
        InstanceWindow("c", "frontend", "default", parse_metrics(""), 5.0),
    ]
    stats = golden_stats(windows)
    services = {s["service"]: s for s in stats["services"]}
    orders = services["orders"]
    # Per instance: 16 + 4 + 10 = 30 new requests; over 10 s and 5 s windows.
    assert orders["requests"] == 60
    assert orders["rps"] == pytest.approx(3.0 + 6.0)
    assert orders["successRate"] == pytest.approx(52 / 60, abs=1e-4)
    assert orders["totalRequests"] == 80 and orders["totalFailures"] == 8
    # Window latencies: 20 at <=10ms, 32 at 10-100ms, 8 at 100ms-1s → p50 in (10ms, 100ms].
    assert orders["p50Ms"] == pytest.approx(10 + 90 * (30 - 20) / 32, abs=1e-3)
    assert orders["p99Ms"] == pytest.approx(100 + 900 * (59.4 - 52) / 8, abs=1e-3)
    assert services["frontend"]["requests"] == 0 and services["frontend"]["successRate"] is None
    edges = {(e["source"], e["service"]): e for e in stats["edges"]}
    assert set(edges) == {("frontend", "orders"), ("billing", "orders")}
    assert edges[("frontend", "orders")]["requests"] == 40
    assert edges[("frontend", "orders")]["successRate"] == pytest.approx(32 / 40)
    assert edges[("billing", "orders")]["successRate"] == 1.0
    assert stats["windowSeconds"] == pytest.approx(7.5)


def _root(not_before: datetime, not_after: datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def test_root_checks_warn_ahead_and_fail_when_expired():
    """A root is ok far from expiry, warns under 90 days, fails once expired."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    bundle = (
        _root(now - timedelta(days=10), now + timedelta(days=400))
        + _root(now - timedelta(days=10), now + timedelta(days=30))
        + _root(now - timedelta(days=400), now - timedelta(days=1))
    )
    statuses = [(c["status"], c["message"].split()[0]) for c in root_checks(bundle, now)]
    assert statuses == [("ok", "valid,"), ("warn", "expires"), ("fail", "expired")]


def test_certificate_status_thresholds():
    """Instance certificates warn under 10 % of their lifetime or an hour, fail when expired."""
    now = datetime.now(UTC)
    day = timedelta(hours=24)
    assert certificate_status(now - timedelta(hours=12), now + timedelta(hours=12), None)[0] == "ok"
    assert certificate_status(now - day, now + timedelta(hours=2), None)[0] == "warn"
    assert certificate_status(None, None, timedelta(minutes=30))[0] == "warn"
    assert certificate_status(None, None, timedelta(hours=5))[0] == "ok"
    assert certificate_status(now - day, now - timedelta(minutes=1), None)[0] == "fail"
    assert certificate_status(None, None, None) == ("ok", "expiry unknown")


XX = (
    'envoy_http_downstream_rq_xx{{envoy_response_code_class="{}",'
    'envoy_http_conn_manager_prefix="{}"}} {}'
)
ENVOY_PAGE = (
    "\n".join(
        [
            "# TYPE envoy_http_downstream_rq_xx counter",
            XX.format(2, "inbound", 6),
            XX.format(5, "inbound", 2),
            XX.format(2, "outbound", 50),
        ]
    )
    + "\n"
    + """\
# TYPE envoy_http_downstream_rq_time histogram
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound",le="1"} 4
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound",le="10"} 8
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="inbound",le="+Inf"} 8
envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix="inbound"} 20
envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="inbound"} 8
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="outbound",le="1"} 50
envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix="outbound",le="+Inf"} 50
envoy_http_downstream_rq_time_sum{envoy_http_conn_manager_prefix="outbound"} 5
envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="outbound"} 50
# TYPE mesh_certificate_expiry_seconds gauge
mesh_certificate_expiry_seconds 3600
"""
)


def test_envoy_inbound_stats_become_the_mesh_server_histogram():
    from meshlib_control.observe.envoy import parse_envoy

    scrape = parse_envoy(ENVOY_PAGE)
    series = scrape.histograms["http_server_request_duration_seconds"]
    by_status = {dict(k)["http_response_status_code"]: v for k, v in series.items()}
    assert set(by_status) == {"200", "500"}  # outbound (the app's own calls) is not served
    assert by_status["200"].count == pytest.approx(6) and by_status["500"].count == pytest.approx(2)
    assert by_status["200"].buckets[0] == (0.001, pytest.approx(3.0))  # ms → s, 3/4 of 4
    assert by_status["200"].sum + by_status["500"].sum == pytest.approx(0.020)
    assert scrape.gauge("mesh_certificate_expiry_seconds").value == 3600
