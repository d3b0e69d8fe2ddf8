"""An OTLP/HTTP tracer provider when ``OTEL_*`` asks for one and nothing else is configured."""

from __future__ import annotations

import logging
import os

from opentelemetry import trace

__all__ = ["otlp_tracer_provider"]

log = logging.getLogger("meshlib.telemetry")


def otlp_tracer_provider(service: str, namespace: str) -> trace.TracerProvider | None:
    """An SDK provider exporting over OTLP/HTTP, or None when ``OTEL_*`` does not ask for it.

    None too (with a warning) when the exporter package cannot be imported.
    """
    wants = os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "otlp" or bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if not wants or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "OTEL_* asks for OTLP traces but the OTLP exporter cannot be imported (%s): "
            "pip install 'inproc-mesh[otlp]'; spans are not exported",
            exc,
        )
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": namespace})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
