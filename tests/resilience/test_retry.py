from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import tenacity

from meshlib.errors import RetryBudgetExhausted
from meshlib.policy.model import Backoff, RetryPolicy
from meshlib.resilience.budget import RetryBudget
from meshlib.resilience.retry import (
    CONNECT_FAILURE,
    IDEMPOTENT_METHODS,
    RESET,
    TIMEOUT,
    Outcome,
    attempt_deadline,
    backoff_wait,
    build_retrying,
    is_failure,
    is_retry_safe,
    is_retryable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """Records each delay and advances the clock by it, instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += seconds


class Flaky:
    """Returns (or raises) the scripted results in order."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self) -> Any:
        item = self.script[self.calls]
        self.calls += 1
        if isinstance(item, BaseException):
            raise item
        return item


class ConnectError(Exception):
    pass


def classify(x: Any) -> Outcome | None:
    if isinstance(x, ConnectError):
        return CONNECT_FAILURE
    if isinstance(x, int):
        return Outcome.from_status(x)
    return None


def big_budget(clock: Clock) -> RetryBudget:
    return RetryBudget(percent=0, min_retries_per_second=1000, ttl=1, clock=clock)


def sync_retrying(policy: RetryPolicy, clock: Clock, sleep: FakeSleep, **kw: Any) -> Any:
    kw.setdefault("budget", big_budget(clock))
    kw.setdefault("deadline", None)
    return build_retrying(
        policy, should_retry=classify, clock=clock, sleep=sleep, async_=False, **kw
    )


# ---------------------------------------------------------------- retry safety


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_METHODS))
def test_idempotent_methods_are_retry_safe(method: str) -> None:
    """GET, HEAD, OPTIONS, PUT, DELETE and TRACE may be retried by default."""
    assert is_retry_safe(method, {}, RetryPolicy())


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", "get"])
def test_other_methods_are_not_retry_safe_by_default(method: str) -> None:
    """POST, PATCH, other methods (and a lower-case method) are not retried by default."""
    assert not is_retry_safe(method, {}, RetryPolicy())


def test_allow_non_idempotent_makes_post_retry_safe() -> None:
    """A route with allow_non_idempotent retries POST."""
    assert is_retry_safe("POST", {}, RetryPolicy(allow_non_idempotent=True))


@pytest.mark.parametrize("name", ["idempotency-key", "Idempotency-Key"])
def test_idempotency_key_makes_post_retry_safe(name: str) -> None:
    """A POST carrying an Idempotency-Key header may be retried."""
    assert is_retry_safe("POST", {name: "abc"}, RetryPolicy())


def test_empty_idempotency_key_does_not_count() -> None:
    """An empty Idempotency-Key header does not make a POST retry-safe."""
    assert not is_retry_safe("PATCH", {"idempotency-key": ""}, RetryPolicy())


# ---------------------------------------------------------------- conditions


def policy_on(*conditions: str, codes: tuple[int, ...] = ()) -> RetryPolicy:
    return RetryPolicy(retry_on=conditions, retriable_status_codes=codes)


@pytest.mark.parametrize(
    ("conditions", "status", "expected"),
    [
        (("5xx",), 500, True),
        (("5xx",), 599, True),
        (("5xx",), 499, False),
        (("gateway-error",), 502, True),
        (("gateway-error",), 503, True),
        (("gateway-error",), 504, True),
        (("gateway-error",), 500, False),
        (("connect-failure", "reset"), 503, False),
        (("retriable-status-codes",), 409, True),
        (("retriable-status-codes",), 410, False),
        (("5xx",), 200, False),
    ],
)
def test_status_outcomes_follow_their_conditions(
    conditions: tuple[str, ...], status: int, expected: bool
) -> None:
    """5xx is any 500-599, gateway-error is 502/503/504, codes come from the list."""
    policy = policy_on(*conditions, codes=(409,))
    assert is_retryable(policy, Outcome.from_status(status)) is expected


def test_listed_codes_need_the_retriable_status_codes_condition() -> None:
    """A listed status is not retried unless retriable-status-codes is in retryOn."""
    assert not is_retryable(policy_on("5xx", codes=(409,)), Outcome.from_status(409))


@pytest.mark.parametrize(
    ("conditions", "outcome", "expected"),
    [
        (("connect-failure",), CONNECT_FAILURE, True),
        (("connect-failure",), RESET, False),
        (("connect-failure",), TIMEOUT, False),
        (("reset",), RESET, True),
        (("reset",), CONNECT_FAILURE, True),
        (("reset",), TIMEOUT, True),
        (("5xx",), RESET, True),
        (("5xx",), CONNECT_FAILURE, True),
        (("5xx",), TIMEOUT, True),
        (("gateway-error",), TIMEOUT, True),
        (("gateway-error",), CONNECT_FAILURE, True),
        (("retriable-status-codes",), RESET, False),
        (("retriable-status-codes",), TIMEOUT, False),
    ],
)
def test_failures_before_a_response_follow_envoy(
    conditions: tuple[str, ...], outcome: Outcome, expected: bool
) -> None:
    """Resets and per-try timeouts retry under reset/5xx/gateway-error; connects also alone."""
    assert is_retryable(policy_on(*conditions, codes=(503,)), outcome) is expected


def test_default_policy_retries_connect_failures_and_gateway_errors_only() -> None:
    """The default retryOn retries connect failures, resets and 502-504, not 500."""
    policy = RetryPolicy()
    assert is_retryable(policy, CONNECT_FAILURE)
    assert is_retryable(policy, Outcome.from_status(503))
    assert not is_retryable(policy, Outcome.from_status(500))


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (CONNECT_FAILURE, True),
        (RESET, True),
        (TIMEOUT, True),
        (Outcome.from_status(500), True),
        (Outcome.from_status(503), True),
        (Outcome.from_status(404), False),
        (Outcome.from_status(429), False),
        (Outcome.from_status(200), False),
    ],
)
def test_is_failure_counts_local_failures_and_5xx(outcome: Outcome, expected: bool) -> None:
    """Breakers and outliers count connect failures, resets, timeouts and 5xx statuses."""
    assert is_failure(outcome) is expected


def test_attempt_deadline_is_bounded_by_the_call_deadline() -> None:
    """A try ends at now + perTryTimeout, or at the call's deadline if that is earlier."""
    policy = RetryPolicy(per_try_timeout=2.0)
    assert attempt_deadline(policy, None, 10.0) == 12.0
    assert attempt_deadline(policy, 11.0, 10.0) == 11.0
    assert attempt_deadline(policy, 20.0, 10.0) == 12.0
    assert attempt_deadline(RetryPolicy(), 20.0, 10.0) == 20.0


# ---------------------------------------------------------------- backoff


def test_backoff_is_full_jitter_capped_by_max_interval() -> None:
    """Retry n waits uniformly in [0, min(max, base * 2**n)]."""
    wait = backoff_wait(Backoff(base_interval=0.025, max_interval=0.25))
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    random.seed(7)
    for attempt, ceiling in [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (9, 0.25)]:
        state.attempt_number = attempt
        draws = [wait(state) for _ in range(300)]
        assert all(0.0 <= d <= ceiling + 1e-12 for d in draws)
        assert max(draws) > ceiling * 0.8  # the whole range is used
        assert min(draws) < ceiling * 0.2


# ---------------------------------------------------------------- build_retrying (sync)


def test_retries_until_success_and_returns_it() -> None:
    """A retryable status is retried; the first good result is returned."""
    clock = Clock()
    sleep = FakeSleep(clock)
    fn = Flaky(503, 503, 200)
    assert sync_retrying(RetryPolicy(attempts=2), clock, sleep)(fn) == 200
    assert fn.calls == 3
    assert len(sleep.delays) == 2


def test_stops_after_one_plus_attempts_and_returns_the_last_result() -> None:
    """After 1 + attempts tries the last result is returned as is, not a RetryError."""
    clock = Clock()
    sleep = FakeSleep(clock)
    fn = Flaky(502, 503, 504, 200)
    assert sync_retrying(RetryPolicy(attempts=2), clock, sleep)(fn) == 504
    assert fn.calls == 3


def test_zero_attempts_means_one_try() -> None:
    """attempts=0 makes exactly one try and spends nothing from the budget."""
    clock = Clock()
    budget = RetryBudget(percent=0, min_retries_per_second=1, ttl=1, clock=clock)
    fn = Flaky(503, 200)
    result = sync_retrying(RetryPolicy(attempts=0), clock, FakeSleep(clock), budget=budget)(fn)
    assert result == 503
    assert budget.available() == 1.0


def test_last_exception_is_reraised_unwrapped() -> None:
    """When retries run out, the last exception itself propagates."""
    clock = Clock()
    last = ConnectError("third")
    fn = Flaky(ConnectError("first"), ConnectError("second"), last)
    with pytest.raises(ConnectError) as info:
        sync_retrying(RetryPolicy(attempts=2), clock, FakeSleep(clock))(fn)
    assert info.value is last


def test_non_retryable_result_is_returned_at_once() -> None:
    """A status the policy does not retry ends the call after one try."""
    clock = Clock()
    fn = Flaky(500, 200)
    assert sync_retrying(RetryPolicy(), clock, FakeSleep(clock))(fn) == 500
    assert fn.calls == 1


def test_unclassified_exception_propagates_without_retry() -> None:
    """An exception should_retry does not classify (None) is raised after one try."""
    clock = Clock()
    fn = Flaky(KeyError("bug"), 200)
    with pytest.raises(KeyError):
        sync_retrying(RetryPolicy(), clock, FakeSleep(clock))(fn)
    assert fn.calls == 1


def test_base_exceptions_are_never_retried() -> None:
    """Cancellation-like BaseExceptions propagate even if should_retry would retry them."""
    clock = Clock()
    fn = Flaky(KeyboardInterrupt(), 200)
    retrying = build_retrying(
        RetryPolicy(),
        budget=big_budget(clock),
        should_retry=lambda x: RESET,
        deadline=None,
        clock=clock,
        sleep=FakeSleep(clock),
    )
    with pytest.raises(KeyboardInterrupt):
        retrying(fn)
    assert fn.calls == 1


def test_sleeps_follow_the_backoff_policy() -> None:
    """Recorded sleeps lie within the full-jitter bounds of each retry."""
    clock = Clock()
    sleep = FakeSleep(clock)
    policy = RetryPolicy(attempts=4, backoff=Backoff(base_interval=0.1, max_interval=0.3))
    sync_retrying(policy, clock, sleep)(Flaky(503, 503, 503, 503, 503))
    assert len(sleep.delays) == 4
    for n, delay in enumerate(sleep.delays):
        assert 0.0 <= delay <= min(0.3, 0.1 * 2**n) + 1e-12


def test_no_retry_when_the_sleep_would_pass_the_deadline() -> None:
    """A retry whose backoff would end at or after the deadline is not made."""
    clock = Clock()
    sleep = FakeSleep(clock)
    fn = Flaky(503, 503, 200)
    policy = RetryPolicy(attempts=5, backoff=Backoff(base_interval=1.0, max_interval=1.0))
    retrying = sync_retrying(policy, clock, sleep, deadline=clock.now)  # no time left
    assert retrying(fn) == 503
    assert fn.calls == 1
    assert sleep.delays == []


def test_retries_never_sleep_past_the_deadline() -> None:
    """Retries go on while time is left, and no sleep ends at or after the deadline."""
    clock = Clock()
    sleep = FakeSleep(clock)
    deadline = clock.now + 0.5
    policy = RetryPolicy(attempts=10, backoff=Backoff(base_interval=0.2, max_interval=0.2))
    fn = Flaky(*([503] * 11))
    sync_retrying(policy, clock, sleep, deadline=deadline)(fn)
    assert fn.calls >= 2  # the first sleep (<= 0.2 s) fits
    assert clock.now < deadline


def test_deadline_in_the_future_allows_retries() -> None:
    """With time left before the deadline, retries proceed."""
    clock = Clock()
    fn = Flaky(503, 200)
    retrying = sync_retrying(RetryPolicy(), clock, FakeSleep(clock), deadline=clock.now + 10)
    assert retrying(fn) == 200


def test_each_retry_spends_one_token() -> None:
    """Every retry made withdraws exactly one token from the budget."""
    clock = Clock()
    budget = RetryBudget(percent=0, min_retries_per_second=5, ttl=1, clock=clock)
    sync_retrying(RetryPolicy(attempts=3), clock, FakeSleep(clock), budget=budget)(
        Flaky(503, 503, 503, 200)
    )
    assert budget.available() == pytest.approx(2.0)


def test_exhausted_budget_stops_retrying_and_reports() -> None:
    """Without a token the call stops, returns the last result and calls the hook."""
    clock = Clock()
    budget = RetryBudget(percent=0, min_retries_per_second=1, ttl=1, clock=clock)
    exhausted: list[Outcome] = []
    fn = Flaky(503, 502, 200)
    result = sync_retrying(
        RetryPolicy(attempts=2),
        clock,
        FakeSleep(clock),
        budget=budget,
        on_budget_exhausted=exhausted.append,
    )(fn)
    assert result == 502
    assert fn.calls == 2
    assert exhausted == [Outcome.from_status(502)]


def test_budget_hook_may_fail_the_call() -> None:
    """on_budget_exhausted may raise RetryBudgetExhausted to fail the call instead."""
    clock = Clock()
    budget = RetryBudget(percent=0, min_retries_per_second=0, ttl=1, clock=clock)

    def refuse(outcome: Outcome) -> None:
        raise RetryBudgetExhausted(f"no budget after {outcome}", service="orders")

    with pytest.raises(RetryBudgetExhausted):
        sync_retrying(
            RetryPolicy(), clock, FakeSleep(clock), budget=budget, on_budget_exhausted=refuse
        )(Flaky(503, 200))


def test_no_token_is_spent_when_attempts_or_deadline_stop_first() -> None:
    """The budget is asked last, so a retry that would not happen anyway costs nothing."""
    clock = Clock()
    budget = RetryBudget(percent=0, min_retries_per_second=3, ttl=1, clock=clock)
    sync_retrying(RetryPolicy(attempts=1), clock, FakeSleep(clock), budget=budget)(Flaky(503, 503))
    assert budget.available() == pytest.approx(2.0)
    sync_retrying(RetryPolicy(), clock, FakeSleep(clock), budget=budget, deadline=clock.now)(
        Flaky(503)
    )
    assert budget.available() == pytest.approx(2.0)


def test_on_retry_reports_attempt_outcome_and_delay() -> None:
    """on_retry gets the failed try's number, its outcome and the coming delay."""
    clock = Clock()
    sleep = FakeSleep(clock)
    seen: list[tuple[int, Outcome, float]] = []
    sync_retrying(RetryPolicy(), clock, sleep, on_retry=lambda *a: seen.append(a))(
        Flaky(ConnectError(), 503, 200)
    )
    assert [(n, o) for n, o, _ in seen] == [(1, CONNECT_FAILURE), (2, Outcome.from_status(503))]
    assert [d for _, _, d in seen] == sleep.delays


def test_a_failing_on_retry_hook_does_not_fail_the_call() -> None:
    """Exceptions from the telemetry hook on_retry are swallowed."""
    clock = Clock()

    def broken(*args: object) -> None:
        raise RuntimeError("metrics backend down")

    result = sync_retrying(RetryPolicy(), clock, FakeSleep(clock), on_retry=broken)(Flaky(503, 200))
    assert result == 200


# ---------------------------------------------------------------- build_retrying (async)


def test_async_retrying_retries_with_the_fake_sleep() -> None:
    """async_=True builds an AsyncRetrying that awaits the given sleep between tries."""
    clock = Clock()
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    calls = 0

    async def send() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectError()
        return 503 if calls == 2 else 200

    retrying = build_retrying(
        RetryPolicy(),
        budget=big_budget(clock),
        should_retry=classify,
        deadline=None,
        clock=clock,
        sleep=fake_sleep,
        async_=True,
    )
    assert isinstance(retrying, tenacity.AsyncRetrying)
    assert asyncio.run(retrying(send)) == 200
    assert calls == 3
    assert len(delays) == 2


def test_async_retrying_reraises_the_last_exception() -> None:
    """The async retrier re-raises the last exception itself when retries run out."""
    clock = Clock()

    async def fake_sleep(seconds: float) -> None:
        return None

    async def send() -> int:
        raise ConnectError("down")

    retrying = build_retrying(
        RetryPolicy(attempts=1),
        budget=big_budget(clock),
        should_retry=classify,
        deadline=None,
        clock=clock,
        sleep=fake_sleep,
        async_=True,
    )
    with pytest.raises(ConnectError, match="down"):
        asyncio.run(retrying(send))
