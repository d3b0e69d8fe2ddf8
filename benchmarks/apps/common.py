"""What both benchmark apps share: the modes, span counting, plain uvicorn, exit stats.

Modes name how the frontend -> backend hop is made (docs/benchmarks.md):

=========  =====================================================================
``plain``  HTTP or h2c gRPC, no TLS, no mesh (the floor)
``tls``    hand-wired mTLS: uvicorn/httpx (or grpc) with certificates of our own
``mesh``   meshlib library mode (metrics always on, no tracer provider: no-op spans)
``traced`` library mode with an SDK TracerProvider that records and exports every span
``app``    a plain app behind an Envoy sidecar (the sidecar makes the hop)
``run``    the plain apps under ``meshctl run`` (docs/run.md): the code of ``plain``, but
           the backend is called by its mesh name; the launcher meshes the servers and
           clients (the frontend with ``--clients-only``: the load generator is outside)
=========  =====================================================================
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "MODES",
    "CountingExporter",
    "make_tracer_provider",
    "run_plain_uvicorn",
    "stats_on_exit",
    "write_stats",
]

MODES = ("plain", "tls", "mesh", "traced", "app", "run")


class CountingExporter(SpanExporter):
    """A span sink that counts what the SDK exported: spans are really built and batched."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def make_tracer_provider() -> tuple[TracerProvider, CountingExporter]:
    """An SDK provider sampling every span into a batch processor and a counting sink."""
    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def write_stats(
    stats: Callable[[], dict[str, Any]], provider: TracerProvider | None = None
) -> None:
    """Write ``stats()`` as JSON to ``$BENCH_STATS_FILE`` (after flushing *provider*'s spans)."""
    path = os.environ.get("BENCH_STATS_FILE")
    if not path:
        return
    if provider is not None:
        provider.force_flush(2000)
    with open(path, "w") as out:
        json.dump(stats(), out)


def stats_on_exit(
    stats: Callable[[], dict[str, Any]], provider: TracerProvider | None = None
) -> None:
    """:func:`write_stats` when the process exits cleanly (``meshlib.serve`` and gRPC apps)."""
    atexit.register(write_stats, stats, provider)


def run_plain_uvicorn(app: Any, port: int, **ssl: Any) -> None:
    """uvicorn with httptools and the options ``meshlib.serve`` uses (warnings only)."""
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        log_level="warning",
        timeout_graceful_shutdown=2,
        **ssl,
    )
