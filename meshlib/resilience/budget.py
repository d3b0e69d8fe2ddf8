"""The retry budget: retries may add at most a fixed share of load (Finagle, Linkerd).

Every original request deposits ``percent / 100`` of a token; every retry withdraws one
whole token. Deposits and withdrawals expire after ``ttl``. On top of what the window
holds there is a constant reserve of ``min_retries_per_second * ttl`` tokens, so a service
with little traffic can still retry a little. With the defaults (20 %, 10/s, 10 s) retries
add at most 20 % to a busy service's load and at most 100 retries per 10 s to a quiet one.

The window is ten buckets of ``ttl / 10`` each, as Finagle's ``WindowedAdder``: a token
expires between ``0.9 * ttl`` and ``ttl`` after it was recorded.

There are no locks. Tokens are counted in integer micro-tokens (no float drift), and each
operation is a few plain attribute updates; two threads interleaving may lose one deposit
or let one extra retry through. A budget is a coarse guard against retry storms, so that
costs nothing that matters, and a lock on every request would.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshlib.policy.model import (
    DEFAULT_BUDGET_MIN_RETRIES_PER_SECOND,
    DEFAULT_BUDGET_PERCENT,
    DEFAULT_BUDGET_TTL,
)
from meshlib.policy.model import RetryBudget as RetryBudgetPolicy

__all__ = ["BUDGET_BUCKETS", "RetryBudget"]

BUDGET_BUCKETS = 10
"""Number of time buckets the ``ttl`` window is divided into."""

_SCALE = 1_000_000  # micro-tokens per token


class RetryBudget:
    """A sliding-window token budget shared by every call to one destination service."""

    __slots__ = ("_buckets", "_clock", "_deposit", "_reserve", "_slot", "_width")

    def __init__(
        self,
        *,
        percent: float = DEFAULT_BUDGET_PERCENT,
        min_retries_per_second: float = DEFAULT_BUDGET_MIN_RETRIES_PER_SECOND,
        ttl: float = DEFAULT_BUDGET_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty budget (only the reserve is available).

        Args:
            percent: share of original requests that may be retried, ``0..100``.
            min_retries_per_second: retries allowed regardless of traffic, ``>= 0``.
            ttl: how long, in seconds, a deposit or a withdrawal counts, ``> 0``.
            clock: monotonic seconds; injectable for tests.

        Raises:
            ValueError: a value is out of range.
        """
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"percent must be within 0..100, not {percent!r}")
        if min_retries_per_second < 0.0:
            raise ValueError(f"min_retries_per_second must be >= 0, not {min_retries_per_second!r}")
        if not ttl > 0.0:
            raise ValueError(f"ttl must be > 0, not {ttl!r}")
        self._clock = clock
        self._deposit = round(percent / 100.0 * _SCALE)
        self._reserve = round(min_retries_per_second * ttl * _SCALE)
        self._width = ttl / BUDGET_BUCKETS
        self._buckets = [0] * BUDGET_BUCKETS
        self._slot = int(clock() // self._width)

    @classmethod
    def from_policy(
        cls, policy: RetryBudgetPolicy, *, clock: Callable[[], float] = time.monotonic
    ) -> RetryBudget:
        """A budget configured by a service's ``retryBudget`` policy."""
        return cls(
            percent=policy.percent,
            min_retries_per_second=policy.min_retries_per_second,
            ttl=policy.ttl,
            clock=clock,
        )

    def _current(self) -> int:
        """Index of the bucket for now, after clearing the buckets that expired."""
        slot = int(self._clock() // self._width)
        last = self._slot
        if slot != last:
            buckets = self._buckets
            if slot - last >= BUDGET_BUCKETS or slot < last:  # long idle, or the clock jumped
                buckets[:] = [0] * BUDGET_BUCKETS
            else:
                for s in range(last + 1, slot + 1):
                    buckets[s % BUDGET_BUCKETS] = 0
            self._slot = slot
        return slot % BUDGET_BUCKETS

    def record_request(self) -> None:
        """Deposit ``percent / 100`` of a token for one original request (not for retries)."""
        index = self._current()
        self._buckets[index] += self._deposit

    def try_spend(self) -> bool:
        """Withdraw one token for a retry; False (and nothing withdrawn) when short of one."""
        index = self._current()
        if self._reserve + sum(self._buckets) < _SCALE:
            return False
        self._buckets[index] -= _SCALE
        return True

    def available(self) -> float:
        """Tokens (retries) available now; for metrics and tests."""
        self._current()
        # Negative while recent retries outweigh deposits that have since expired.
        return max(self._reserve + sum(self._buckets), 0) / _SCALE

    def __repr__(self) -> str:
        return f"<RetryBudget available={self.available():.2f}>"
