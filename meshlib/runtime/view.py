"""The active view: everything calls need, built once per installed snapshot.

When the agent installs a snapshot, :func:`build_view` builds — off the request path —
the compiled engine's per-destination state (a :class:`Destination` per service, its
:class:`~meshlib.traffic.runtime.ServiceRuntime` carried over from the previous view when
the service's resilience policy is unchanged, its endpoints declared in place) and the
inbound admission object. :class:`meshlib.Mesh` publishes it with one reference
assignment; a request reads that one reference and does no change detection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshlib.policy.engine import CompiledService, PolicyEngine
from meshlib.traffic.balancers import StatsRegistry
from meshlib.traffic.runtime import RuntimeHooks, ServiceRuntime, carry_over

__all__ = ["ActiveView", "Destination", "InboundBuilder", "build_view"]

InboundBuilder = Callable[[PolicyEngine, Any], Any]
"""``build(engine, previous) -> admission``: the inbound side's part of the view."""


@dataclass(frozen=True, slots=True)
class Destination:
    """One service this workload calls: its compiled policy and its shared runtime.

    ``pool_key`` names the connection pool calls to it share (its identity and pool size):
    precomputed so the request path builds no key.
    """

    service: CompiledService
    runtime: ServiceRuntime
    pool_key: tuple[str, int]


@dataclass(frozen=True, slots=True)
class ActiveView:
    """One installed snapshot, ready for requests; immutable once published.

    Attributes:
        engine: the compiled policy engine.
        destinations: by service key (``name.namespace``).
        inbound: the inbound admission built for this engine (``meshlib.inbound``), or
            None when no inbound builder was given.
    """

    engine: PolicyEngine
    destinations: Mapping[str, Destination]
    inbound: Any = None

    @property
    def version(self) -> str:
        """The snapshot's opaque version."""
        return self.engine.version

    def resolve(self, host: str) -> Destination | None:
        """The destination a host name (``orders``, ``orders.ns``…) names, or None."""
        service = self.engine.resolve(host)
        return None if service is None else self.destinations.get(service.key)


def build_view(
    engine: PolicyEngine,
    previous: ActiveView | None,
    *,
    stats: StatsRegistry,
    zone: str | None = None,
    hooks: RuntimeHooks | None = None,
    clock: Callable[[], float] = time.monotonic,
    inbound: InboundBuilder | None = None,
) -> ActiveView:
    """Build the view of *engine*, keeping what *previous* can hand on.

    A runtime whose policy (balancer, budget, outlier detection, breaker, pool) is
    unchanged is kept, with the service's current endpoints declared to it; others are new.
    """
    before = previous.destinations if previous is not None else {}
    destinations: dict[str, Destination] = {}
    for service in engine.services:
        old = before.get(service.key)
        runtime = carry_over(
            old.runtime if old is not None else None,
            service,
            stats,
            zone=zone,
            clock=clock,
            hooks=hooks,
        )
        # An ExternalService has no SPIFFE ID: its pool is keyed by its name and settings.
        identity = service.spiffe_id or f"external:{service.key}:{hash(service.external)}"
        pool_key = (identity, service.connection_pool.max_connections)
        destinations[service.key] = Destination(service, runtime, pool_key)
    # The Mesh passes meshlib.inbound's Admission.build: the inbound limiter and decision
    # tables are built here too, once per snapshot, carried over when unchanged.
    admission = None
    if inbound is not None:
        admission = inbound(engine, previous.inbound if previous is not None else None)
    return ActiveView(engine, destinations, admission)


def standalone_view(
    engine: PolicyEngine, *, stats: StatsRegistry, zone: str | None = None
) -> Callable[[], ActiveView]:
    """A view source for an engine outside a Mesh (benchmarks, tools): built once."""
    view = build_view(engine, None, stats=stats, zone=zone)
    return lambda: view
