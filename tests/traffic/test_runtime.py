"""The per-destination runtime, the active view and the call driver (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.errors import CircuitOpen, DeadlineExceeded, PoolOverflow
from meshlib.policy.decode import decode_resource
from meshlib.policy.engine import PolicyEngine
from meshlib.policy.snapshot import Endpoint, InboundPolicy, ServiceEntry, Snapshot
from meshlib.resilience.fault import FaultDecision
from meshlib.resilience.retry import CONNECT_FAILURE, Outcome
from meshlib.runtime.view import build_view
from meshlib.traffic.balancers import StatsRegistry
from meshlib.traffic.driver import ABORT, ATTEMPT, DONE, SLEEP, CallDriver

TD = "mesh.local"
SID = f"spiffe://{TD}/ns/default/sa/orders"
FAIL = Outcome.from_status(503)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoint(i: int, version: str) -> Endpoint:
    return Endpoint(f"e{i}", f"10.0.0.{i}", 8443, (("version", version),), "library", SID)


def engine_of(spec_extra: dict[str, Any], endpoints: tuple[Endpoint, ...]) -> PolicyEngine:
    spec = {
        "service": "orders",
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ],
        "routes": [
            {
                "name": "split",
                "backends": [{"subset": "v1", "weight": 80}, {"subset": "v2", "weight": 20}],
            }
        ],
        **spec_extra,
    }
    policy = decode_resource(
        {
            "apiVersion": "meshlib.io/v1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "orders"},
            "spec": spec,
        }
    )
    return PolicyEngine.compile(
        Snapshot(
            version=str(len(endpoints)) + repr(sorted(spec_extra)),
            trust_domain=TD,
            service="web",
            namespace="default",
            inbound=InboundPolicy(peer_mode="STRICT"),
            services=(ServiceEntry("orders", "default", SID, endpoints, policy),),
        )
    )


V1 = (endpoint(1, "v1"), endpoint(2, "v1"))
V2 = (endpoint(3, "v2"),)
OUTLIERS = {"outlierDetection": {"consecutive5xx": 2, "baseEjectionTime": "30s"}}


def test_outlier_state_of_one_subset_survives_picks_of_the_other() -> None:
    """Under an 80/20 split, a v2 endpoint's streak and ejection survive picks from v1."""
    clock = Clock()
    view = build_view(engine_of(OUTLIERS, V1 + V2), None, stats=StatsRegistry(), clock=clock)
    runtime = view.resolve("orders").runtime  # type: ignore[union-attr]
    plan = view.resolve("orders").service.route("GET", "/", {})  # type: ignore[union-attr]
    v2 = V2[0]
    runtime.record(v2, FAIL)  # one failure of the v2 endpoint...
    for rand in (0.1, 0.5, 0.7):  # ...then calls that pick the v1 subset (80 %)
        assert runtime.choose(plan, rand).authority in {e.authority for e in V1}
    runtime.record(v2, FAIL)  # the second consecutive failure ejects it
    assert runtime.outliers.is_ejected(v2.authority)
    for rand in (0.1, 0.5, 0.7):
        runtime.choose(plan, rand)
    assert runtime.outliers.is_ejected(v2.authority)  # still ejected after v1 picks


def test_view_carries_runtime_over_when_policy_is_unchanged() -> None:
    """A new snapshot with other endpoints keeps the runtime and forgets departed hosts."""
    stats = StatsRegistry()
    clock = Clock()
    first = build_view(engine_of(OUTLIERS, V1 + V2), None, stats=stats, clock=clock)
    runtime = first.resolve("orders").runtime  # type: ignore[union-attr]
    runtime.record(V1[0], FAIL)
    runtime.record(V1[0], FAIL)
    assert runtime.outliers.is_ejected(V1[0].authority)
    second = build_view(engine_of(OUTLIERS, V1[1:] + V2), first, stats=stats, clock=clock)
    assert second.resolve("orders").runtime is runtime  # type: ignore[union-attr]
    assert not runtime.outliers.is_ejected(V1[0].authority)  # it left: forgotten
    third = build_view(engine_of({}, V1 + V2), second, stats=stats, clock=clock)
    assert third.resolve("orders").runtime is not runtime  # type: ignore[union-attr]


def driver_for(extra: dict[str, Any], *, safe: bool = True, **kw: Any) -> CallDriver:
    view = build_view(engine_of(extra, V1 + V2), None, stats=StatsRegistry())
    dest = view.resolve("orders")
    assert dest is not None
    plan = dest.service.route("GET", "/", {})
    return CallDriver(dest.runtime, plan, retry_safe=safe, deadline=None, **kw)


def test_driver_retries_a_5xx_on_another_endpoint_within_attempts() -> None:
    """A retryable 503 leads to a backoff sleep, then a try elsewhere; attempts bound it."""
    driver = driver_for({})
    assert driver.begin() == ATTEMPT
    first = driver.endpoint
    action = driver.observe(FAIL)
    if action == SLEEP:
        action = driver.resume()
    assert action == ATTEMPT and driver.endpoint != first
    for _ in range(10):  # bounded: the policy allows far fewer tries
        action = driver.observe(FAIL)
        if action == SLEEP:
            action = driver.resume()
        if action == DONE:
            break
        assert action == ATTEMPT
    assert driver.attempts == 1 + driver.plan.retries.attempts
    driver.close()
    assert driver.runtime.in_flight == 0


def test_driver_retries_connect_failures_of_unsafe_calls_only() -> None:
    """An unsafe call is retried after a connect failure (nothing sent), not after a 503."""
    driver = driver_for({}, safe=False)
    assert driver.begin() == ATTEMPT
    assert driver.observe(FAIL) == DONE
    driver.close()
    driver = driver_for({}, safe=False)
    driver.begin()
    assert driver.observe(CONNECT_FAILURE) in (ATTEMPT, SLEEP)
    driver.close()


def test_driver_fault_delay_then_abort_sends_nothing() -> None:
    """A fault decision sleeps first, then aborts without admitting the call."""
    driver = driver_for({}, fault=FaultDecision(0.25, 503, 14))
    assert driver.begin() == SLEEP and driver.delay == 0.25
    assert driver.resume() == ABORT
    assert driver.runtime.in_flight == 0 and driver.attempts == 0


def test_driver_refuses_past_the_pool_limit() -> None:
    """Admission is shared: past maxConnections + maxPending the next call fails fast."""
    pool = {"connectionPool": {"maxConnections": 1, "maxPending": 0}}
    first = driver_for(pool)
    first.begin()
    second = CallDriver(first.runtime, first.plan, retry_safe=True, deadline=None)
    with pytest.raises(PoolOverflow):
        second.begin()
    first.close()
    assert second.begin() == ATTEMPT


def test_driver_deadline_and_open_breakers_are_mesh_errors() -> None:
    """A passed deadline raises DeadlineExceeded; all breakers open raises CircuitOpen."""
    clock = Clock()
    driver = driver_for({}, clock=clock)
    driver.deadline = clock.now - 1
    with pytest.raises(DeadlineExceeded):
        driver.begin()
    breaker = {"circuitBreaker": {"consecutiveFailures": 1, "resetTimeout": "30s"}}
    driver = driver_for(breaker)
    for e in V1 + V2:
        driver.runtime.record(e, FAIL)
    with pytest.raises(CircuitOpen):
        driver.begin()
