from __future__ import annotations

import pybreaker

from meshlib.policy.model import CircuitBreakerPolicy
from meshlib.resilience.breaker import BreakerRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry(clock: Clock, failures: int = 3, reset: float = 30.0, **kw: object) -> BreakerRegistry:
    policy = CircuitBreakerPolicy(consecutive_failures=failures, reset_timeout=reset)
    return BreakerRegistry(policy, clock=clock, **kw)  # type: ignore[arg-type]


def trip(reg: BreakerRegistry, authority: str = "a:1", times: int = 3) -> None:
    for _ in range(times):
        reg.record(authority, False)


def test_no_policy_always_allows() -> None:
    """Without a breaker policy every endpoint is allowed and records change nothing."""
    reg = BreakerRegistry(None, clock=Clock())
    for _ in range(100):
        reg.record("a:1", False)
    assert reg.allow("a:1")
    assert reg.state("a:1") == "closed"
    assert not reg.enabled


def test_unknown_endpoint_is_closed() -> None:
    """An endpoint that never failed is closed and allowed."""
    reg = registry(Clock())
    assert reg.enabled
    assert reg.allow("a:1")
    assert reg.state("a:1") == "closed"


def test_opens_after_consecutive_failures() -> None:
    """consecutiveFailures failures in a row open the breaker; calls are then refused."""
    reg = registry(Clock())
    trip(reg, times=2)
    assert reg.allow("a:1")
    trip(reg, times=1)
    assert reg.state("a:1") == "open"
    assert not reg.allow("a:1")


def test_a_success_resets_the_failure_count() -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    reg = registry(Clock())
    trip(reg, times=2)
    reg.record("a:1", True)
    trip(reg, times=2)
    assert reg.state("a:1") == "closed"


def test_breakers_are_per_endpoint() -> None:
    """One endpoint's failures do not open another endpoint's breaker."""
    reg = registry(Clock())
    trip(reg, "a:1")
    assert not reg.allow("a:1")
    assert reg.allow("b:1")


def test_exactly_one_probe_after_the_reset_timeout() -> None:
    """After resetTimeout one caller gets the half-open probe, the others are refused."""
    clock = Clock()
    reg = registry(clock)
    trip(reg)
    clock.now += 29.9
    assert not reg.allow("a:1")
    clock.now += 0.1
    assert [reg.allow("a:1") for _ in range(5)] == [True, False, False, False, False]
    assert reg.state("a:1") == "half-open"


def test_probe_success_closes() -> None:
    """A successful probe closes the breaker and every caller is allowed again."""
    clock = Clock()
    reg = registry(clock)
    trip(reg)
    clock.now += 30
    assert reg.allow("a:1")
    reg.record("a:1", True)
    assert reg.state("a:1") == "closed"
    assert all(reg.allow("a:1") for _ in range(3))


def test_probe_failure_reopens_for_another_timeout() -> None:
    """A failed probe opens the breaker again for a full resetTimeout."""
    clock = Clock()
    reg = registry(clock)
    trip(reg)
    clock.now += 30
    assert reg.allow("a:1")
    reg.record("a:1", False)
    assert reg.state("a:1") == "open"
    clock.now += 29
    assert not reg.allow("a:1")
    clock.now += 1
    assert reg.allow("a:1")


def test_closed_again_needs_consecutive_failures_to_reopen() -> None:
    """After closing, the failure count starts from zero."""
    clock = Clock()
    reg = registry(clock)
    trip(reg)
    clock.now += 30
    reg.allow("a:1")
    reg.record("a:1", True)
    trip(reg, times=2)
    assert reg.state("a:1") == "closed"


def test_a_lost_probe_is_replaced_after_another_timeout() -> None:
    """A probe that never reports does not keep the endpoint half-open forever."""
    clock = Clock()
    reg = registry(clock)
    trip(reg)
    clock.now += 30
    assert reg.allow("a:1")
    clock.now += 10
    assert not reg.allow("a:1")
    clock.now += 20
    assert reg.allow("a:1")
    assert not reg.allow("a:1")


def test_reports_while_open_are_ignored() -> None:
    """Late results of calls sent before the breaker opened change nothing."""
    clock = Clock()
    reg = registry(clock)
    trip(reg)
    reg.record("a:1", True)
    assert reg.state("a:1") == "open"
    clock.now += 30
    assert reg.allow("a:1")


def test_transitions_are_reported() -> None:
    """on_transition sees closed->open->half-open->closed with the endpoint's authority."""
    clock = Clock()
    seen: list[tuple[str, str, str]] = []
    reg = registry(clock, on_transition=lambda *a: seen.append(a))
    trip(reg)
    clock.now += 30
    reg.allow("a:1")
    reg.record("a:1", True)
    assert seen == [
        ("a:1", "closed", "open"),
        ("a:1", "open", "half-open"),
        ("a:1", "half-open", "closed"),
    ]


def test_a_failing_transition_hook_does_not_break_the_breaker() -> None:
    """Exceptions from on_transition are swallowed; the state still changes."""

    def broken(*args: object) -> None:
        raise RuntimeError("metrics down")

    reg = registry(Clock(), on_transition=broken)
    trip(reg)
    assert reg.state("a:1") == "open"


def test_pybreaker_holds_the_state() -> None:
    """The state lives in a pybreaker.CircuitBreaker configured from the policy."""
    reg = registry(Clock(), failures=4, reset=12.0)
    reg.record("a:1", False)
    breaker = reg._endpoints["a:1"].breaker
    assert isinstance(breaker, pybreaker.CircuitBreaker)
    assert (breaker.fail_max, breaker.reset_timeout, breaker.success_threshold) == (4, 12.0, 1)
    assert breaker.fail_counter == 1
    trip(reg, times=3)
    assert breaker.current_state == pybreaker.STATE_OPEN


def test_retain_forgets_endpoints_that_left() -> None:
    """retain drops the breakers of endpoints no longer in the service."""
    reg = registry(Clock())
    trip(reg, "a:1")
    trip(reg, "b:1")
    reg.retain(["b:1"])
    assert reg.state("a:1") == "closed"
    assert reg.state("b:1") == "open"
