"""MeshTelemetry: one workload's metrics, spans and access log, all best effort.

Metrics are recorded through the OpenTelemetry API shape. With ``meter_provider=`` given
(``meshlib.Mesh(meter_provider=…)``) the instruments come from that provider and the
application's pipeline exports them; with none, they come from a small in-process
:class:`~meshlib.telemetry.local.LocalMeter` that backs the admin port's ``/metrics``
(Prometheus text), so the OpenTelemetry SDK is never imported for metrics. Names and
attributes follow the OpenTelemetry semantic conventions 1.44.0
(:mod:`meshlib.telemetry.semconv`; ``http.server.request.duration`` in seconds, …) and
tracer and meter carry that schema URL; mesh-specific ones are prefixed ``mesh.``. The
recording methods live in :class:`~meshlib.telemetry.recording.Recorder`; the series a
snapshot names are created at 0 by :meth:`MeshTelemetry.declare`
(:mod:`meshlib.telemetry.series`). Edges are labelled with the
caller (``mesh.source.workload``/``namespace``, from its SPIFFE ID) on the server side and
the destination (``mesh.destination.service``/``namespace``) on the client side.

Spans use the global tracer provider unless one is passed: an app that configured
OpenTelemetry gets meshlib's spans in its own pipeline. With no provider configured and
``OTEL_TRACES_EXPORTER=otlp`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``) set, meshlib installs an
SDK provider exporting over OTLP/HTTP when that exporter package is installed.

Client calls are observed with :mod:`meshlib.telemetry.client`; every public method here
swallows its own exceptions: telemetry never fails a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from meshlib.telemetry.local import LocalMeter
from meshlib.telemetry.otlp import otlp_tracer_provider
from meshlib.telemetry.prometheus import render_local
from meshlib.telemetry.recording import Counter, Histogram, Recorder, workload_of
from meshlib.telemetry.semconv import SCHEMA_URL
from meshlib.telemetry.series import declare_services

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from meshlib.policy.routing import CompiledService

__all__ = ["DURATION_BUCKETS", "MeshTelemetry", "workload_of"]

log = logging.getLogger("meshlib.telemetry")

# Seconds; finer than the semantic-convention advice at the low end, where an in-process
# mesh lives (sub-millisecond hops are the point of it).
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip

TRACING_RECHECK = 1.0
"""Seconds between two looks for a global tracer provider while none is set."""


class MeshTelemetry(Recorder):
    """The instruments of one workload.

    Args:
        service, namespace: this workload, as resource attributes.
        tracer_provider: where spans go (default: the global provider, or OTLP per
            ``OTEL_*`` when nothing is configured).
        meter_provider: where metrics go (default: an in-process meter rendered on the
            admin port's ``/metrics``; with a provider given, that page says where they went).
        access_log: write one JSON line per request to the ``meshlib.access`` logger.
    """

    def __init__(
        self,
        *,
        service: str,
        namespace: str,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        access_log: bool = False,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.access_log = access_log
        self.meter_provider = meter_provider
        self.local: LocalMeter | None = None
        meter: Any
        if meter_provider is None:
            meter = self.local = LocalMeter()
        else:
            meter = meter_provider.get_meter("meshlib", schema_url=SCHEMA_URL)
        if tracer_provider is None and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        ):
            tracer_provider = otlp_tracer_provider(service, namespace)
        self._tracer_provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self._global_tracing = False
        self._recheck_at = 0.0

        def histogram(name: str, description: str) -> Histogram:
            instrument: Histogram = meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            return instrument

        def counter(name: str, description: str) -> Counter:
            instrument: Counter = meter.create_counter(name, unit="1", description=description)
            return instrument

        self.http_server = histogram(
            "http.server.request.duration", "Duration of HTTP requests served"
        )
        self.http_client = histogram(
            "http.client.request.duration", "Duration of HTTP requests made through the mesh"
        )
        self.rpc_server = histogram("rpc.server.call.duration", "Duration of gRPC calls served")
        self.rpc_client = histogram(
            "rpc.client.call.duration", "Duration of gRPC calls made through the mesh"
        )
        self.retries = counter("mesh.client.retries", "Retries sent (attempts after the first)")
        self.budget_exhausted = counter(
            "mesh.client.retry_budget.exhausted", "Retries the retry budget refused"
        )
        self.breaker_transitions = counter(
            "mesh.client.breaker.transitions",
            "Circuit-breaker state changes, by endpoint and new state",
        )
        self.ejections = counter("mesh.client.outlier.ejections", "Endpoints ejected")
        self.mesh_failures = counter(
            "mesh.client.failures", "Calls the mesh itself failed, by flag (CIRCUIT_OPEN, …)"
        )
        self.authz_denials = counter("mesh.server.authz.denials", "Requests refused by policy")
        self.rate_limited = counter("mesh.server.rate_limited", "Requests refused by RateLimit")
        meter.create_observable_gauge(
            "mesh.certificate.expiry",
            callbacks=[self._observe("mesh.certificate.expiry")],
            unit="s",
            description="Seconds until this workload's SVID expires",
        )
        # The version is no label of the age (a new series per policy change): it is the
        # one label of an info-style gauge whose single series is the active version.
        meter.create_observable_gauge(
            "mesh.snapshot.age",
            callbacks=[self._observe("mesh.snapshot.age", labels=False)],
            unit="s",
            description="Seconds since the active snapshot was applied",
        )
        meter.create_observable_gauge(
            "mesh.snapshot.info",
            callbacks=[self._observe("mesh.snapshot.age", info=True)],
            unit="1",
            description="1, labelled with the active snapshot's version",
        )
        self._gauges: dict[str, Callable[[], tuple[float, dict[str, str]] | None]] = {}

    # ------------------------------------------------------------------ wiring

    def _observe(
        self, name: str, *, labels: bool = True, info: bool = False
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            from opentelemetry.metrics import Observation  # only when a gauge is read

            source = self._gauges.get(name)
            if source is None:
                return []
            try:
                value = source()
            except Exception:
                return []
            if value is None:
                return []
            if info:
                return [Observation(1, value[1])]
            return [Observation(value[0], value[1] if labels else None)]

        return callback

    def gauge_source(
        self, name: str, source: Callable[[], tuple[float, dict[str, str]] | None]
    ) -> None:
        """Feed the observable gauge *name* from *source* (value, attributes)."""
        self._gauges[name] = source

    @property
    def tracer(self) -> trace.Tracer:
        """meshlib's tracer, resolved once.

        Without a provider of its own it is the global one's: before the app sets a global
        provider that is OpenTelemetry's proxy tracer, which follows the provider set later,
        so caching it still honours that provider (and spares a provider lookup, which
        reads the environment, on every call).
        """
        tracer = self._tracer
        if tracer is None:
            provider = self._tracer_provider
            tracer = self._tracer = (
                provider.get_tracer("meshlib", schema_url=SCHEMA_URL)
                if provider is not None
                else trace.get_tracer("meshlib", schema_url=SCHEMA_URL)
            )
        return tracer

    def tracing(self) -> trace.Tracer | None:
        """The tracer when spans go somewhere, else None: then calls build no span at all.

        With no provider of its own and none set globally (OpenTelemetry's proxy provider),
        every span would be a no-op; skipping them saves their attributes, context and
        propagation on every call. A global provider set later is honoured within
        :data:`TRACING_RECHECK` seconds.
        """
        if self._tracer_provider is not None or self._global_tracing:
            return self.tracer
        now = time.monotonic()
        if now < self._recheck_at:
            return None
        # OpenTelemetry sets the global provider once and for good: once it is a real one,
        # it stays; until then, look again at most once a second.
        self._recheck_at = now + TRACING_RECHECK
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return None
        self._global_tracing = True
        return self.tracer

    def declare(self, services: Iterable[CompiledService]) -> None:
        """A snapshot was installed: create its services' counters at 0 (never raises)."""
        try:
            declare_services(self, services)
        except Exception:
            log.debug("telemetry failed", exc_info=True)

    def prometheus(self) -> str:
        """All metrics as Prometheus text (a comment when they go to a given provider)."""
        if self.local is None:
            return "# meshlib records its metrics through the application's MeterProvider\n"
        return render_local(self.local)

    def shutdown(self) -> None:
        """Flush and stop the private tracer provider (a given provider is the app's)."""
        try:
            shutdown = getattr(self._tracer_provider, "shutdown", None)
            if shutdown is not None:
                shutdown()
        except Exception:
            log.debug("telemetry shutdown failed", exc_info=True)
