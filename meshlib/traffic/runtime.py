"""What every call to one destination shares, whatever its protocol.

A :class:`ServiceRuntime` holds the state that outlives one request — retry budget,
per-endpoint breakers, the outlier detector, the balancer, the count of requests in
flight — for one destination service. HTTP and gRPC calls to that service use the same
runtime, so they spend from one budget, trip one breaker per endpoint and see one set of
ejections.

Runtimes are built and updated when a snapshot is installed (:mod:`meshlib.runtime.view`),
never on the request path: :func:`carry_over` keeps a runtime whose resilience policy is
unchanged and declares the service's endpoints to it — *all* of them, every subset — so
state of endpoints that stay is kept and state of endpoints that left is forgotten.
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

__all__ = ["RuntimeHooks", "ServiceRuntime", "carry_over", "policy_key"]

Clock = Callable[[], float]
_NONE: frozenset[str] = frozenset()


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


def policy_key(service: CompiledService) -> object:
    """What a runtime is built from: equal keys mean the runtime can be kept."""
    return _PolicyKey(
        service.key,
        service.load_balancer,
        service.retry_budget,
        service.outlier_detection,
        service.circuit_breaker,
        service.connection_pool,
    )


class ServiceRuntime:
    """Budget, breakers, outliers, balancer and pool admission of one destination."""

    def __init__(
        self,
        service: CompiledService,
        stats: StatsRegistry,
        *,
        zone: str | None = None,
        clock: Clock = time.monotonic,
        hooks: RuntimeHooks | None = None,
    ) -> None:
        self.key = policy_key(service)
        self.name = service.key
        self.zone = zone
        self.stats = stats
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
        pool = service.connection_pool
        self.max_in_flight = pool.max_connections + pool.max_pending
        self.in_flight = 0
        self.set_endpoints(service)

    def set_endpoints(self, service: CompiledService) -> None:
        """Declare the endpoints of the whole service (every subset); called at install."""
        authorities = [e.authority for e in service.endpoints]
        self.outliers.set_endpoints(authorities)
        self.breakers.retain(authorities)

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

    def choose(self, plan: RoutePlan, rand: float, tried: frozenset[str] = _NONE) -> Endpoint:
        """Pick an endpoint: weighted backend, then healthy endpoints, same zone first.

        Endpoints already *tried* by this call are avoided while others remain.

        Raises:
            CircuitOpen: every otherwise healthy endpoint has an open breaker.
            NoHealthyEndpoint: no endpoint, or all ejected.
        """
        backends = plan.backends
        backend = backends[0] if len(backends) == 1 else plan.pick_backend(rand)
        endpoints = backend.endpoints
        outliers, breakers = self.outliers, self.breakers
        ejected = outliers.ejected() if outliers.policy is not None else _NONE
        if not ejected and breakers.policy is None and not tried and self.zone is None:
            endpoint = self.balancer.pick(endpoints)  # the common case: nothing to filter
        else:
            healthy = tuple(e for e in endpoints if e.authority not in ejected)
            if breakers.policy is not None:
                closed = tuple(e for e in healthy if breakers.allow(e.authority))
                if healthy and not closed:
                    raise CircuitOpen(
                        f"{self.name}{_subset(backend.subset)}: every endpoint's circuit "
                        f"breaker is open (route {plan.name})",
                        service=self.name,
                    )
                healthy = closed
            # Avoid endpoints this call already tried first, then prefer the zone: a retry
            # must be able to leave a zone whose only endpoint just failed.
            untried = tuple(e for e in healthy if e.authority not in tried) if tried else ()
            candidates = untried or healthy
            if self.zone is not None:
                candidates = prefer_zone(candidates, self.zone)
            endpoint = self.balancer.pick(candidates)
        if endpoint is not None:
            return endpoint
        reason = "has no endpoints" if not endpoints else "has every endpoint ejected"
        raise NoHealthyEndpoint(
            f"{self.name}{_subset(backend.subset)} {reason} (route {plan.name})",
            service=self.name,
        )

    def record(self, endpoint: Endpoint, outcome: Outcome) -> None:
        """Feed one attempt's outcome to the breaker and the outlier detector."""
        authority = endpoint.authority
        if self.breakers.policy is not None:
            self.breakers.record(authority, not is_failure(outcome))
        if self.outliers.policy is not None:
            self.outliers.record(authority, outcome)


def _subset(subset: str | None) -> str:
    return f" subset {subset!r}" if subset else ""


def carry_over(
    previous: ServiceRuntime | None,
    service: CompiledService,
    stats: StatsRegistry,
    *,
    zone: str | None,
    clock: Clock = time.monotonic,
    hooks: RuntimeHooks | None = None,
) -> ServiceRuntime:
    """*previous* with *service*'s endpoints when its policy is unchanged, else a new one."""
    if previous is not None and previous.key == policy_key(service):
        previous.set_endpoints(service)
        return previous
    return ServiceRuntime(service, stats, zone=zone, clock=clock, hooks=hooks)
