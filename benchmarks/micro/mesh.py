"""The mesh objects the micro-benchmark times: a compiled engine and an SDK tracer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.micro.settings import TRUST_DOMAIN

LAYER_POLICY = """\
apiVersion: meshlib.io/v1
kind: TrafficPolicy
metadata: {name: backend, namespace: default}
spec:
  service: backend
  loadBalancer: LEAST_REQUEST
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  routes:
  - name: canary
    match: {headers: [{name: x-canary, exact: "1"}]}
    backends: [{subset: v2}]
  - name: api
    match: {path: {prefix: /api/}, methods: [GET, HEAD]}
    backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
    timeout: 2s
    retries: {attempts: 2, perTryTimeout: 500ms}
  outlierDetection: {consecutive5xx: 5, interval: 10s, baseEjectionTime: 30s}
  circuitBreaker: {consecutiveFailures: 5, resetTimeout: 30s}
"""


def make_engine(
    endpoints: Sequence[tuple[str, int, str]], policy: str | None, server_id: str
) -> Any:
    """A compiled PolicyEngine for caller ``frontend`` with one destination ``backend``."""
    from meshlib.policy.decode import decode_documents
    from meshlib.policy.engine import PolicyEngine
    from meshlib.policy.snapshot import (
        Endpoint,
        InboundPolicy,
        ServiceEntry,
        Snapshot,
        compute_version,
    )

    eps = tuple(
        Endpoint(f"ep{i:014d}", host, port, (("version", version),), "library", server_id)
        for i, (host, port, version) in enumerate(endpoints)
    )
    resource = decode_documents(policy)[0] if policy else None
    entry = ServiceEntry("backend", "default", server_id, eps, resource)
    draft = Snapshot("", TRUST_DOMAIN, "frontend", "default", InboundPolicy(), (entry,))
    snap = Snapshot(
        compute_version(draft), TRUST_DOMAIN, "frontend", "default", InboundPolicy(), (entry,)
    )
    return PolicyEngine.compile(snap)


class _DiscardExporter:
    """A span exporter that drops spans (the cost of producing them, not shipping them)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def sdk_tracer_provider() -> Any:
    """An SDK TracerProvider with a batch processor over a discarding exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DiscardExporter()))  # type: ignore[arg-type]
    return provider
