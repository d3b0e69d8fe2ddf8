"""Per-destination runtime state and the decisions of one outbound call.

Framework-free: the httpx and gRPC integrations do the I/O and ask this module what to do.
A :class:`ServiceRuntime` holds what outlives one request — retry budget, per-endpoint
breakers, outlier detector, balancer, the pending-request count — and is rebuilt only when
the service's resilience policy changes, so a new snapshot that merely moves endpoints
keeps every counter. A call captures its :class:`RoutePlan` and runtime when it starts, so
requests in flight finish under the policy they started with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshlib.errors import CircuitOpen, NoHealthyEndpoint, PoolOverflow
from meshlib.policy.engine import CompiledService, RoutePlan
from meshlib.policy.snapshot import Endpoint
from meshlib.resilience.breaker import BreakerRegistry
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.outlier import OutlierDetector
from meshlib.resilience.retry import Outcome, is_failure
from meshlib.traffic.balancers import Balancer, StatsRegistry, make_balancer, prefer_zone

__all__ = ["RuntimeHooks", "RuntimeRegistry", "ServiceRuntime"]

Clock = Callable[[], float]


class RuntimeHooks(Protocol):
    """Where breaker transitions and ejections are reported (telemetry)."""

    def breaker_transition(self, service: str, authority: str, old: str, new: str) -> None: ...

    def ejected(self, service: str, authority: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _PolicyKey:
    service: str
    load_balancer: str
    budget: object
    outlier: object
    breaker: object
    pool: object


def _policy_key(service: CompiledService) -> _PolicyKey:
    return _PolicyKey(
        service.key,
        service.load_balancer,
        service.retry_budget,
        service.outlier_detection,
        service.circuit_breaker,
        service.connection_pool,
    )


class ServiceRuntime:
    """What calls to one destination share: budget, breakers, outliers, balancer, limits."""

    def __init__(
        self,
        service: CompiledService,
        stats: StatsRegistry,
        *,
        zone: str | None,
        clock: Clock,
        hooks: RuntimeHooks | None = None,
    ) -> None:
        self.key = _policy_key(service)
        self.name = service.key
        self.zone = zone
        self.budget = RetryBudget.from_policy(service.retry_budget, clock=clock)
        name = service.key
        on_transition = on_eject = None
        if hooks is not None:

            def on_transition(authority: str, old: str, new: str) -> None:
                hooks.breaker_transition(name, authority, old, new)

            def on_eject(authority: str, _seconds: float) -> None:
                hooks.ejected(name, authority)

        self.breakers = BreakerRegistry(
            service.circuit_breaker, clock=clock, on_transition=on_transition
        )
        self.outliers = OutlierDetector(service.outlier_detection, clock=clock, on_eject=on_eject)
        self.balancer: Balancer = make_balancer(service.load_balancer, stats)
        self.stats = stats
        pool = service.connection_pool
        self.max_in_flight = pool.max_connections + pool.max_pending
        self.in_flight = 0

    # ------------------------------------------------------------------ admission

    def admit(self) -> None:
        """Count one more request in flight, or fail fast past the pool limits."""
        if self.in_flight >= self.max_in_flight:
            raise PoolOverflow(
                f"{self.name}: {self.in_flight} requests in flight reached the connection-pool "
                f"limit (maxConnections + maxPending = {self.max_in_flight}); failing fast",
                service=self.name,
            )
        self.in_flight += 1

    def release(self) -> None:
        """One request in flight fewer."""
        self.in_flight -= 1

    # ------------------------------------------------------------------ endpoint choice

    def choose(self, plan: RoutePlan, rand: float, tried: frozenset[str] = frozenset()) -> Endpoint:
        """Pick an endpoint: weighted backend, then healthy endpoints, same zone first.

        Endpoints already *tried* by this call are avoided while others remain.

        Raises:
            CircuitOpen: every otherwise healthy endpoint has an open breaker.
            NoHealthyEndpoint: no endpoint, or all ejected.
        """
        backend = plan.pick_backend(rand)
        endpoints = backend.endpoints
        if self.outliers.enabled:
            self.outliers.set_endpoints(e.authority for e in endpoints)
            ejected = self.outliers.ejected()
            healthy = tuple(e for e in endpoints if e.authority not in ejected)
        else:
            healthy = endpoints
        open_circuit = False
        if self.breakers.enabled:
            closed = tuple(e for e in healthy if self.breakers.allow(e.authority))
            open_circuit = bool(healthy) and not closed
            healthy = closed
        # Avoid endpoints this call already tried first, then prefer the zone: a retry must
        # be able to leave a zone whose only endpoint just failed.
        untried = tuple(e for e in healthy if e.authority not in tried) or healthy
        candidates = prefer_zone(untried, self.zone) if self.zone else untried
        endpoint = self.balancer.pick(candidates)
        if endpoint is not None:
            return endpoint
        subset = f" subset {backend.subset!r}" if backend.subset else ""
        if open_circuit:
            raise CircuitOpen(
                f"{self.name}{subset}: every endpoint's circuit breaker is open "
                f"(route {plan.name})",
                service=self.name,
            )
        reason = "has no endpoints" if not endpoints else "has every endpoint ejected"
        raise NoHealthyEndpoint(
            f"{self.name}{subset} {reason} (route {plan.name})", service=self.name
        )

    def record(self, endpoint: Endpoint, outcome: Outcome) -> None:
        """Feed one attempt's outcome to the breaker and the outlier detector."""
        failed = is_failure(outcome)
        self.breakers.record(endpoint.authority, not failed)
        self.outliers.record(endpoint.authority, outcome)


class RuntimeRegistry:
    """One :class:`ServiceRuntime` per destination, kept while its policy is unchanged."""

    def __init__(
        self,
        stats: StatsRegistry,
        *,
        zone: str | None = None,
        clock: Clock = time.monotonic,
        hooks: RuntimeHooks | None = None,
    ) -> None:
        self._stats = stats
        self._zone = zone
        self._clock = clock
        self._hooks = hooks
        self._by_object: dict[int, tuple[CompiledService, ServiceRuntime]] = {}
        self._by_name: dict[str, ServiceRuntime] = {}

    def get(self, service: CompiledService) -> ServiceRuntime:
        """The runtime of *service*; O(1) while the snapshot is unchanged."""
        hit = self._by_object.get(id(service))
        if hit is not None and hit[0] is service:
            return hit[1]
        runtime = self._by_name.get(service.key)
        if runtime is None or runtime.key != _policy_key(service):
            runtime = ServiceRuntime(
                service, self._stats, zone=self._zone, clock=self._clock, hooks=self._hooks
            )
            self._by_name[service.key] = runtime
        if len(self._by_object) > 4 * max(len(self._by_name), 16):
            self._by_object.clear()  # old snapshots' objects: drop the stale shortcuts
        self._by_object[id(service)] = (service, runtime)
        return runtime
