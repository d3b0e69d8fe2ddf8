from __future__ import annotations

import pytest

from meshlib.policy.model import MAX_BURST, RateLimitSpec
from meshlib.resilience.ratelimit import RateLimiter, TokenBucket, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_allows_a_burst() -> None:
    """A new bucket admits burst requests at once, then refuses."""
    bucket = TokenBucket(1.0, 3, clock=Clock())
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(1.0)


def test_refused_acquire_says_when_the_next_token_comes() -> None:
    """The wait returned is the time until one whole token has refilled."""
    clock = Clock()
    bucket = TokenBucket(4.0, 1, clock=clock)
    assert bucket.try_acquire() == 0.0
    clock.now += 0.1
    assert bucket.try_acquire() == pytest.approx(0.15)


def test_bucket_refills_at_rate_up_to_burst() -> None:
    """Tokens refill at rate per second and never beyond burst."""
    clock = Clock()
    bucket = TokenBucket(2.0, 2, clock=clock)
    bucket.try_acquire()
    bucket.try_acquire()
    clock.now += 0.5
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() > 0.0
    clock.now += 100
    assert [bucket.try_acquire() for _ in range(3)][2] > 0.0


def test_clock_going_backwards_adds_no_tokens() -> None:
    """A clock that jumps back refills nothing."""
    clock = Clock()
    bucket = TokenBucket(1.0, 1, clock=clock)
    bucket.try_acquire()
    clock.now -= 10
    assert bucket.try_acquire() > 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_invalid_bucket_is_refused(rate: float, burst: int) -> None:
    """A non-positive rate or a burst below one raises ValueError."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_service_limiter_shares_one_bucket() -> None:
    """Without perCaller every caller draws from the same bucket."""
    limiter = RateLimiter(RateLimitSpec("orders", 1.0, 2), clock=Clock())
    assert limiter.check("spiffe://td/ns/a/sa/x") == 0.0
    assert limiter.check("spiffe://td/ns/a/sa/y") == 0.0
    assert limiter.check(None) > 0.0


def test_per_caller_limiter_keeps_a_bucket_per_identity() -> None:
    """With perCaller each identity has its own bucket; plaintext callers share one."""
    limiter = RateLimiter(RateLimitSpec("orders", 1.0, 1, per_caller=True), clock=Clock())
    assert limiter.check("spiffe://td/ns/a/sa/x") == 0.0
    assert limiter.check("spiffe://td/ns/a/sa/x") > 0.0
    assert limiter.check("spiffe://td/ns/a/sa/y") == 0.0
    assert limiter.check(None) == 0.0
    assert limiter.check(None) > 0.0


def test_caller_buckets_are_bounded_lru() -> None:
    """Past max_callers the least recently seen caller's bucket is dropped."""
    limiter = RateLimiter(
        RateLimitSpec("orders", 1.0, 1, per_caller=True), clock=Clock(), max_callers=2
    )
    limiter.check("x")
    limiter.check("y")
    limiter.check("x")  # x is now the most recent
    limiter.check("z")  # evicts y
    assert len(limiter) == 2
    assert limiter.check("x") > 0.0  # x kept its (empty) bucket
    assert limiter.check("y") == 0.0  # y starts afresh


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3"), (float("nan"), "1")],
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, header: str) -> None:
    """Retry-After is the wait rounded up to whole seconds, never below 1."""
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(float("inf"), 1), (float("nan"), 1), (1.0, 10**400), (1.0, MAX_BURST + 1), (1.0, True)],
    ids=["inf-rate", "nan-rate", "huge-burst", "burst-over-max", "bool-burst"],
)
def test_unrepresentable_bucket_is_refused_with_value_error(rate: float, burst: int) -> None:
    """Values the decoder refuses also make TokenBucket raise ValueError, not OverflowError."""
    with pytest.raises(ValueError, match=r"rate|burst"):
        TokenBucket(rate, burst)


def test_largest_accepted_bucket_works() -> None:
    """A bucket of MAX_BURST at the highest accepted rate admits and refills."""
    bucket = TokenBucket(1_000_000.0, MAX_BURST, clock=Clock())
    assert bucket.try_acquire() == 0.0
