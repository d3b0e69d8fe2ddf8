"""Local rate limiting at the server: token buckets, per service or per caller.

A bucket holds up to ``burst`` tokens and refills at ``requestsPerSecond``; a request takes
one token or is refused with 429 and a ``Retry-After`` saying when the next token comes.
The limit is local to each instance of the service (as Envoy's local rate limit filter),
not global across instances.

No locks: a bucket is two floats updated in a few statements, so two threads interleaving
may admit one request too many. The limit is a protection against overload, not an
accounting device, so that is acceptable and a lock per request is not.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from meshlib.policy.model import MAX_BURST, RateLimitSpec

__all__ = ["DEFAULT_MAX_CALLERS", "RateLimiter", "TokenBucket", "retry_after_header"]

DEFAULT_MAX_CALLERS = 10_000
"""Caller buckets kept by a per-caller limiter; the least recently seen is dropped first."""


class TokenBucket:
    """A token bucket that starts full."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create a full bucket.

        Args:
            rate: tokens added per second, ``> 0``.
            burst: capacity, ``>= 1``.
            clock: monotonic seconds; injectable for tests.

        Raises:
            ValueError: a value is out of range: ``rate`` not finite or ``<= 0``, ``burst``
                not an integer in ``1..MAX_BURST`` (a larger one would overflow the float
                the bucket counts in). The policy decoder refuses the same values.
        """
        if not 0.0 < rate < math.inf:  # also NaN
            raise ValueError(f"rate must be finite and > 0, not {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
            shown = burst if not isinstance(burst, int) or burst < 10**18 else "a huge integer"
            raise ValueError(f"burst must be an integer in 1..{MAX_BURST}, not {shown!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def try_acquire(self) -> float:
        """Take a token: 0.0 when one was taken, else the seconds until the next one."""
        now = self._clock()
        tokens = self._tokens + max(now - self._stamp, 0.0) * self.rate
        if tokens > self.burst:
            tokens = float(self.burst)
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate


class RateLimiter:
    """The local rate limit of one service: one bucket, or one per caller identity."""

    __slots__ = ("_buckets", "_clock", "_shared", "max_callers", "spec")

    def __init__(
        self,
        spec: RateLimitSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = DEFAULT_MAX_CALLERS,
    ) -> None:
        """Create the limiter for *spec*.

        Args:
            spec: the service's ``RateLimit``.
            clock: monotonic seconds; injectable for tests.
            max_callers: with ``perCaller``, buckets kept before the least recently seen
                caller's is dropped (it starts full again if that caller returns).
        """
        if max_callers < 1:
            raise ValueError(f"max_callers must be >= 1, not {max_callers!r}")
        self.spec = spec
        self.max_callers = max_callers
        self._clock = clock
        self._shared = self._new_bucket()
        self._buckets: OrderedDict[str | None, TokenBucket] = OrderedDict()

    def _new_bucket(self) -> TokenBucket:
        return TokenBucket(self.spec.requests_per_second, self.spec.burst, clock=self._clock)

    def check(self, peer: str | None) -> float:
        """Admit one request from *peer*: 0.0 when admitted, else seconds to wait.

        Args:
            peer: the caller's SPIFFE ID, or None for a plaintext caller. Only used with
                ``perCaller``; plaintext callers then share one bucket.
        """
        if not self.spec.per_caller:
            return self._shared.try_acquire()
        buckets = self._buckets
        bucket = buckets.get(peer)
        if bucket is None:
            bucket = buckets.setdefault(peer, self._new_bucket())
            while len(buckets) > self.max_callers:
                try:
                    buckets.popitem(last=False)
                except KeyError:  # another thread emptied it first
                    break
        else:
            # KeyError: evicted by another thread meanwhile; the bucket still works.
            with contextlib.suppress(KeyError):
                buckets.move_to_end(peer)
        return bucket.try_acquire()

    def __len__(self) -> int:
        return len(self._buckets) if self.spec.per_caller else 1


def retry_after_header(seconds: float) -> str:
    """The ``Retry-After`` value for a wait of *seconds*: whole seconds, rounded up, >= 1."""
    if not seconds > 1.0:  # also catches NaN
        return "1"
    if math.isinf(seconds):
        return "86400"
    return str(math.ceil(seconds))
