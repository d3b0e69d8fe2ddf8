from __future__ import annotations

from typing import Any

import pytest

from meshlib.policy.model import RetryBudget as RetryBudgetPolicy
from meshlib.resilience.budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reserve_is_min_retries_per_second_times_ttl() -> None:
    """With no traffic, min_retries_per_second * ttl retries are available, then none."""
    budget = RetryBudget(percent=20, min_retries_per_second=1, ttl=3, clock=Clock())
    assert budget.available() == pytest.approx(3.0)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    assert budget.available() == 0.0


def test_each_request_deposits_percent_of_a_token() -> None:
    """Five requests at 20 % pay for exactly one retry (integer accounting, no float drift)."""
    budget = RetryBudget(percent=20, min_retries_per_second=0, ttl=10, clock=Clock())
    assert not budget.try_spend()
    for _ in range(4):
        budget.record_request()
    assert not budget.try_spend()
    budget.record_request()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_defaults_allow_twenty_percent_plus_ten_per_second() -> None:
    """Defaults (20 %, 10/s, 10 s): 1000 requests allow 200 + 100 retries within the window."""
    budget = RetryBudget(clock=Clock())
    for _ in range(1000):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(1000))
    assert granted == 300


def test_deposits_and_withdrawals_expire_after_ttl() -> None:
    """Tokens count for ttl only: spent retries come back and unused deposits vanish."""
    clock = Clock()
    budget = RetryBudget(percent=100, min_retries_per_second=0.1, ttl=10, clock=clock)
    assert budget.try_spend()  # the reserve of 1
    assert not budget.try_spend()
    clock.now += 10.0
    assert budget.available() == pytest.approx(1.0)  # the withdrawal expired
    for _ in range(3):
        budget.record_request()
    assert budget.available() == pytest.approx(4.0)
    clock.now += 5.0
    assert budget.available() == pytest.approx(4.0)  # still inside the window
    clock.now += 5.0
    assert budget.available() == pytest.approx(1.0)  # deposits gone, reserve left


def test_window_slides_bucket_by_bucket() -> None:
    """A deposit expires with its bucket (one tenth of ttl), not all at once with the others."""
    clock = Clock()
    budget = RetryBudget(percent=100, min_retries_per_second=0, ttl=10, clock=clock)
    budget.record_request()
    clock.now += 5.0
    budget.record_request()
    clock.now += 5.0
    assert budget.available() == pytest.approx(1.0)
    clock.now += 5.0
    assert budget.available() == 0.0


def test_clock_going_backwards_empties_the_window() -> None:
    """A clock that jumps back clears the window instead of corrupting it."""
    clock = Clock()
    budget = RetryBudget(percent=100, min_retries_per_second=0, ttl=10, clock=clock)
    budget.record_request()
    clock.now -= 50.0
    assert budget.available() == 0.0
    budget.record_request()
    assert budget.try_spend()


def test_zero_percent_and_zero_reserve_never_retry() -> None:
    """A budget of 0 % with no reserve refuses every retry."""
    budget = RetryBudget(percent=0, min_retries_per_second=0, clock=Clock())
    for _ in range(100):
        budget.record_request()
    assert not budget.try_spend()


def test_from_policy_uses_the_policy_values() -> None:
    """from_policy reads percent, minRetriesPerSecond and ttl from the policy."""
    policy = RetryBudgetPolicy(percent=50, min_retries_per_second=2, ttl=1.5)
    budget = RetryBudget.from_policy(policy, clock=Clock())
    assert budget.available() == pytest.approx(3.0)
    budget.record_request()
    assert budget.available() == pytest.approx(3.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"percent": -1}, {"percent": 101}, {"min_retries_per_second": -1}, {"ttl": 0}],
)
def test_out_of_range_values_are_refused(kwargs: dict[str, Any]) -> None:
    """Invalid constructor values raise ValueError naming the parameter."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryBudget(**kwargs)
