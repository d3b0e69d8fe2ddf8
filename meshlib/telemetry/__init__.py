"""Telemetry through the OpenTelemetry API: golden metrics, mesh metrics, spans, access log.

Everything here is best effort: telemetry never fails a request (DESIGN.md invariant 7).
"""

from meshlib.telemetry.metrics import MeshTelemetry
from meshlib.telemetry.prometheus import render_prometheus

__all__ = ["MeshTelemetry", "render_prometheus"]
