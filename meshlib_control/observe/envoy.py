"""Envoy's metrics page read in mesh terms, and the page parser for each instance mode."""

from __future__ import annotations

from collections.abc import Callable

from meshlib_control.observe.prom import HistogramSeries, Labels, MetricsScrape, parse_metrics

__all__ = ["ENVOY_INBOUND_PREFIXES", "parse_envoy", "parser_for"]

ENVOY_INBOUND_PREFIXES = ("inbound", "inbound_plaintext")  # the translator's stat prefixes


_ENVOY_RQ_TIME = "envoy_http_downstream_rq_time"


_ENVOY_RQ_XX = "envoy_http_downstream_rq_xx"


def parse_envoy(text: str) -> MetricsScrape:
    """A sidecar's page (Envoy's ``/stats/prometheus`` + the agent's gauges) in mesh terms.

    The inbound listener's ``downstream_rq_time`` histogram (milliseconds) becomes
    ``http_server_request_duration_seconds``, so golden metrics treat both modes alike.
    Envoy's histogram is not split by status; its ``downstream_rq_xx`` counters are, so the
    histogram is divided into a success series (``200``) and a failure series (``500``) in
    proportion to the 5xx count: request counts and success rate are exact, and so are the
    percentiles of the two together. Envoy cannot tell which workload called, so the edge's
    source is ``unknown`` (docs/sidecar.md).
    """
    raw = parse_metrics(text)
    scrape = MetricsScrape(samples=raw.samples)
    failures: dict[str, float] = {}
    totals: dict[str, float] = {}
    for sample in raw.samples.get(_ENVOY_RQ_XX, []):
        prefix = sample.label("envoy_http_conn_manager_prefix")
        totals[prefix] = totals.get(prefix, 0.0) + sample.value
        if sample.label("envoy_response_code_class") == "5":
            failures[prefix] = failures.get(prefix, 0.0) + sample.value
    series: dict[Labels, HistogramSeries] = {}
    for labels, hist in raw.histograms.get(_ENVOY_RQ_TIME, {}).items():
        prefix = dict(labels).get("envoy_http_conn_manager_prefix", "")
        if prefix not in ENVOY_INBOUND_PREFIXES or hist.count <= 0:
            continue
        share = min(1.0, failures.get(prefix, 0.0) / totals[prefix]) if totals.get(prefix) else 0.0
        for status, part in (("200", 1.0 - share), ("500", share)):
            if part <= 0:
                continue
            key: Labels = (
                ("http_response_status_code", status),
                ("mesh_listener", prefix),
                ("mesh_source_workload", "unknown"),
            )
            series[key] = HistogramSeries(
                key,
                tuple((le / 1000.0, count * part) for le, count in hist.buckets),
                hist.sum / 1000.0 * part,
                hist.count * part,
            )
    if series:
        scrape.histograms["http_server_request_duration_seconds"] = series
    return scrape


PARSERS: dict[str, Callable[[str], MetricsScrape]] = {
    "library": parse_metrics,
    "sidecar": parse_envoy,
}


def parser_for(mode: str) -> Callable[[str], MetricsScrape]:
    """The ``/metrics`` parser for an instance of *mode*."""
    return PARSERS.get(mode, parse_metrics)
